"""An s3:// repository served from a real S3-compatible server (moto's server mode) on loopback."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from tests.server_proc import DEMO_REPO, running_server

CREDS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, s3fs.S3FileSystem]]:
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    # moto keeps its buckets per process, not per server: start from none, whatever ran before
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
    fs = s3fs.S3FileSystem(
        key="test", secret="test", client_kwargs={"endpoint_url": endpoint}, use_listings_cache=False
    )
    fs.mkdir("models")
    try:
        yield endpoint, fs
    finally:
        server.stop()


def test_serves_and_polls_an_s3_repository(s3: tuple[str, s3fs.S3FileSystem], tmp_path: Path) -> None:
    endpoint, fs = s3
    fs.put_file(str(DEMO_REPO / "iris" / "config.pbtxt"), "models/prod/iris/config.pbtxt")
    fs.put_file(str(DEMO_REPO / "iris" / "1" / "model.onnx"), "models/prod/iris/1/model.onnx")
    args = [
        "--model-repository",
        "s3://models/prod",
        "--s3-endpoint-url",
        endpoint,
        "--repository-cache-dir",
        str(tmp_path / "cache"),
        "--model-control-mode",
        "poll",
        "--repository-poll-secs",
        "0.3",
        "--repository-settle-secs",
        "0",
    ]
    with running_server(tmp_path, None, args, env=CREDS) as s:
        body = {
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]
        }
        r = httpx.post(f"{s.base}/v2/models/iris/infer", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == [0]

        # a new model uploaded to the bucket is picked up by polling
        fs.put_file(str(DEMO_REPO / "mlp" / "1" / "model.onnx"), "models/prod/mlp/1/model.onnx")
        deadline = time.monotonic() + 30
        while httpx.get(f"{s.base}/v2/models/mlp/ready").status_code != 200:
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.1)
        meta = httpx.get(f"{s.base}/v2/models/mlp").json()
        assert meta["inputs"][0]["shape"] == [-1, 32]

        # removed from the bucket: unloaded
        fs.rm("models/prod/mlp", recursive=True)
        deadline = time.monotonic() + 30
        while httpx.get(f"{s.base}/v2/models/mlp/ready").status_code == 200:
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.1)
        assert httpx.post(f"{s.base}/v2/models/iris/infer", json=body).status_code == 200
