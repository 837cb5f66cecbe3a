"""A fleet with real parts: three Turnout replicas (separate processes sharing a state directory)
behind a real HAProxy for HTTP and for gRPC over h2c.

- A rolling restart, one replica at a time, under steady gRPC and HTTP load loses no request.
- A canary split set once holds on every replica (chi-square), and a routing key lands on the
  same version whichever replica answers.
- Drift counts of different replicas merge (``turnout drift merge``) into exactly the report on
  all their rows, computed offline and by one replica that served them all.
- The replicas' ``/metrics``, summed, count exactly the requests sent through the balancer.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from scipy import stats as sps

from tests.haproxy import HAPROXY, Backend, HAProxy, free_port, running_haproxy
from tests.integration.load import LoadDriver
from tests.integration.prom import nv, parse_nv
from tests.server_proc import DEMO_REPO, ROOT, ServerProc, start_server
from turnout.drift.fleet import counts_report
from turnout.drift.histogram import HistogramSet
from turnout.drift.report import histogram_list

pytestmark = pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")

T = 30.0
CANARY_WEIGHT = 0.3


def _report(line: str) -> None:
    """Figures the fleet tests measure, in the test output (pytest -s)."""
    print(f"[fleet] {line}")


@dataclass
class Fleet:
    replicas: list[ServerProc]
    backends: list[Backend]
    haproxy: HAProxy
    workdir: Path
    args: list[str]
    repo: Path

    def restart(self, i: int) -> tuple[int, bool]:
        """SIGTERM replica ``i``, wait for its exit, start it again on the same ports. Returns
        its exit status and whether HAProxy had taken it out of rotation before it exited."""
        old = self.replicas[i]
        old.proc.send_signal(signal.SIGTERM)
        name = self.backends[i].name
        deadline = time.monotonic() + T
        while not all(v.startswith("DOWN") for (_, n), v in self.haproxy.status().items() if n == name):
            if not old.alive() or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        down_first = old.alive()
        code = old.stop(timeout=T)
        self.replicas[i] = start_server(
            self.workdir / f"r{i}", self.repo, [*self.args, *_ports(self.backends[i])]
        )
        return code, down_first


def _ports(b: Backend) -> list[str]:
    return ["--http-port", str(b.http_port), "--grpc-port", str(b.grpc_port)]


def _repo(tmp: Path) -> Path:
    """The demo repository with a reference for iris shipped in its version directory, so every
    replica bins iris rows into the same bins from the start."""
    repo = tmp / "repo"
    shutil.copytree(DEMO_REPO, repo)
    rng = np.random.default_rng(7)
    x = rng.normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.7, 0.7], size=(2000, 4)).astype(np.float32)
    names = np.array([f"input[{j}]" for j in range(4)])
    np.savez(repo / "iris" / "1" / "reference.npz", X=x, feature_names=names)
    return repo


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("fleet")
    repo = _repo(work)
    args = [
        "--state-dir", str(work / "state"),
        "--drift-window-rows", "1000000",
        "--drift-window-seconds", "3600",
        "--exit-timeout-secs", "10",
    ]  # fmt: skip
    backends = [Backend(f"r{i}", free_port(), free_port()) for i in range(3)]
    replicas: list[ServerProc] = []
    try:
        for i, b in enumerate(backends):
            replicas.append(start_server(work / f"r{i}", repo, [*args, *_ports(b)], wait_ready=False))
        for s in replicas:
            _wait_ready(s)
        with running_haproxy(work, backends) as hap:
            for b in backends:
                hap.wait(b.name, "UP")
            fleet = Fleet(replicas, backends, hap, work, args, repo)
            yield fleet
            replicas = fleet.replicas
    finally:
        codes = [s.stop(timeout=T) for s in replicas]
    assert codes == [0, 0, 0], [s.log()[-3000:] for s in replicas]


def _wait_ready(s: ServerProc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{s.base}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert s.alive() and time.monotonic() < deadline, s.log()[-3000:]
        time.sleep(0.05)


def _mlp_input(i: int) -> np.ndarray:
    return np.random.default_rng(i).normal(size=(1, 32)).astype(np.float32)


def test_rolling_restart_loses_no_request(fleet: Fleet) -> None:
    hap = fleet.haproxy
    load = LoadDriver(hap.grpc_url, hap.http_url, "mlp", _mlp_input, model_version="1", max_seconds=90)
    load.start()
    codes, down_first = [], []
    try:
        _wait_count(load, 50)
        for i, b in enumerate(fleet.backends):
            code, first = fleet.restart(i)
            codes.append(code)
            down_first.append(first)
            hap.wait(b.name, "UP")
            _wait_count(load, load.count() + 60)  # every replica takes load again before the next goes
    finally:
        outcomes = load.stop()
    failures = [o for o in outcomes if o.error is not None]
    by_proto = Counter(o.protocol for o in outcomes)
    _report(
        f"rolling restart of 3 replicas: {len(outcomes)} requests "
        f"(gRPC {by_proto['grpc']}, HTTP {by_proto['http']}), {len(failures)} failed; "
        f"HAProxy retries and redispatches by backend: {hap.retries()}; "
        f"out of rotation (readiness 503) while still running: {down_first}"
    )
    assert codes == [0, 0, 0]
    assert not failures, failures[:5]
    assert by_proto["grpc"] >= 100 and by_proto["http"] >= 100
    assert {o.version for o in outcomes} == {"1"}
    assert all(o.output is not None and o.output.shape == (1, 8) for o in outcomes)
    # every restarted replica serves again
    for s in fleet.replicas:
        assert _mlp_successes(s) > 0


def _wait_count(load: LoadDriver, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while load.count() < n:
        assert load.running() and time.monotonic() < deadline, f"load stalled at {load.count()}"
        time.sleep(0.02)


def _mlp_successes(s: ServerProc) -> float:
    samples = parse_nv(httpx.get(f"{s.base}/metrics", timeout=T).text)
    return nv(samples, "nv_inference_request_success", model="mlp")


def _stats(s: ServerProc, model: str) -> dict[str, int]:
    body = httpx.get(f"{s.base}/v2/models/{model}/stats", timeout=T).json()
    return {m["version"]: m["inference_stats"]["success"]["count"] for m in body["model_stats"]}


def test_canary_split_and_sticky_keys_hold_across_replicas(fleet: Fleet) -> None:
    hap = fleet.haproxy
    policy = {"stable": "1", "canary": {"version": "2", "weight": CANARY_WEIGHT}, "reason": "fleet test"}
    # set once, through the balancer: it lands on one replica, the others follow the state directory
    r = httpx.put(f"http://{hap.http_url}/admin/models/mlp/traffic", json=policy, timeout=T)
    assert r.status_code == 200, r.text
    try:
        for s in fleet.replicas:
            _wait_policy(s)
        before = [_stats(s, "mlp") for s in fleet.replicas]
        n = 900
        load = LoadDriver(hap.grpc_url, hap.http_url, "mlp", _mlp_input, max_requests=n, max_seconds=60)
        outcomes = _run(load)
        assert not [o for o in outcomes if o.error], [o.error for o in outcomes if o.error][:5]
        seen = Counter(o.version for o in outcomes)
        total = sum(seen.values())
        chi2, p = sps.chisquare([seen["1"], seen["2"]], [total * (1 - CANARY_WEIGHT), total * CANARY_WEIGHT])
        # the same split on each replica: versions by replica from the statistics
        after = [_stats(s, "mlp") for s in fleet.replicas]
        table = [[a.get(v, 0) - b.get(v, 0) for v in ("1", "2")] for a, b in zip(after, before, strict=True)]
        chi2_h, p_h, _, _ = sps.chi2_contingency(table)
        _report(
            f"canary split {CANARY_WEIGHT}: {total} requests, v1 {seen['1']} v2 {seen['2']} "
            f"(share {seen['2'] / total:.3f}); chi-square {chi2:.3f}, p = {p:.3f}; "
            f"per replica {table}, homogeneity chi-square {chi2_h:.3f}, p = {p_h:.3f}"
        )
        assert sum(map(sum, table)) == total
        assert all(sum(row) > 0 for row in table)
        assert p > 1e-3 and p_h > 1e-3
        # sticky: a key lands on one version whichever replica answers, and through the balancer
        keys = [f"user-{k}" for k in range(30)]
        versions = {}
        for key in keys:
            answers = {_infer_http(s.http_url, key) for s in fleet.replicas}
            answers |= {_infer_grpc(hap.grpc_url, key) for _ in range(3)}
            assert len(answers) == 1, (key, answers)
            versions[key] = answers.pop()
        _report(
            f"sticky keys: {len(keys)} keys, each on one version on all 3 replicas and via HAProxy; "
            f"{sum(v == '2' for v in versions.values())} on the canary"
        )
        assert set(versions.values()) == {"1", "2"}
    finally:
        r = httpx.request(
            "DELETE", f"http://{hap.http_url}/admin/models/mlp/traffic", json={"reason": "done"}, timeout=T
        )
        assert r.status_code in (200, 204), r.text


def _run(load: LoadDriver) -> list:
    load.start()
    deadline = time.monotonic() + 60
    while load.running() and time.monotonic() < deadline:
        time.sleep(0.05)
    return load.stop()


def _wait_policy(s: ServerProc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.get(f"{s.base}/admin/models/mlp/traffic", timeout=T)
        if r.status_code == 200 and "canar" in r.text and '"2"' in r.text:
            return
        assert time.monotonic() < deadline, r.text
        time.sleep(0.1)


def _infer_http(url: str, key: str) -> str:
    x = _mlp_input(0)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32], "data": x.ravel().tolist()}]}
    r = httpx.post(f"http://{url}/v2/models/mlp/infer", json=body, headers={"x-routing-key": key}, timeout=T)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def _infer_grpc(url: str, key: str) -> str:
    client = grpcclient.InferenceServerClient(url)
    try:
        inp = grpcclient.InferInput("input", [1, 32], "FP32")
        inp.set_data_from_numpy(_mlp_input(0))
        res = client.infer("mlp", [inp], headers={"x-routing-key": key})
        return str(res.get_response().model_version)
    finally:
        client.close()


def _send_iris(s: ServerProc, x: np.ndarray, batch: int = 25) -> None:
    with httpx.Client(base_url=s.base, timeout=T) as c:
        for i in range(0, len(x), batch):
            part = x[i : i + batch]
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": list(part.shape),
                        "data": part.ravel().tolist(),
                    }
                ]
            }
            r = c.post("/v2/models/iris/infer", json=body)
            assert r.status_code == 200, r.text


def test_fleet_drift_merge_equals_the_report_on_all_rows(fleet: Fleet) -> None:
    rng = np.random.default_rng(11)
    rows = rng.normal([5.8, 3.0, 3.8, 1.2], [0.8, 0.4, 1.7, 0.7], size=(900, 4)).astype(np.float32)
    rows[:, 3] += 0.4  # a drift in one feature, so the report has something to say
    slices = [rows[:150], rows[150:500], rows[500:]]
    for s, part in zip(fleet.replicas, slices, strict=True):
        _send_iris(s, part)
    urls = [s.base for s in fleet.replicas]
    out = subprocess.run(
        [sys.executable, "-m", "turnout", "drift", "merge", *urls, "--model", "iris", "--version", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    merged = json.loads(out.stdout)
    assert [r["rows"] for r in merged["replicas"]] == [len(p) for p in slices]
    # offline: the same reference, every row binned in one place
    one = _counts(fleet.replicas[0])
    features = HistogramSet.from_dict({"columns": one["reference"]["features"]}).empty_like()
    features.update(rows)
    offline = {**one, "window": {"rows": len(rows), "features": histogram_list(features), "outputs": []}}
    expected = counts_report(offline)
    got = {k: v for k, v in merged.items() if k not in ("model_name", "model_version", "replicas")}
    assert got == expected
    statuses = {f["name"]: f["status"] for f in got["features"]}
    _report(
        f"drift merge: 3 replicas with {[len(p) for p in slices]} rows; merged report == offline report on "
        f"all {len(rows)} rows: {got == expected}; status {got['status']}, features {statuses}"
    )
    assert got["status"] == "drift" and statuses["input[3]"] == "drift"
    # and one replica that serves all the rows counts them the same (its window grows by exactly them)
    before = _counts(fleet.replicas[0])
    _send_iris(fleet.replicas[0], rows)
    after = _counts(fleet.replicas[0])
    grown = HistogramSet(features.binning, _hist(after).counts - _hist(before).counts)
    single = {**after, "window": {"rows": len(rows), "features": histogram_list(grown), "outputs": []}}
    assert after["window"]["rows"] - before["window"]["rows"] == len(rows)
    assert counts_report(single) == got
    _report("drift merge: the report on the rows one replica served, all 900 of them, is the same")


def _counts(s: ServerProc) -> dict:
    r = httpx.get(f"{s.base}/v2/models/iris/versions/1/drift/counts", timeout=T)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _hist(counts: dict) -> HistogramSet:
    return HistogramSet.from_dict({"columns": counts["window"]["features"]})


def test_metrics_summed_over_replicas_equal_requests_sent(fleet: Fleet) -> None:
    hap = fleet.haproxy
    before = [_scrape(s) for s in fleet.replicas]
    n = 150
    load = LoadDriver(hap.grpc_url, hap.http_url, "mlp", _mlp_input, model_version="2", max_requests=n)
    outcomes = _run(load)
    assert not [o for o in outcomes if o.error]
    sent = len(outcomes)
    after = [_scrape(s) for s in fleet.replicas]
    deltas = [tuple(a - b for a, b in zip(x, y, strict=True)) for x, y in zip(after, before, strict=True)]
    _report(
        f"/metrics: {sent} requests through HAProxy; per replica (turnout_requests_total, nv_inference_request_success) deltas {deltas}"
    )
    assert sum(d[0] for d in deltas) == sent
    assert sum(d[1] for d in deltas) == sent
    assert all(d[0] > 0 for d in deltas)


def _scrape(s: ServerProc) -> tuple[float, float]:
    text = httpx.get(f"{s.base}/metrics", timeout=T).text
    turnout = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("turnout_requests_total{") and 'model="mlp"' in line and 'version="2"' in line
    )
    return turnout, nv(parse_nv(text), "nv_inference_request_success", model="mlp", version="2")
