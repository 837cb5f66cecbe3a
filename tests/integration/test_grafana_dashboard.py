"""deploy/grafana/turnout.json asks Prometheus only for what Turnout exports.

A real server runs with the dev overlay's traffic policy (mlp: version 2 as a canary and a shadow)
and small drift windows, takes traffic (successes, errors, canary, shadow, drift), and is scraped.
Every panel's PromQL and every template variable's query must parse (promql-parser, with Grafana's
variables filled in), and every metric name in them must be one the
scrape declares, with the suffix its type gives it (``_total`` for a counter, ``_bucket``, ``_sum``
and ``_count`` for a histogram, none for a gauge), and every ``histogram_quantile`` reads buckets;
all but the few that count rare events must also have samples by then.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.server_proc import ROOT, ServerProc, running_server

DASHBOARD = ROOT / "deploy" / "grafana" / "turnout.json"
POLICIES = ROOT / "deploy" / "kubernetes" / "overlays" / "dev" / "policies.json"
# series that only exist once something rare happened (a full queue, a failed load, an edge refusal)
RARE = {"turnout_rejected_requests_total", "turnout_model_load_failures_total", "turnout_edge_events_total"}

SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# what Grafana puts in place of its variables before Prometheus sees a query
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


def parse(expr: str) -> Any:
    """The PromQL expression's syntax tree (promql-parser), Grafana's variables filled in as
    Grafana would: intervals with durations, the dashboard's own ($model, $job) with a regex."""
    for var, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(var, value)
    expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
    return promql_parser.parse(expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (ValueError if it does not parse)."""
    names: set[str] = set()
    stack = [parse(expr)]
    while stack:
        node = stack.pop()
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr}"
            names.add(node.name)
            continue
        for attr in ("vector_selector", "expr", "param", "lhs", "rhs", "args"):
            child = getattr(node, attr, None)
            if isinstance(child, list):
                stack.extend(child)
            elif child is not None and not isinstance(child, str | int | float):
                stack.append(child)
    return names


def test_metric_names_are_read_out_of_promql() -> None:
    expr = (
        'sum by (model, le) (rate(a_bucket{model=~"$model", code!="x{y}"}[$__rate_interval])) '
        "/ ignoring(version) group_left sum without (pod) (b_total offset 5m) * 1e3 > bool c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}
    assert metric_names("histogram_quantile(0.99, sum by (le) (rate(x_bucket[5m])))") == {"x_bucket"}
    with pytest.raises(ValueError):
        metric_names("sum(rate(x[5m])")


def dashboard_queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    queries = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            queries.append((panel["title"], target["expr"]))
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert m, query
            queries.append((f"${var['name']}", m.group(1)))
    return queries


def test_the_dashboard_is_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    for panel in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"][
            "w"
        ] <= 24
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), panel["title"]
        for target in panel["targets"]:
            for var in re.findall(r"\$\{?(\w+)\}?", target["expr"]):
                assert var in variables or var.startswith("__"), (panel["title"], var)
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for subject in (
        "throughput",
        "p50",
        "p99",
        "batch",
        "queue",
        "errors",
        "in flight",
        "canary",
        "shadow",
        "drift",
    ):
        assert subject in titles, subject


def families(text: str) -> dict[str, tuple[str, set[str]]]:
    """family name -> (type, the sample names it has)."""
    return {f.name: (f.type, {s.name for s in f.samples}) for f in text_string_to_metric_families(text)}


def resolve(name: str, declared: dict[str, tuple[str, set[str]]]) -> tuple[str, str]:
    """The family a referenced name belongs to, by its type's suffixes; AssertionError if none."""
    for family, (kind, _) in declared.items():
        for suffix in SUFFIXES.get(kind, ("",)):
            if name == family + suffix:
                return family, kind
    raise AssertionError(f"{name} is not a metric Turnout exports (under its type's suffixes)")


def mlp_versions(scraped: str) -> set[str]:
    return {
        s.labels["version"]
        for f in text_string_to_metric_families(scraped)
        if f.name == "turnout_requests"
        for s in f.samples
        if s.name == "turnout_requests_total" and s.labels["model"] == "mlp"
    }


def send_traffic(server: ServerProc) -> None:
    with httpx.Client(base_url=server.base, timeout=10) as client:
        for i in range(40):
            mlp = {"name": "input", "datatype": "FP32", "shape": [2, 32], "data": [(i % 7) * 0.1] * 64}
            assert client.post("/v2/models/mlp/infer", json={"inputs": [mlp]}).status_code == 200
            iris = {
                "name": "input",
                "datatype": "FP32",
                "shape": [1, 4],
                "data": [5.1, 3.5, 1.4, 0.2 + i * 0.01],
            }
            assert client.post("/v2/models/iris/infer", json={"inputs": [iris]}).status_code == 200
        bad = {"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}
        assert client.post("/v2/models/iris/infer", json={"inputs": [bad]}).status_code == 400
        assert client.post("/v2/models/nope/infer", json={"inputs": [bad]}).status_code == 404


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    state = tmp_path_factory.mktemp("grafana-state")
    (state / "control").mkdir()
    (state / "control" / "policies.json").write_text(POLICIES.read_text())
    args = [
        *("--state-dir", str(state)),
        *("--drift-reference-rows", "100", "--drift-window-rows", "100", "--drift-window-seconds", "1"),
    ]
    with running_server(tmp_path_factory.mktemp("grafana"), args=args) as server:
        yield server


def test_every_metric_the_dashboard_reads_is_exported(policy_server: ServerProc) -> None:
    dash = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dash)
    referenced = {name for _, expr in queries for name in metric_names(expr)}
    assert len(referenced) >= 15, referenced
    policy = httpx.get(f"{policy_server.base}/admin/models/mlp/traffic", timeout=10).json()
    assert policy["canaries"] and policy["shadows"]  # the canary and shadow panels have data

    deadline = time.monotonic() + 60
    while True:
        send_traffic(policy_server)
        scraped = httpx.get(f"{policy_server.base}/metrics", timeout=10).text
        declared = families(scraped)
        sampled = {s for _, names in declared.values() for s in names}
        missing = sorted(n for n in referenced - RARE if n not in sampled)
        versions = mlp_versions(scraped)
        if (not missing and versions == {"1", "2"}) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for where, expr in queries:
        for name in metric_names(expr):
            family, kind = resolve(name, declared)
            if "histogram_quantile" in expr and family in expr:
                assert kind == "histogram" and name.endswith("_bucket"), (where, name)
    assert not missing, f"no samples yet for {missing}"
    assert versions == {"1", "2"}  # the canary answered some of mlp's requests: the split shows both
