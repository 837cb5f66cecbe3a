"""Build the two benchmark models into a Turnout (Triton-layout) model repository.

Uses the team harness's ``make_models.py`` when it is present, so Turnout serves byte-identical
models to the peer study; otherwise a local builder with the same spec (same dims, seed and
random-draw order) writes them.  Layout::

    <out>/onnx/mlp_small.onnx, mlp_large.onnx           (plain files, as make_models.py writes)
    <out>/repo/<model>/config.pbtxt + 1/model.onnx      (what ``turnout serve`` loads)

Usage: python -m benchmarks.models OUT [--max-batch-size 64] [--queue-delay-us 300] [--max-queue-size 256]
       [--local]

The config allows batches of up to 64 rows, waits at most 300 us for a batch to fill (Turnout
only waits while another batch is executing) and queues at most 256 requests per model; past
that Turnout answers 503 / RESOURCE_EXHAUSTED (the overload point counts those).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
from pathlib import Path

from benchmarks.common import MODELS, PEERS_DIR, PYTHON

SEED = 20240601
DIMS: dict[str, list[int]] = {"mlp_small": [32, 64, 8], "mlp_large": [256, 1024, 1024, 1024, 1024, 16]}

CONFIG = """name: "{name}"
backend: "onnxruntime"
max_batch_size: {mbs}
input [ {{ name: "input" data_type: TYPE_FP32 dims: [ {win} ] }} ]
output [ {{ name: "output" data_type: TYPE_FP32 dims: [ {wout} ] }} ]
dynamic_batching {{
  max_queue_delay_microseconds: {delay}
  default_queue_policy {{ max_queue_size: {queue} }}
}}
"""


def build_local(out: Path) -> None:
    """Same graphs as the harness's make_models.py: Gemm(+Relu) chain, He-scaled weights."""
    import numpy as np
    import onnx

    from turnout.model_store.demo.build import mlp

    rng = np.random.default_rng(SEED)  # one generator, drawn in model order: small, then large
    for name, dims in DIMS.items():
        model = mlp(list(dims), rng, name, producer="peers-bench")
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(out / f"{name}.onnx"))


def build(
    out: Path,
    max_batch_size: int = 64,
    queue_delay_us: int = 300,
    max_queue_size: int = 256,
    local: bool = False,
) -> Path:
    """Build both models under ``out``; return the Turnout repository directory."""
    onnx_dir, repo = out / "onnx", out / "repo"
    onnx_dir.mkdir(parents=True, exist_ok=True)
    shared = PEERS_DIR / "make_models.py"
    if shared.exists() and not local:
        subprocess.run([PYTHON, str(shared), str(onnx_dir)], check=True, capture_output=True)
    else:
        build_local(onnx_dir)
    for name, (win, wout) in MODELS.items():
        d = repo / name / "1"
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(onnx_dir / f"{name}.onnx", d / "model.onnx")
        (repo / name / "config.pbtxt").write_text(
            CONFIG.format(
                name=name, mbs=max_batch_size, win=win, wout=wout, delay=queue_delay_us, queue=max_queue_size
            )
        )
    return repo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--max-batch-size", type=int, default=64)
    ap.add_argument("--queue-delay-us", type=int, default=300)
    ap.add_argument("--max-queue-size", type=int, default=256, help="queued requests before 503")
    ap.add_argument("--local", action="store_true", help="use the local builder even if the harness exists")
    a = ap.parse_args()
    print(build(a.out, a.max_batch_size, a.queue_delay_us, a.max_queue_size, a.local))


if __name__ == "__main__":
    main()
