"""The retraining hook end to end: shifted traffic to a model with a drift reference raises
the drift alarm; the receiver (stdlib http.server on an ephemeral loopback port) refuses the
first delivery, the server retries, and the event that arrives is signed with the shared
secret and names the request-log slice and the export command."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import numpy as np
import pyarrow.parquet as pq

from tests.integration.test_drift import DRIFT_ARGS, iris_like, send, wait_status
from tests.server_proc import running_server
from turnout.server.observe.webhook import verify

SECRET = "retrain-shared-secret-4f1c"


class Receiver(BaseHTTPRequestHandler):
    attempts: list[tuple[dict[str, str], bytes]] = []
    fail_first = 1

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        Receiver.attempts.append(({k.lower(): v for k, v in self.headers.items()}, body))
        failing = len(Receiver.attempts) <= Receiver.fail_first
        self.send_response(503 if failing else 204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_drift_shift_sends_a_signed_retraining_event_after_a_retry(tmp_path: Path) -> None:
    receiver = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    log_dir = tmp_path / "requests"
    args = [
        *DRIFT_ARGS,
        "--request-log-dir",
        str(log_dir),
        "--request-log-sample",
        "1",
        "--retrain-webhook-url",
        f"http://127.0.0.1:{receiver.server_port}/retrain",
        "--retrain-webhook-backoff-secs",
        "0.2",
    ]
    rng = np.random.default_rng(7)
    try:
        env = {"TURNOUT_RETRAIN_WEBHOOK_SECRET": SECRET}
        with running_server(tmp_path, args=args, env=env) as s:
            send(s, iris_like(rng, 300))  # the reference
            send(s, iris_like(rng, 400))
            wait_status(s, "ok")
            assert Receiver.attempts == []  # no alarm, no event
            started = time.time()
            send(s, iris_like(rng, 400, shift=2.5))
            wait_status(s, "drift")
            deadline = time.monotonic() + 15
            while len(Receiver.attempts) < 2:
                assert time.monotonic() < deadline, Receiver.attempts
                time.sleep(0.1)
            time.sleep(0.5)  # a late duplicate would show up now
            metrics = httpx.get(f"{s.base}/metrics").text
            log = s.log()
        assert len(Receiver.attempts) == 2, Receiver.attempts  # one refused, one delivered
        (h1, b1), (h2, b2) = Receiver.attempts
        assert b1 == b2  # the retry carries the same event
        for headers in (h1, h2):
            assert verify(
                SECRET.encode(),
                b2,
                headers["x-turnout-timestamp"],
                headers["x-turnout-signature"],
                time.time(),
            )
        assert not verify(b"wrong", b2, h2["x-turnout-timestamp"], h2["x-turnout-signature"], time.time())
        event = json.loads(b2)
        assert (event["event"], event["model"], event["version"], event["reason"]) == (
            "retrain",
            "iris",
            "1",
            "drift",
        )
        assert event["details"]["new_status"] == "drift"
        assert "input[2]" in {d["name"] for d in event["details"]["drifted"]}
        sl = event["slice"]
        assert sl["path"] == str(log_dir / "iris" / "1")
        assert started - 60 <= sl["since"] <= sl["until"] <= time.time()
        assert sl["export_command"].startswith(
            f"turnout export --log-dir {log_dir} --model iris --version 1 --since "
        )
        # the command extracts the shifted rows (the window's; earlier ones are before --since)
        argv = shlex.split(sl["export_command"])
        out = subprocess.run(
            [sys.executable, "-m", "turnout", *argv[1:]],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        table = pq.read_table(tmp_path / argv[-1])
        assert 0 < table.num_rows <= 400 + 400
        first = min(table.column("ts").to_pylist())
        assert first.timestamp() >= int(sl["since"])  # --since is the window start, to the second
        assert 'turnout_retrain_events_total{outcome="delivered",reason="drift"} 1.0' in metrics
        assert "retraining event (drift)" in log
        assert SECRET not in log
    finally:
        receiver.shutdown()


class AccuracyReceiver(BaseHTTPRequestHandler):
    events: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        AccuracyReceiver.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_accuracy_drop_sends_one_signed_event(tmp_path: Path) -> None:
    """The demo iris classifier with correct labels, then with wrong ones: the windowed
    accuracy falls below the threshold and exactly one event comes (the alarm latches)."""
    receiver = HTTPServer(("127.0.0.1", 0), AccuracyReceiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    args = [
        "--no-drift",
        "--feedback-models",
        "iris",
        "--feedback-window",
        "50",
        "--retrain-min-labelled",
        "50",
        "--retrain-accuracy-threshold",
        "0.8",
        "--retrain-webhook-url",
        f"http://127.0.0.1:{receiver.server_port}/retrain",
        "--retrain-webhook-secret-file",
        str(secret_file),
    ]
    rng = np.random.default_rng(3)
    x = iris_like(rng, 200)
    try:
        with running_server(tmp_path, args=args) as s, httpx.Client(base_url=s.base, timeout=30) as c:
            answers = []
            for row in x:
                body = {
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": row.tolist()}]
                }
                out = c.post("/v2/models/iris/infer", json=body).json()
                label = next(o for o in out["outputs"] if o["name"] == "label")["data"][0]
                answers.append((out["id"], int(label)))
            # the first 100 labelled as predicted (accuracy 1), the next 100 all wrong
            for start, wrong in ((0, 0), (100, 1)):
                for chunk in range(start, start + 100, 25):
                    items = [{"id": rid, "label": (p + wrong) % 3} for rid, p in answers[chunk : chunk + 25]]
                    assert (
                        c.post("/v2/models/iris/feedback", json={"feedback": items}).json()["accepted"] == 25
                    )
            deadline = time.monotonic() + 10
            while not AccuracyReceiver.events:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            time.sleep(0.5)
        assert len(AccuracyReceiver.events) == 1
        headers, body = AccuracyReceiver.events[0]
        assert verify(
            SECRET.encode(), body, headers["x-turnout-timestamp"], headers["x-turnout-signature"], time.time()
        )
        event = json.loads(body)
        assert (event["model"], event["version"], event["reason"]) == ("iris", "1", "accuracy")
        assert event["details"]["window_rows"] == 50 and event["details"]["window_accuracy"] < 0.8
        assert event["slice"] is None  # no request log
    finally:
        receiver.shutdown()
