"""Tables, goal checks and plots of :mod:`benchmarks.curves` (``CURVES.md``, ``curves-<axis>.png``)."""

from __future__ import annotations

import re
import statistics
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.common import HERE

Row = dict[str, Any]

# py-spy frames ("function (file:line)") -> where the time goes; the first match from the leaf up
PARTS = (
    ("model", re.compile(r"onnxruntime")),
    ("transport", re.compile(r"/server/(grpc|http)/|/grpc/_cython|/uvicorn/|/starlette/|/h11/")),
    ("core", re.compile(r"/(server|router|model_store)/")),
)


def split_profile(path: Path) -> dict[str, float]:
    """Shares of the sampled CPU: transport, core, model, and the event loop (frames of none)."""
    parts: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not n.isdigit():
            continue
        where = "event loop"
        for frame in reversed(stack.split(";")):
            hit = next((name for name, pat in PARTS if pat.search(frame)), None)
            if hit:
                where = hit
                break
        parts[where] += int(n)
    total = parts.total() or 1
    return {k: round(parts[k] / total, 3) for k in ("transport", "core", "model", "event loop")}


def _f(v: Any, fmt: str = ",.1f") -> str:
    return "-" if v is None else format(v, fmt)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]


def _errs(r: Row) -> str:
    if r.get("error"):
        return "failed: " + str(r["error"])[:80]
    e = r.get("errors") or {}
    return ", ".join(f"{k} {v}" for k, v in e.items()) or "0"


def _pick(rows: list[Row], **want: Any) -> list[Row]:
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def _one(rows: list[Row], **want: Any) -> Row | None:
    got = _pick(rows, **want)
    return got[0] if got else None


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def payload(rows: list[Row], goals: list[str]) -> list[str]:
    out = ["## 1. Payload size (identity model, FP32 in and out)", "",
           "MB/s counts the request's tensor bytes (the answer carries as many back). *÷ loopback*: "
           "against the same bytes echoed through a bare socket pair at the same concurrency, same run; "
           "*÷ best peer*: Turnout's MB/s over the best peer's at the same point (KServe: the only "
           "harness wrapper that can serve another model).", ""]  # fmt: skip
    body = []
    for r in _pick(rows, axis="payload"):
        if r["server"] == "loopback":
            continue
        at = {"size": r["size"], "concurrency": r["concurrency"]}
        lim = _one(rows, axis="payload", server="loopback", **at)
        ratio = r.get("mb_per_s", 0) / lim["mb_per_s"] if lim and lim.get("mb_per_s") else None
        peers = [p.get("mb_per_s") or 0.0 for p in _pick(rows, axis="payload", proto=r["proto"], **at)
                 if p["server"] not in ("turnout", "loopback")]  # fmt: skip
        vs_peer = (
            r.get("mb_per_s", 0) / max(peers) if r["server"] == "turnout" and peers and max(peers) else None
        )
        body.append([r["size"], r["proto"], str(r["concurrency"]), r["server"], _f(r.get("mb_per_s")),
                     _f(lim.get("mb_per_s") if lim else None), _f(ratio, ".2f"), _f(vs_peer, ".2f"),
                     _f(r.get("p50_ms"), ".3f"), _f(r.get("p99_ms"), ".3f"),
                     _f(lim.get("p50_ms") if lim else None, ".3f"), _f(r.get("server_us_per_req"), ",.0f"),
                     _errs(r)])  # fmt: skip
        big = r["bytes"] >= 1 << 20 and r["proto"] in ("grpc", "http-binary") and r["server"] == "turnout"
        if big and ratio is not None:
            goals.append(f"payload {r['size']} {r['proto']} c={r['concurrency']}: {ratio:.2f} of the loopback "
                         f"limit (goal ≥ 0.40): {_verdict(ratio >= 0.4)}"
                         + (f"; {vs_peer:.2f}x the best peer (goal ≥ 1.5): {_verdict(vs_peer >= 1.5)}"
                            if vs_peer is not None else ""))  # fmt: skip
    out += _table(["size", "proto", "c", "server", "MB/s", "loopback MB/s", "÷ loopback", "÷ best peer",
                   "p50 ms", "p99 ms", "loopback p50 ms", "server µs/req", "errors"], body)  # fmt: skip
    return out


def models_axis(rows: list[Row], goals: list[str]) -> list[str]:
    out = [
        "## 2. Number of models (copies of mlp_small + 2 of mlp_large, traffic spread over the mlp_small copies, c=32)",
        "",
    ]
    body = []
    base_rows = {p: _one(rows, axis="models", models=1, proto=p) for p in ("grpc", "http")}
    one = base_rows["grpc"]
    for r in _pick(rows, axis="models"):
        b = base_rows[r["proto"]]
        per_model = (
            ((r["rss_idle_mb"] - one["rss_idle_mb"]) / (r["models"] - 1)) if one and r["models"] > 1 else None
        )
        tput = r.get("req_per_s", 0) / b["req_per_s"] if b and b.get("req_per_s") else None
        p99 = r.get("p99_ms", 0) / b["p99_ms"] if b and b.get("p99_ms") else None
        body.append([str(r["models"]), str(r["loaded"]), _f(r["load_s"], ".1f"), _f(r["rss_idle_mb"], ",.0f"),
                     _f(per_model, ".2f"), r["proto"], _f(r.get("req_per_s"), ",.0f"), _f(tput, ".2f"),
                     _f(r.get("p99_ms"), ".2f"), _f(p99, ".2f"), _f(r.get("server_us_per_req"), ",.0f"), _errs(r)])  # fmt: skip
        if r["models"] == max(m["models"] for m in _pick(rows, axis="models")) and tput and p99:
            goals.append(f"models: {r['models']} copies, {r['proto']}: throughput {tput:.2f}x one model's (goal ≥ 0.80): "
                         f"{_verdict(tput >= 0.8)}; p99 {p99:.2f}x (goal ≤ 2): {_verdict(p99 <= 2)}")  # fmt: skip
    out += _table(["mlp_small copies", "models loaded", "start to ready s", "idle RSS MB", "MB per extra model",
                   "proto", "inf/s", "÷ 1 copy", "p99 ms", "÷ 1 copy", "server µs/req", "errors"], body)  # fmt: skip
    return out


GENERATORS = {
    "turnout-loadgen": "benchmarks.loadgen (Python, asyncio)",
    "perf_analyzer": "perf_analyzer (C++)",
}


def load_axis(rows: list[Row], goals: list[str]) -> list[str]:
    out = ["## 3. Offered load (open loop, Poisson arrivals)", "",
           "*max*: closed loop at c=32. Each server is offered 25/50/80/95 % of its own maximum; Turnout "
           "also 80 % of the best peer's (*peer 80 %*). Errors include requests refused at the server's "
           "queue limits (503 / RESOURCE_EXHAUSTED). Two generators: ours measures latency from the "
           "scheduled send (no coordinated omission) but costs about 100 µs of client CPU per request "
           "in open loop, so near Turnout's maximum it takes the core the server needs; perf_analyzer "
           "(C++) costs less, and serves Turnout and the Triton peers (KServe lacks the model-configuration "
           "API it needs). *client cores*: the generator's CPU over the point.", ""]  # fmt: skip
    for gen, label in GENERATORS.items():
        mine = [r for r in _pick(rows, axis="load", generator=gen) if r.get("kind") != "in-process"]
        if not mine:
            continue
        body = []
        for r in mine:
            what = {"max": "max (c=32)", "c1": "c=1"}.get(r["kind"]) or (
                f"{r['fraction']:.0%} of own max" if r.get("fraction") is not None else "peer 80 %"
            )
            body.append([r["model"], r["proto"], r["server"], what, _f(r.get("offered_rps"), ",.0f"),
                         _f(r.get("req_per_s"), ",.0f"), _f(r.get("p50_ms"), ".3f"), _f(r.get("p99_ms"), ".3f"),
                         _f(r.get("p999_ms"), ".3f"), _f(r.get("server_us_per_req"), ",.0f"),
                         _f(r.get("client_cores"), ".2f"), _errs(r)])  # fmt: skip
        out += [f"### Generator: {label}", ""]
        out += _table(["model", "proto", "server", "point", "offered req/s", "answered req/s", "p50 ms",
                       "p99 ms", "p99.9 ms", "server µs/req", "client cores", "errors"], body)  # fmt: skip
        _load_goals(rows, gen, label, goals)
    execs = [r for r in _pick(rows, axis="load", server="turnout", kind="max") if r.get("gap_us") is not None]
    if execs:
        out += ["### Executions at c=32 (Turnout, our generator)", "",
                "*gap*: time per execution that is not compute (the measured rate over the formed batch, less "
                "the compute time of a batch): waits for the GIL, for a batch to form, for the loop.", ""]  # fmt: skip
        out += _table(["model", "proto", "inf/s", "formed batch", "executions/s", "compute µs", "gap µs"],
                      [[r["model"], r["proto"], _f(r.get("req_per_s"), ",.0f"), _f(r["avg_batch"], ".2f"),
                        _f(r["exec_per_s"], ",.0f"), _f(r["compute_us"], ",.0f"), _f(r["gap_us"], ",.0f")]
                       for r in execs])  # fmt: skip
    out += ["### Concurrency 1 against in-process onnxruntime", "",
            "*server compute*: Turnout's own time per mlp_large execution (statistics extension, "
            "compute_infer) during the point, against the same graph in a hot in-process loop.", ""]  # fmt: skip
    gap = []
    ort = _one(rows, axis="load", server="onnxruntime", model="mlp_large")
    for gen, label in GENERATORS.items():
        for proto in ("grpc", "http"):
            small = _one(
                rows, axis="load", server="turnout", kind="c1", model="mlp_small", proto=proto, generator=gen
            )
            large = _one(
                rows, axis="load", server="turnout", kind="c1", model="mlp_large", proto=proto, generator=gen
            )
            if small and large and ort and small.get("p50_ms") and large.get("p50_ms"):
                goal = ort["p50_ms"] + small["p50_ms"]
                gap.append([label, proto, _f(large["p50_ms"], ".3f"), _f(ort["p50_ms"], ".3f"),
                            _f(small["p50_ms"], ".3f"), _f(goal, ".3f"), _f(large["p50_ms"] - goal, "+.3f"),
                            _f(large.get("compute_us"), ".0f")])  # fmt: skip
                goals.append(f"mlp_large c=1 {proto} ({label}): p50 {large['p50_ms']:.3f} ms against in-process "
                             f"ORT + mlp_small c=1 = {goal:.3f} ms: {_verdict(large['p50_ms'] <= goal)}")  # fmt: skip
    out += _table(["generator", "proto", "mlp_large c=1 p50 ms", "in-process ORT p50 ms", "mlp_small c=1 p50 ms",
                   "goal ms", "over the goal ms", "server compute µs"], gap)  # fmt: skip
    return out


def _load_goals(rows: list[Row], gen: str, label: str, goals: list[str]) -> None:
    def one(**want: Any) -> Row | None:
        return _one(rows, axis="load", generator=gen, **want)

    for model in ("mlp_small", "mlp_large"):
        for proto in ("grpc", "http"):
            c1 = one(server="turnout", kind="c1", model=model, proto=proto)
            at80 = one(server="turnout", kind="open", fraction=0.8, model=model, proto=proto)
            if c1 and at80 and c1.get("p50_ms") and at80.get("p99_ms"):
                k = at80["p99_ms"] / c1["p50_ms"]
                goals.append(f"load {model} {proto} ({label}): p99 at 80 % of own max = {k:.1f}x c=1 p50 "
                             f"(goal ≤ 5): {_verdict(k <= 5)}")  # fmt: skip
            peers = [r for r in _pick(rows, axis="load", kind="max", model=model, proto=proto, generator=gen)
                     if r["server"] != "turnout" and r.get("req_per_s")]  # fmt: skip
            if not peers:
                continue
            best = max(peers, key=lambda r: r["req_per_s"])
            mine = one(server="turnout", kind="open", fraction=None, model=model, proto=proto)
            theirs = one(server=best["server"], kind="open", fraction=0.8, model=model, proto=proto)
            if mine and theirs and mine.get("p99_ms") and theirs.get("p99_ms"):
                k = mine["p99_ms"] / theirs["p99_ms"]
                goals.append(f"load {model} {proto} ({label}): at {best['server']}'s 80 % rate Turnout's p99 = "
                             f"{k:.2f}x {best['server']}'s (goal < 0.5): {_verdict(k < 0.5)}")  # fmt: skip
            top = one(server="turnout", kind="max", model=model, proto=proto)
            if top and top.get("req_per_s") and model == "mlp_large" and proto == "grpc":
                k = top["req_per_s"] / best["req_per_s"]
                goals.append(f"mlp_large grpc c=32 ({label}): {k:.2f}x the best peer ({best['server']}) "
                             f"(goal ≥ 1.5): {_verdict(k >= 1.5)}")  # fmt: skip


def connections_axis(rows: list[Row], goals: list[str]) -> list[str]:
    out = [
        "## 4. Connections (mlp_small, open loop at a fixed total rate, every connection used in turn)",
        "",
    ]
    body = []
    for r in _pick(rows, axis="connections"):
        base = _one(
            rows,
            axis="connections",
            proto=r["proto"],
            connections=min(c["connections"] for c in _pick(rows, axis="connections")),
        )
        k = r["p99_ms"] / base["p99_ms"] if base and base.get("p99_ms") and r.get("p99_ms") else None
        body.append([r["proto"], f"{r['connections']:,}", _f(r.get("offered_rps"), ",.0f"), _f(r.get("req_per_s"), ",.0f"),
                     _f(r.get("p50_ms"), ".3f"), _f(r.get("p99_ms"), ".3f"), _f(k, ".2f"), _f(r.get("rss_mb"), ",.0f"),
                     _f(r.get("server_us_per_req"), ",.0f"), _errs(r)])  # fmt: skip
        if (
            r["connections"] == max(c["connections"] for c in _pick(rows, axis="connections"))
            and k is not None
            and base is not None
        ):
            goals.append(f"connections {r['proto']}: p99 at {r['connections']:,} = {k:.2f}x p99 at {base['connections']} "
                         f"(goal ≤ 2): {_verdict(k <= 2)}")  # fmt: skip
    out += _table(["proto", "connections", "offered req/s", "answered req/s", "p50 ms", "p99 ms", "p99 ÷ fewest",
                   "server RSS MB", "server µs/req", "errors"], body)  # fmt: skip
    return out


def profile_axis(rows: list[Row], goals: list[str]) -> list[str]:
    got = _pick(rows, axis="profile")
    out = ["## 5. Where the time goes (mlp_small, c=32; py-spy samples of the server's Python threads)", "",
           "*transport*: frames of server/grpc, server/http; *core*: the rest of Turnout (decode, route, batch, "
           "encode); *model*: onnxruntime calls; *event loop*: frames of none of these (asyncio/uvloop, "
           "selectors). Shares of the sampled CPU, applied to the CPU per request measured at the same point "
           "without the profiler (section 3, c=32) when that ran.", ""]  # fmt: skip
    body = []
    for r in got:
        # the profiler shares the cores: the CPU per request of the same point without it (axis 3)
        plain = _one(rows, axis="load", server="turnout", kind="max", model="mlp_small", proto=r["proto"])
        us = (plain or r).get("server_us_per_req")
        split = r.get("split") or {}
        cells = [_f(us * split[k], ".0f") + f" ({split[k]:.0%})" if us and k in split else "-"
                 for k in ("transport", "core", "model", "event loop")]  # fmt: skip
        body.append([r["proto"], _f(r.get("req_per_s"), ",.0f"), _f(us, ".0f"), *cells])
        if us:
            goals.append(
                f"server CPU per request, mlp_small {r['proto']} c=32: {us:.0f} µs (goal ≤ 40): {_verdict(us <= 40)}"
            )
    out += _table(
        ["proto", "inf/s", "server µs/req", "transport µs", "core µs", "model µs", "event loop µs"], body
    )
    return out


def plots(rows: list[Row], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        made.append(name)

    if _pick(rows, axis="payload"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for ax, c in zip(axes, (1, 8), strict=True):
            for server in ("loopback", "turnout", "kserve"):
                for proto in ("tcp", "grpc", "http-binary", "http-json"):
                    pts = [r for r in _pick(rows, axis="payload", concurrency=c, server=server)
                           if r["proto"] == proto and r.get("mb_per_s")]  # fmt: skip
                    if pts:
                        ax.plot([r["bytes"] for r in pts], [r["mb_per_s"] for r in pts], marker="o",
                                ls="--" if server == "kserve" else "-",
                                label="loopback echo" if proto == "tcp" else f"{server} {proto}")  # fmt: skip
            ax.set(
                xscale="log", yscale="log", xlabel="bytes per request", ylabel="MB/s", title=f"payload, c={c}"
            )
            ax.legend()
        save(fig, "curves-payload.png")
    if _pick(rows, axis="models"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for proto in ("grpc", "http"):
            pts = _pick(rows, axis="models", proto=proto)
            ax.plot(
                [r["models"] for r in pts],
                [r.get("req_per_s") or 0 for r in pts],
                marker="o",
                label=f"{proto} inf/s",
            )
        ax.set(
            xscale="log",
            xlabel="mlp_small copies loaded",
            ylabel="inferences/s (c=32)",
            title="number of models",
        )
        ax.legend()
        save(fig, "curves-models.png")
    if _pick(rows, axis="load", kind="open"):
        fig, axes = plt.subplots(2, 2, figsize=(11, 8))
        for ax, (model, proto) in zip(
            axes.flat, [(m, p) for m in ("mlp_small", "mlp_large") for p in ("grpc", "http")], strict=True
        ):
            for server in sorted({r["server"] for r in _pick(rows, axis="load", kind="open")}):
                for gen, short, ls in (
                    ("turnout-loadgen", "loadgen", "-"),
                    ("perf_analyzer", "perf_analyzer", "--"),
                ):
                    pts = sorted((r for r in _pick(rows, axis="load", kind="open", server=server, model=model,
                                                   proto=proto, generator=gen) if r.get("p99_ms")),
                                 key=lambda r: r["offered_rps"])  # fmt: skip
                    if pts:
                        ax.plot([r["offered_rps"] for r in pts], [r["p99_ms"] for r in pts], marker="o", ls=ls,
                                label=f"{server} p99 ({short})")  # fmt: skip
            ax.set(yscale="log", xlabel="offered req/s", ylabel="p99 ms", title=f"{model} {proto}, open loop")
            ax.legend(fontsize=8)
        save(fig, "curves-load.png")
    if _pick(rows, axis="connections"):
        fig, ax = plt.subplots(figsize=(6, 4))
        for proto in ("http", "grpc"):
            pts = [r for r in _pick(rows, axis="connections", proto=proto) if r.get("p99_ms")]
            ax.plot(
                [r["connections"] for r in pts], [r["p99_ms"] for r in pts], marker="o", label=f"{proto} p99"
            )
            ax.plot(
                [r["connections"] for r in pts],
                [r["p50_ms"] for r in pts],
                marker=".",
                ls=":",
                label=f"{proto} p50",
            )
        ax.set(
            xscale="log", xlabel="client connections", ylabel="ms", title="connections, mlp_small open loop"
        )
        ax.legend()
        save(fig, "curves-connections.png")
    return made


def commit() -> str:
    """The commit measured (with a mark when the tree differs from it)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE.parent
    )
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=HERE.parent).stdout.strip()  # fmt: skip
    return head.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def write(rows: list[Row], out: Path, cmd: str, seconds: float, measured: str | None = None) -> None:
    seconds = seconds or sum(r.get("seconds", 0) for r in rows if r.get("axis") == "meta")
    rows = [r for r in rows if r.get("axis") != "meta"]
    goals: list[str] = []
    sections: list[str] = []
    for part in (payload, models_axis, load_axis, connections_axis, profile_axis):
        try:
            sections += part(rows, goals)
        except (KeyError, TypeError, ZeroDivisionError) as exc:  # a missing axis or failed point
            sections += [f"({part.__name__}: no table: {exc!r})", ""]
    made = plots(rows, out)
    others = [float(r["other_cores"]) for r in rows if r.get("other_cores") is not None]
    head = [
        "# Curves: payload size, number of models, offered load, connections",
        "",
        f"`{cmd}` at commit {measured or '(not recorded)'}, "
        f"{rows[0]['ts'] if rows else ''}, {seconds / 60:.0f} minutes, on this 2-core machine (load "
        f"generator and server share the cores; the CPU of other processes on the machine during the points: "
        f"median {statistics.median(others) if others else 0:.2f} cores). Raw points: `raw/curves.jsonl`.",
        "",
        "## Goals",
        "",
        *(f"- {g}" for g in goals),
        "",
        *(f"![{m}]({m})" for m in made),
        "",
    ]
    (out / "CURVES.md").write_text("\n".join(head + sections))
    print(f"wrote {out / 'CURVES.md'}")
