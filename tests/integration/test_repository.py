"""Repository extension: index, load and unload through tritonclient (explicit mode)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.server_proc import DEMO_REPO, running_server


def _copy_demo(tmp: Path) -> Path:
    repo = tmp / "repo"
    shutil.copytree(DEMO_REPO, repo)
    return repo


def test_explicit_load_unload(tmp_path: Path) -> None:
    repo = _copy_demo(tmp_path)
    with running_server(tmp_path, repo, ["--model-control-mode", "explicit", "--load-model", "iris"]) as s:
        g = grpcclient.InferenceServerClient(s.grpc_url)
        h = httpclient.InferenceServerClient(s.http_url)
        index = {
            (m["name"], m.get("version", ""), m["state"])
            for m in g.get_model_repository_index(as_json=True)["models"]
        }
        assert ("iris", "1", "READY") in index
        assert ("mlp", "", "UNAVAILABLE") in index
        assert not g.is_model_ready("mlp")

        g.load_model("mlp")
        assert g.is_model_ready("mlp", "1") and g.is_model_ready("mlp", "2")
        x = np.zeros((1, 32), np.float32)
        i = grpcclient.InferInput("input", [1, 32], "FP32")
        i.set_data_from_numpy(x)
        assert g.infer("mlp", [i]).as_numpy("output").shape == (1, 8)

        h.unload_model("mlp")
        assert not h.is_model_ready("mlp")
        with pytest.raises(InferenceServerException) as e:
            g.infer("mlp", [i])
        assert "no version ready" in e.value.message()

        h.load_model("mlp")
        assert h.is_model_ready("mlp")
        g.unload_model("iris")
        assert not g.is_model_ready("iris")

        with pytest.raises(InferenceServerException) as e:
            g.load_model("does_not_exist")
        assert "not in the repository" in e.value.message()
        assert s.alive()


def test_load_reports_failure(tmp_path: Path) -> None:
    repo = _copy_demo(tmp_path)
    with running_server(tmp_path, repo, ["--model-control-mode", "explicit"]) as s:
        (repo / "bad" / "1").mkdir(parents=True)
        (repo / "bad" / "1" / "model.onnx").write_bytes(b"not onnx")
        h = httpclient.InferenceServerClient(s.http_url)
        with pytest.raises(InferenceServerException) as e:
            h.load_model("bad")
        assert "cannot load" in e.value.message()
        idx = {(m["name"], m.get("version", "")): m for m in h.get_model_repository_index()}
        assert idx[("bad", "1")]["state"] == "UNAVAILABLE"
        assert "cannot load" in idx[("bad", "1")]["reason"]
