"""The real server driven by the KServe Python SDK (V2 REST, JSON and binary tensors, and gRPC).

The SDK pins its own protobuf and grpcio, so ``make test`` installs it in ``.venv-kserve`` (or
``KSERVE_PYTHON`` names another interpreter that has it); ``kserve_sdk_client.py`` runs there and
hands back every decoded output, which is checked here against the inputs (echo) and onnxruntime
(mlp)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.integration.tensors import DATATYPES, echo_arrays
from tests.server_proc import DEMO_REPO, ROOT, ServerProc

CLIENT = Path(__file__).with_name("kserve_sdk_client.py")


@pytest.fixture(scope="module")
def kserve_python() -> str:
    python = os.environ.get("KSERVE_PYTHON") or str(ROOT / ".venv-kserve" / "bin" / "python")
    assert Path(python).is_file(), (
        f"no KServe SDK interpreter at {python}: run `make kserve-sdk` (make test does)"
    )
    return python


def _mlp_reference(version: str, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(DEMO_REPO / "mlp" / version / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    out: np.ndarray = sess.run(["output"], {"input": x})[0]
    return out


def test_the_kserve_sdk_talks_to_turnout(demo_server: ServerProc, kserve_python: str, tmp_path: Path) -> None:
    echo = echo_arrays()
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    src, dst = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(src, **{f"echo/{k}": v for k, v in echo.items()}, **{"mlp/input": x})
    p = subprocess.run(
        [kserve_python, str(CLIENT), demo_server.http_url, demo_server.grpc_url, str(src), str(dst)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    got = dict(np.load(dst, allow_pickle=True))
    facts = json.loads(str(got.pop("facts")))

    # health and readiness, as the SDK reads them (the REST ones read the JSON body)
    for key in ("rest_live", "rest_ready", "rest_model_ready", "grpc_live", "grpc_ready", "grpc_model_ready"):
        assert facts[key] is True, key
    assert facts["rest_unknown_model_ready"] is False

    # every output of every transport: echo returns its inputs, mlp what onnxruntime computes
    for transport in ("rest0", "rest1", "grpc"):
        for dt in DATATYPES:
            out, want = got[f"{transport}/echo/OUT_{dt}"], echo[f"IN_{dt}"]
            assert out.shape == want.shape, (transport, dt)
            if dt == "BYTES":
                as_bytes = [v.encode() if isinstance(v, str) else bytes(v) for v in out.reshape(-1)]
                assert as_bytes == want.reshape(-1).tolist(), transport
            else:
                np.testing.assert_array_equal(out.astype(want.dtype), want, err_msg=f"{transport} {dt}")
        version = facts[f"{transport}/mlp/version"]
        np.testing.assert_allclose(
            got[f"{transport}/mlp/output"], _mlp_reference(version, x), rtol=1e-5, atol=1e-6
        )
        assert (
            facts[f"{transport}/mlp/id"]
            == {"rest0": "rest-False", "rest1": "rest-True", "grpc": "grpc"}[transport]
        )

    # bad requests: the SDK surfaces our status codes and messages
    assert facts["rest_bad/no_such_model"] == [404, "unknown model 'no_such_model'"]
    status, message = facts["rest_bad/mlp"]
    assert status == 400 and "expects [-1, 32]" in message
    assert facts["grpc_bad/no_such_model"] == ["NOT_FOUND", "unknown model 'no_such_model'"]
    code, message = facts["grpc_bad/mlp"]
    assert code == "INVALID_ARGUMENT" and "expects [-1, 32]" in message
    assert demo_server.alive()
