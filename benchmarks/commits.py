"""Two commits of Turnout side by side in one run: the four baseline points (mlp_small; gRPC
concurrency 1 p50 with perf_analyzer, HTTP concurrency 1 p50 and both protocols' throughput at
concurrency 32 with the peer harness's generators), and the server's CPU per request in a second
concurrency-32 run of each protocol (steadier than throughput on a shared machine), on servers
started from each commit's own
source tree, alternating base and head ``--pairs`` times, a fresh server each run. Prints and
writes the medians and head / base.

    python -m benchmarks.commits --base cb67d0d [--head HEAD] [--pairs 3] [--duration 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks import models
from benchmarks.baselines import LABELS, measure, peer_tool
from benchmarks.cpu import pgid_cpu
from benchmarks.server import Turnout

ROOT = Path(__file__).resolve().parent.parent


def checkout(rev: str, into: Path) -> str:
    """A detached worktree of ``rev`` at ``into``; returns the full commit hash."""
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(into), commit], cwd=ROOT, check=True)
    return commit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the commit to compare against")
    ap.add_argument("--head", default="HEAD")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/COMMITS.md"))
    ns = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="turnout-commits-"))
    repo = models.build(work / "models")
    trees: dict[str, Path] = {}
    commits: dict[str, str] = {}
    try:
        for arm, rev in (("base", ns.base), ("head", ns.head)):
            trees[arm] = work / arm
            commits[arm] = checkout(rev, trees[arm])
        runs: dict[str, list[dict[str, float]]] = {"base": [], "head": []}
        for i in range(ns.pairs):
            for arm in ("base", "head"):
                srv = Turnout(repo, work / f"srv-{arm}-{i}", source=trees[arm])
                srv.start()
                try:
                    point = measure(srv.http, srv.grpc, ns.duration)
                    for proto, script, addr in (
                        ("grpc", "loadgen_grpc.py", srv.grpc),
                        ("http", "loadgen_rest.py", srv.http),
                    ):
                        t0, cpu0 = time.monotonic(), pgid_cpu(srv.pgid)
                        rps = peer_tool(script, addr, 32, ns.duration)["infer_per_s"]
                        point[f"{proto}_c32_cpu_us"] = (
                            (pgid_cpu(srv.pgid) - cpu0) / (rps * (time.monotonic() - t0)) * 1e6
                        )
                    runs[arm].append(point)
                finally:
                    srv.stop()
                print(arm, json.dumps(runs[arm][-1]), flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    rows = [
        f"# Two commits side by side ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        "",
        f"`python -m benchmarks.commits --base {ns.base} --head {ns.head} --pairs {ns.pairs}"
        f" --duration {ns.duration:g}`: base {commits['base'][:10]}, head {commits['head'][:10]};"
        " medians of alternating runs, a fresh server each, on a shared 2-core machine.",
        "",
        "| point | base | head | head / base |",
        "|---|---|---|---|",
    ]
    labels = {
        **LABELS,
        "grpc_c32_cpu_us": ("gRPC, concurrency 32, server CPU per request (a second run)", "µs"),
        "http_c32_cpu_us": ("HTTP JSON, concurrency 32, server CPU per request (a second run)", "µs"),
    }
    for key, (label, unit) in labels.items():
        b = statistics.median(r[key] for r in runs["base"])
        h = statistics.median(r[key] for r in runs["head"])
        rows.append(f"| {label} | {b:,.3f} {unit} | {h:,.3f} {unit} | {h / b:.3f} |")
    rows += ["", "Every run:", "", "```", json.dumps(runs, indent=1), "```", ""]
    text = "\n".join(rows)
    print(text)
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text(text)


if __name__ == "__main__":
    main()
