"""RESULTS.md (markdown tables) and throughput.png from the raw JSON lines of one run.

Reads ``<out>/raw/{meta.json, raw_ort.jsonl, turnout.jsonl, peer-*.jsonl}``.  Peer figures come
from peers run in the same session (``--peers``); without them the team harness's reference study
(``/work/shared/peers/results``, another session) is used and labelled as such.

Usage: python -m benchmarks.report [OUT_DIR]   (default benchmarks/results)
"""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks.common import HERE, PEERS_DIR, read_jsonl

NEUTRAL = {"grpc": "loadgen_grpc.py", "http": "wrk"}
GEN_ORDER = ["turnout-loadgen", "loadgen_grpc.py", "wrk", "perf_analyzer"]

Row = dict[str, Any]


def _proto(r: Row) -> str:
    return "http" if r.get("proto") == "rest" else str(r.get("proto"))


def _f(v: Any, fmt: str = ",.0f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _errs(r: Row) -> str:
    e = r.get("errors") or {}
    return ", ".join(f"{k} {v}" for k, v in sorted(e.items())) if isinstance(e, dict) else str(e)


def cell(r: Row | None, batch: bool = True) -> str:
    if r is None:
        return ""
    if "error" in r:
        return "failed"
    bang = ("!" if r.get("errors") else "") + ("~" if r.get("pa_stability_pct") else "")
    b = f" b̄={r['server_avg_batch']:.1f}" if batch and r.get("server_avg_batch") else ""
    return f"{r['infer_per_s']:,.0f} / {r['p50_ms']:.2f} / {r['p99_ms']:.1f}{bang}{b}"


def table(head: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


class Data:
    def __init__(self, out: Path) -> None:
        raw = out / "raw"
        self.meta: Row = json.loads((raw / "meta.json").read_text()) if (raw / "meta.json").exists() else {}
        self.ort = read_jsonl(raw / "raw_ort.jsonl")
        self.t = [r for r in read_jsonl(raw / "turnout.jsonl")]
        self.peers: list[Row] = []
        for f in sorted(raw.glob("peer-*.jsonl")):
            self.peers += [r for r in read_jsonl(f) if "error" not in r]
        self.peer_source = "same session"
        if not self.peers:
            self.peer_source = f"reference study {PEERS_DIR / 'results'} (another session: indicative only)"
            for f in sorted((PEERS_DIR / "results").glob("*.jsonl")):
                self.peers += [r for r in read_jsonl(f) if "error" not in r and "@" not in str(r.get("peer"))]
        self.models = list(dict.fromkeys(r["model"] for r in self.t))
        self.protos = list(dict.fromkeys(_proto(r) for r in self.t))
        self.concs = sorted(
            {r["concurrency"] for r in self.t if r.get("kind") in ("closed", "neutral", "perf_analyzer")}
        )

    def point(self, kind: str, model: str, proto: str, conc: int, gen: str | None = None) -> Row | None:
        found = [r for r in self.t if r.get("kind") == kind and r.get("model") == model and _proto(r) == proto
                 and r.get("concurrency") == conc and (gen is None or r.get("generator") == gen)]  # fmt: skip
        return found[-1] if found else None

    def ort_rate(self, model: str, batch: float, threads: Any = 1) -> Row | None:
        """Raw ORT point with the largest measured batch <= batch (1 if none)."""
        c = [
            r
            for r in self.ort
            if r["model"] == model and r["threads"] == threads and r["batch"] <= max(batch, 1)
        ]
        return max(c, key=lambda r: r["batch"]) if c else None

    def best_peer(self, model: str, proto: str, conc: int, gen: str) -> Row | None:
        c = [r for r in self.peers if r["model"] == model and _proto(r) == proto and r["concurrency"] == conc
             and r["generator"] == gen and r["peer"] != "turnout"]  # fmt: skip
        return max(c, key=lambda r: r["infer_per_s"]) if c else None


def header(d: Data) -> list[str]:
    m = d.meta
    pts = [r for r in d.t if "other_cores" in r]
    other = statistics.median(r["other_cores"] for r in pts) if pts else None
    dirty = " (uncommitted changes in server/, model_store/ or protos/)" if m.get("turnout_dirty") else ""
    quick = "--quick" in str(m.get("cmd", ""))
    return [
        "# Turnout benchmark results",
        "",
        *(
            ["> **Quick smoke run (1 s points): for checking the tooling, not for quoting.**", ""]
            if quick
            else []
        ),
        f"Measured {m.get('date', '?')} on {m.get('nproc', '?')} cores ({m.get('cpu_model', '?')}), Linux "
        f"{m.get('kernel', '?')}, Python {m.get('python', '?')}, onnxruntime {m.get('onnxruntime', '?')}, "
        f"grpcio {m.get('grpcio', '?')}; Turnout commit `{m.get('turnout_commit', '?')}`{dirty}.",
        "",
        f"* Command: `{m.get('cmd', '?')}`",
        f"* Server: `{m.get('server_cmd', '?')}`",
        f"* Load average at start: {' '.join(m.get('loadavg_at_start', []))}; median CPU used by *other* "
        f"processes during the points: {_f(other, '.2f')} cores (a shared machine: see the CPU table).",
        "* Cells: inferences/s / p50 ms / p99 ms, `!` = some errors, `~` = perf_analyzer needed a looser "
        "stability bound (retry), b̄ = server-side average formed batch "
        "(rows per model execution, from `/v2/models/<m>/stats`). Batch 1 per request unless stated.",
        "",
    ]


def throughput_tables(d: Data) -> list[str]:
    out = ["## Throughput and latency (closed loop)", ""]
    gen_name = {"turnout-loadgen": "ours (benchmarks.loadgen)", "perf_analyzer": "perf_analyzer"}
    for model in d.models:
        out += [f"**{model}**", ""]
        rows = []
        for proto in d.protos:
            for kind, gen in (
                ("closed", "turnout-loadgen"),
                ("neutral", NEUTRAL[proto]),
                ("perf_analyzer", None),
            ):
                cells = [cell(d.point(kind, model, proto, c)) for c in d.concs]
                if any(cells):
                    rows.append([proto, gen_name.get(gen or "perf_analyzer", f"{gen} (harness)"), *cells])
        out += [*table(["proto", "generator", *[f"c={c}" for c in d.concs]], rows), ""]
    return out


def ratio_table(d: Data) -> list[str]:
    out = [
        "## Ratios",
        "",
        "Turnout measured with the harness's neutral generators (as the peers; our generator where "
        "those are missing). *ORT 1x1* = in-process onnxruntime, one row per call, one intra-op thread "
        "(Turnout's default); *ORT @b̄* = in-process rows/s at the largest measured batch ≤ the formed "
        f"batch b̄. Peers: {d.peer_source}.",
        "",
    ]
    rows = []
    for model in d.models:
        one = d.ort_rate(model, 1)
        for proto in d.protos:
            for c in d.concs:
                t = d.point("neutral", model, proto, c) or d.point("closed", model, proto, c)
                if t is None or "error" in t:
                    continue
                b = t.get("server_avg_batch") or 1.0
                at_b = d.ort_rate(model, b)
                peer = d.best_peer(model, proto, c, str(t.get("generator")))
                rows.append([
                    model, proto, str(c), str(t.get("generator")), _f(t["infer_per_s"]),
                    _f(one["calls_per_s"]) if one else "n/a",
                    _f(t["infer_per_s"] / one["calls_per_s"], ".3f") if one else "n/a",
                    f"{_f(at_b['rows_per_s'])} (b={at_b['batch']})" if at_b else "n/a",
                    _f(t["infer_per_s"] / at_b["rows_per_s"], ".3f") if at_b else "n/a",
                    f"{peer['peer']} {_f(peer['infer_per_s'])}" if peer else "n/a",
                    _f(t["infer_per_s"] / peer["infer_per_s"], ".2f") if peer else "n/a",
                ])  # fmt: skip
    head = ["model", "proto", "c", "generator", "Turnout inf/s", "ORT 1x1 /s", "÷ ORT 1x1", "ORT @b̄ rows/s",
            "÷ ORT @b̄", "best peer inf/s", "Turnout ÷ best peer"]  # fmt: skip
    return [*out, *table(head, rows), ""]


def latency_table(d: Data) -> list[str]:
    rows = []
    for model in d.models:
        for proto in d.protos:
            rs = [r for r in d.t if r.get("kind") == "latency_c1" and r["model"] == model and _proto(r) == proto
                  and "error" not in r]  # fmt: skip
            if not rs:
                continue
            med = {k: statistics.median(r[k] for r in rs) for k in ("infer_per_s", "p50_ms", "p99_ms")}
            p50s = [r["p50_ms"] for r in rs]
            rows.append([model, proto, str(len(rs)), _f(med["infer_per_s"]), _f(med["p50_ms"], ".3f"),
                         _f(med["p99_ms"], ".3f"), f"{min(p50s):.3f} to {max(p50s):.3f}"])  # fmt: skip
    if not rows:
        return []
    head = ["model", "proto", "runs", "median inf/s", "median p50 ms", "median p99 ms", "p50 range ms"]
    return ["## Latency at concurrency 1 (our generator, median of runs)", "", *table(head, rows), ""]


def special_tables(d: Data) -> list[str]:
    out: list[str] = []
    r16 = [r for r in d.t if r.get("kind") == "rows16"]
    if r16:
        r = r16[-1]
        out += ["## 16-row requests (mlp_large, gRPC, concurrency 16, our generator)", ""]
        out += table(
            ["inferences (rows)/s", "requests/s", "p50 ms", "p99 ms", "b̄ rows", "errors"],
            [[_f(r.get("infer_per_s")), _f(r.get("req_per_s")), _f(r.get("p50_ms"), ".2f"),
              _f(r.get("p99_ms"), ".2f"), _f(r.get("server_avg_batch"), ".1f"), _errs(r) or "0"]],
        )  # fmt: skip
        out.append("")
    ov = [r for r in d.t if r.get("kind") == "overload" and "error" not in r]
    if ov:
        out += [
            "## Overload (open loop at 2x the best closed-loop request rate; latency from the *scheduled* "
            "send time; p50/p99 over accepted requests)",
            "",
        ]
        rows = [[r["model"], _proto(r), _f(r.get("offered_rps")), _f(r.get("req_per_s")),
                 _f(r.get("error_share", 0) * 100, ".1f") + " %", _errs(r) or "0", _f(r.get("p50_ms"), ".1f"),
                 _f(r.get("p99_ms"), ".1f"), _f(r.get("send_lag_p99_ms"), ".1f"),
                 f"{_f(r.get('rss_mb_before'), '.0f')} → {_f(r.get('rss_mb_after'), '.0f')}",
                 _f(r.get("server_cores"), ".2f")] for r in ov]  # fmt: skip
        head = ["model", "proto", "offered req/s", "ok req/s", "refused/failed", "by code", "p50 ms", "p99 ms",
                "generator lag p99 ms", "server RSS MiB", "server cores"]  # fmt: skip
        out += [*table(head, rows), ""]
        out += [
            "`CLIENT_DROPPED` = not sent because the generator's outstanding cap was reached; "
            "`CANCELLED` over gRPC = the stream was reset below the application (grpc-core); "
            "`RESOURCE_EXHAUSTED` / `HTTP_503` = Turnout's queue limit. A generator lag p99 far above "
            "a millisecond means the generator itself could not keep the schedule.",
            "",
        ]
    return out


def batch_table(d: Data) -> list[str]:
    rows = []
    for model in d.models:
        for proto in d.protos:
            for kind in ("closed", "neutral", "perf_analyzer"):
                vals = [d.point(kind, model, proto, c) for c in d.concs]
                if any(vals):
                    rows.append([model, proto, str(next(v for v in vals if v).get("generator")),
                                 *[_f((v or {}).get("server_avg_batch"), ".2f") for v in vals]])  # fmt: skip
    head = ["model", "proto", "generator", *[f"c={c}" for c in d.concs]]
    return ["## Formed batch size (rows per model execution)", "", *table(head, rows), ""]


def cpu_table(d: Data) -> list[str]:
    rows = []
    for r in d.t:
        if "server_cores" not in r or r.get("kind") == "latency_c1":
            continue
        conc = r.get("concurrency") or f"{r.get('offered_rps', 0):.0f}/s"
        rps = r.get("req_per_s") or r.get("infer_per_s", 0) / (r.get("rows") or r.get("batch") or 1)
        per_req = r["server_cores"] / rps * 1e6 if rps else None
        rows.append([r["kind"], r["model"], _proto(r), str(conc), str(r.get("generator")),
                     _f(r["server_cores"], ".2f"), _f(r["client_cores"], ".2f"), _f(r["other_cores"], ".2f"),
                     _f(per_req, ".0f")])  # fmt: skip
    head = ["point", "model", "proto", "c", "generator", "server cores", "generator cores", "other cores",
            "≈ server CPU µs/request"]  # fmt: skip
    return [
        "## CPU split (cores busy over the point incl. warm-up; /proc utime+stime)",
        "",
        *table(head, rows),
        "",
        "µs/request is approximate: server cores averaged over the whole point (incl. warm-up and "
        "generator start-up) ÷ measured requests/s.",
        "",
    ]


def ort_table(d: Data) -> list[str]:
    if not d.ort:
        return []
    rows = [[r["model"], str(r["threads"]), str(r["batch"]), _f(r["calls_per_s"]), _f(r["rows_per_s"]),
             _f(r["p50_ms"], ".3f"), _f(r["p99_ms"], ".3f")] for r in d.ort]  # fmt: skip
    head = ["model", "intra-op threads", "batch", "calls/s", "rows/s", "p50 ms", "p99 ms"]
    return ["## Raw onnxruntime (in-process limit, benchmarks.raw_ort)", "", *table(head, rows), ""]


def peer_tables(d: Data) -> list[str]:
    if not d.peers:
        return []
    out = [f"## Peers ({d.peer_source})", ""]
    for model in d.models:
        keys = sorted({(r["peer"], _proto(r), r["generator"]) for r in d.peers if r["model"] == model})
        rows = []
        for peer, proto, gen in keys:
            by_c = {r["concurrency"]: r for r in d.peers
                    if r["model"] == model and r["peer"] == peer and _proto(r) == proto and r["generator"] == gen}  # fmt: skip
            rows.append([peer, proto, gen, *[cell(by_c.get(c)) for c in d.concs]])
        out += [
            f"**{model}**",
            "",
            *table(["peer", "proto", "generator", *[f"c={c}" for c in d.concs]], rows),
            "",
        ]
    return out


def plot(d: Data, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(d.models), 2, figsize=(12, 4.2 * len(d.models)), squeeze=False)
    style = {"closed": ("-", "o"), "neutral": ("--", "s"), "perf_analyzer": (":", "^")}
    color = {"grpc": "tab:blue", "http": "tab:orange"}
    for i, model in enumerate(d.models):
        ax_t, ax_l = axes[i]
        for proto in d.protos:
            for kind, (ls, mk) in style.items():
                pts = [p for c in d.concs if (p := d.point(kind, model, proto, c)) and "error" not in p]
                if pts:
                    gen = pts[0].get("generator")
                    ax_t.plot([p["concurrency"] for p in pts], [p["infer_per_s"] for p in pts], ls, marker=mk,
                              color=color.get(proto), label=f"{proto} {gen}")  # fmt: skip
            pts = [p for c in d.concs if (p := d.point("closed", model, proto, c)) and "error" not in p]
            if pts:
                xs = [p["concurrency"] for p in pts]
                ax_l.plot(
                    xs,
                    [p["p50_ms"] for p in pts],
                    "-",
                    marker="o",
                    color=color.get(proto),
                    label=f"{proto} p50",
                )
                ax_l.plot(
                    xs,
                    [p["p99_ms"] for p in pts],
                    "--",
                    marker="x",
                    color=color.get(proto),
                    label=f"{proto} p99",
                )
        for ax, title, ylab in (
            (ax_t, "throughput", "inferences/s"),
            (ax_l, "latency (our generator)", "ms"),
        ):
            ax.set_xscale("log", base=2)
            ax.set_xticks(d.concs, [str(c) for c in d.concs])
            ax.set_xlabel("concurrency")
            ax.set_ylabel(ylab)
            ax.set_title(f"{model}: {title}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        ax_l.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(out: Path) -> None:
    d = Data(out)
    parts = [header(d), throughput_tables(d), ratio_table(d), latency_table(d), special_tables(d),
             batch_table(d), cpu_table(d), ort_table(d), peer_tables(d)]  # fmt: skip
    (out / "RESULTS.md").write_text("\n".join(line for p in parts for line in p) + "\n")
    if d.t:
        plot(d, out / "throughput.png")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results")
