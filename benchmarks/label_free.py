"""The label-free accuracy estimate against the true accuracy, on the demo iris model with
scikit-learn's iris data: unshifted streams and streams with Gaussian noise added (0.6 standard
deviations per feature). For each stream: the raw estimate (mean top-class probability), the
estimate calibrated on a fifth of the same stream's rows labelled, and the estimate calibrated on
a labelled reference of clean traffic (what the server does when earlier feedback came from
traffic like today's). The same functions as the server (server/observe/performance.py).

    python -m benchmarks.label_free [--rows 1000] [--seeds 5]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import onnxruntime as ort
from sklearn.datasets import load_iris

from turnout.server.observe.performance import binned_estimate, expected_accuracy, top_probability

MODEL = (
    Path(__file__).resolve().parent.parent
    / "model_store"
    / "demo"
    / "repository"
    / "iris"
    / "1"
    / "model.onnx"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--reference-rows", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    X, y = load_iris(return_X_y=True)
    X = X.astype(np.float32)
    sd = X.std(0).astype(np.float32)
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])

    def stream(seed: int, n: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        i = r.integers(0, len(X), n)
        x = X[i] + (r.normal(0, noise, (n, 4)).astype(np.float32) * sd if noise else 0)
        label, prob = session.run(None, {"input": x})
        return top_probability(prob), label == y[i]

    print(
        "| stream | true accuracy | raw estimate (error) | calibrated, 20 % of the stream labelled (error) "
        "| calibrated on a clean labelled reference (error) |"
    )
    print("|---|---|---|---|---|")
    for name, noise in (("unshifted", 0.0), ("shifted, noise 0.6 sd", 0.6)):
        errors: dict[str, list[float]] = {"raw": [], "own": [], "ref": []}
        for seed in range(1, a.seeds + 1):
            conf, correct = stream(seed, a.rows, noise)
            ref_conf, ref_ok = stream(1000 + seed, a.reference_rows, 0.0)
            labelled = np.zeros(a.rows, bool)
            labelled[np.random.default_rng(seed).choice(a.rows, a.rows // 5, replace=False)] = True
            true = float(correct.mean())
            raw = expected_accuracy(conf)
            own = binned_estimate(conf[labelled], correct[labelled], conf)
            ref = binned_estimate(ref_conf, ref_ok, conf)
            assert raw is not None and own is not None and ref is not None
            errors["raw"].append(raw - true)
            errors["own"].append(own - true)
            errors["ref"].append(ref - true)
            print(
                f"| {name}, seed {seed} | {true:.3f} | {raw:.3f} ({raw - true:+.3f}) | {own:.3f} ({own - true:+.3f}) "
                f"| {ref:.3f} ({ref - true:+.3f}) |"
            )
        med = {k: statistics.median(v) for k, v in errors.items()}
        print(f"| **{name}, median error** | | {med['raw']:+.3f} | {med['own']:+.3f} | {med['ref']:+.3f} |")


if __name__ == "__main__":
    main()
