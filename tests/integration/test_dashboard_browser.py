"""The dashboard in a real browser: headless Chromium (Debian's, driven by Playwright) opens
/dashboard on a server under bounded load with a canary rollout at 30 %, a shadow, drifted
traffic, a few bad requests and ground-truth feedback; the values the page shows are checked
against the JSON APIs, and screenshots are saved to benchmarks/results/screenshots/
(gitignored). Skipped when chromium or Playwright is missing (.ci/run installs chromium)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.integration.test_feedback import CONFIG, weak_iris
from tests.server_proc import DEMO_REPO, ROOT, running_server

CHROMIUM = next(
    (
        p
        for p in (
            os.environ.get("TURNOUT_CHROMIUM"),
            shutil.which("chromium"),
            shutil.which("chromium-browser"),
        )
        if p
    ),
    None,
)
SHOTS = Path(os.environ.get("TURNOUT_SCREENSHOTS", ROOT / "benchmarks" / "results" / "screenshots"))
INTERVAL = 0.5  # seconds between the time series' points (the server's default is 10)
JSON = {"Content-Type": "application/json"}
# the rollout must hold at its first step while the canary drifts and proves less accurate
GATES = {
    "max_p99_ratio": 1000.0,
    "max_drift_status": "drift",
    "max_accuracy_drop": 1.0,
    "max_disagreement": 1.0,
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dashboard-repo")
    iris = root / "iris"
    (iris / "1").mkdir(parents=True)
    shutil.copy(DEMO_REPO / "iris" / "1" / "model.onnx", iris / "1" / "model.onnx")
    weak_iris(iris / "2" / "model.onnx")  # the canary: a less accurate classifier
    (iris / "3").mkdir()
    shutil.copy(DEMO_REPO / "iris" / "1" / "model.onnx", iris / "3" / "model.onnx")  # the shadow
    (iris / "config.pbtxt").write_text(CONFIG)
    return root


def rows(n: int, shift: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Iris rows with their labels; ``shift`` moves the petal features by 1.5 standard
    deviations and adds noise (a covariate shift the drift monitor must see)."""
    from sklearn.datasets import load_iris

    data = load_iris()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(data.target), n)
    x = data.data[idx].astype(np.float32)
    if shift:
        sd = data.data.std(axis=0)
        x = x + rng.normal(0, 0.5 * sd, x.shape).astype(np.float32)
        x[:, 2:] += (1.5 * sd[2:]).astype(np.float32)
    return x, data.target[idx]


class Load(threading.Thread):
    """A bounded stream: ``clean`` then ``shifted`` single-row requests, unpinned (the policy
    chooses the version), at most ``rate`` a second; remembers each answer's id and label."""

    def __init__(self, base: str, clean: int, shifted: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.base, self.rate = base, rate
        xc, yc = rows(clean, False, 1)
        xs, ys = rows(shifted, True, 2)
        self.x, self.y = np.concatenate([xc, xs]), np.concatenate([yc, ys])
        self.answers: list[tuple[str, str, int]] = []  # (id, version, label)
        self.failures = 0

    def run(self) -> None:
        t0 = time.monotonic()
        with httpx.Client(base_url=self.base, timeout=30) as c:
            for i, row in enumerate(self.x):
                body = {
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]
                }
                r = c.post("/v2/models/iris/infer", json=body)
                if r.status_code != 200:
                    self.failures += 1
                    continue
                doc = r.json()
                self.answers.append((doc["id"], doc["model_version"], int(self.y[i])))
                wait = t0 + (i + 1) / self.rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)


def js_number(v: str | None) -> float | None:
    return None if v in (None, "") else float(v)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_dashboard_in_a_browser(repo: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    args = [
        "--feedback-models",
        "iris",
        "--drift-reference-rows",
        "150",
        "--drift-window-rows",
        "150",
        "--dashboard-interval-secs",
        str(INTERVAL),
    ]
    SHOTS.mkdir(parents=True, exist_ok=True)
    with (
        running_server(tmp_path, repo, args) as server,
        httpx.Client(base_url=server.base, timeout=30) as client,
        sync_api.sync_playwright() as pw,
    ):
        # stable 1 with a shadow 3 mirroring every request, then a rollout of 2 held at 30 %
        r = client.put(
            "/admin/models/iris/traffic",
            json={"stable": "1", "shadow": {"version": "3", "fraction": 1.0}, "reason": "mirror to 3"},
            headers=JSON,
        )
        assert r.status_code == 200, r.text
        plan = {
            "steps": [0.3, {"approval": {"deadline_seconds": 3600}}, 1.0],
            "hold_seconds": 600,
            "min_requests": 10,
            "gates": GATES,
        }
        r = client.post(
            "/admin/models/iris/rollout", json={"canary": "2", "plan": plan, "reason": "try 2"}, headers=JSON
        )
        assert r.status_code == 201, r.text

        load = Load(server.base, clean=500, shifted=1000, rate=250.0)
        load.start()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(server.base + "/dashboard")
        page.wait_for_selector("#models tbody tr[data-model='iris']", timeout=15_000)
        page.wait_for_selector(".version[data-model='iris'] svg[data-chart='throughput']", timeout=15_000)
        page.screenshot(path=str(SHOTS / "dashboard-under-load.png"), full_page=True)
        load.join(timeout=60)
        assert not load.is_alive() and load.failures == 0

        # a few bad requests that reach version 1 (counted as its errors), and feedback on
        # every answer
        bad = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": [1.0, 2.0, 3.0]}]}
        for _ in range(5):
            assert client.post("/v2/models/iris/versions/1/infer", json=bad).status_code == 400
        items = [{"id": rid, "label": label} for rid, _, label in load.answers]
        for i in range(0, len(items), 500):
            got = client.post("/v2/models/iris/feedback", json={"feedback": items[i : i + 500]}).json()
            assert got["accepted"] == len(items[i : i + 500])

        # wait for a page refresh whose data was sampled after everything above
        settled = time.time() + 2 * INTERVAL
        page.wait_for_function(
            f"Number(document.getElementById('updated').dataset.now) > {settled}", timeout=15_000
        )
        time.sleep(2.5)  # one more refresh: every section drawn from the same settled data
        page.screenshot(path=str(SHOTS / "dashboard.png"), full_page=True)
        for section in ("traffic", "versions", "drift"):
            page.locator(f"#{section}").screenshot(path=str(SHOTS / f"dashboard-{section}.png"))

        data = client.get("/dashboard/data").json()
        stats = {s["version"]: s for s in client.get("/v2/models/iris/stats").json()["model_stats"]}
        perf = {p["version"]: p for p in client.get("/v2/models/iris/performance").json()["versions"]}
        shown = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('#models tbody tr[data-model="iris"]')].map(tr =>
                 [tr.dataset.version, Object.fromEntries([...tr.querySelectorAll('td[data-field]')].map(td => [td.dataset.field, td.dataset.value]))]))"""
        )
        assert set(shown) == {"1", "2", "3"}
        series = {v["version"]: v["series"] for v in data["versions"] if v["model"] == "iris"}
        answered = {v: sum(1 for a in load.answers if a[1] == v) for v in ("1", "2")}
        for v in ("1", "2", "3"):
            st = stats[v]["inference_stats"]
            requests = st["success"]["count"] + st["fail"]["count"]
            assert int(shown[v]["requests"]) == requests, v
            assert int(shown[v]["errors"]) == st["fail"]["count"], v
            # every request since the server started is in the series (none fell out of it)
            assert sum(series[v]["requests"]) == requests, v
        assert int(shown["1"]["requests"]) == answered["1"] + 5 and int(shown["1"]["errors"]) == 5
        assert int(shown["2"]["requests"]) == answered["2"]
        assert int(shown["3"]["requests"]) == 0  # the shadow answers no client

        # the split: shown as the share of the last 5 minutes, about the canary's 30 %
        share2 = js_number(shown["2"]["share"])
        assert share2 == pytest.approx(answered["2"] / (answered["1"] + answered["2"] + 5))
        assert 0.24 < share2 < 0.36, answered
        weights = page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('.split:not(.observed)[data-model="iris"] .seg')]
                 .map(s => [s.dataset.version, Number(s.dataset.weight)]))"""
        )
        assert weights == pytest.approx({"1": 0.7, "2": 0.3})

        # accuracy and the estimate, as the performance API reports them
        for v in ("1", "2"):
            assert js_number(shown[v]["accuracy"]) == pytest.approx(perf[v]["accuracy"], abs=1e-12), v
            assert js_number(shown[v]["estimated_accuracy"]) == pytest.approx(
                perf[v]["estimate"]["expected_accuracy"], abs=1e-9
            ), v
        assert all(perf[v]["labelled"] == answered[v] for v in ("1", "2"))

        # drift: each version's status and every feature's histograms as the drift report has them
        for v in ("1", "2"):
            report = client.get(f"/v2/models/iris/versions/{v}/drift").json()
            card = page.locator(f".drift[data-model='iris'][data-version='{v}']")
            assert card.get_attribute("data-status") == report["status"] == shown[v]["drift"], v
            for f in report["features"]:
                feat = card.locator(f".feature[data-role='feature'][data-feature='{f['name']}']")
                assert feat.get_attribute("data-status") == f["status"]
                ref = int(feat.locator("svg[data-kind='reference']").get_attribute("data-total") or -1)
                cur = int(feat.locator("svg[data-kind='current']").get_attribute("data-total") or -1)
                assert ref == f["reference"]["total"] and cur == (f["current"] or {}).get("total", 0)
        assert shown["1"]["drift"] in ("warning", "drift"), "the shifted rows must show as drift on version 1"

        # the shadow comparison and the rollout
        pairs = client.get("/admin/models/iris/shadow").json()["pairs"]
        assert page.locator("#shadow tr[data-model='iris']").count() == len(pairs) == 2  # 1 -> 3 and 2 -> 3
        pair = next(p for p in pairs if p["primary_version"] == "1")
        row = page.locator("#shadow tr[data-primary='1'][data-shadow='3']")
        assert (
            int(row.locator("td[data-field='requests']").get_attribute("data-value") or -1)
            == pair["requests"]
        )
        agreement = js_number(row.locator("td[data-field='agreement']").get_attribute("data-value"))
        assert agreement == pytest.approx(pair["agreements"] / pair["classified_rows"]) and agreement == 1.0
        rollout = client.get("/admin/models/iris/rollout").json()["rollout"]
        timeline = page.locator("#rollout-iris")
        assert timeline.get_attribute("data-status") == rollout["status"] == "running"
        assert timeline.locator(".step").count() == 3
        assert timeline.locator(".step[data-state='current']").get_attribute("data-weight") == "0.3"
        assert timeline.locator(".step[data-approval='1']").get_attribute("data-state") == "pending"
        assert rollout["approval"] is None and timeline.locator(".approval[id]").count() == 0
        assert timeline.locator("ol.history li").count() == len(rollout["history"]) >= 1

        # the charts carry the series' points (the page's data is a refresh older than ours)
        points = len(series["1"]["t"])
        for chart in ("throughput", "latency", "batch", "errors", "split", "accuracy"):
            svg = page.locator(f".version[data-model='iris'][data-version='1'] svg[data-chart='{chart}']")
            assert points - 2 / INTERVAL - 1 <= int(svg.get_attribute("data-points") or 0) <= points, chart
        card = page.locator(".version[data-model='iris'][data-version='1']")
        assert card.locator(".legend span[data-line='invalid_argument']").count() == 1  # errors by code
        assert sum(e.get("invalid_argument", 0) for e in series["1"]["errors"]) == 5
        shadow_chart = page.locator(".version[data-model='iris'][data-version='3'] svg[data-chart='shadow']")
        assert int(shadow_chart.get_attribute("data-points") or 0) > 0
        assert page.locator("#audit tbody tr[data-action]").count() >= 2
        browser.close()
