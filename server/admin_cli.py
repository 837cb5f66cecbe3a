"""``turnout traffic|rollback|rollout|audit``: the control plane from the command line.

Talks to a running server's HTTP admin API (``--url``, default http://127.0.0.1:8000)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any


def _call(ns: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> int:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(ns.url.rstrip("/") + path, data=data, method=method)
    req.add_header("content-type", "application/json")
    token = ns.token or os.environ.get("TURNOUT_ADMIN_TOKEN")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            text = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(), exc.code
    except urllib.error.URLError as exc:
        print(f"turnout: cannot reach {ns.url}: {exc.reason}", file=sys.stderr)
        return 2
    if text:
        try:
            print(json.dumps(json.loads(text), indent=2))
        except ValueError:
            print(text)
    return 0 if status < 400 else 1


def _pair(spec: str, what: str) -> dict[str, Any]:
    version, _, share = spec.partition(":")
    if not version or not share:
        raise argparse.ArgumentTypeError(f"{what} must be VERSION:SHARE, e.g. 2:0.1")
    key = "weight" if what == "canary" else "fraction"
    return {"version": version, key: float(share)}


def traffic(ns: argparse.Namespace) -> int:
    path = f"/admin/models/{ns.model}/traffic"
    if ns.action == "get":
        return _call(ns, "GET", path)
    if ns.action == "clear":
        return _call(ns, "DELETE", path, {"reason": ns.reason})
    if not ns.stable:
        print("turnout traffic set: --stable is required", file=sys.stderr)
        return 2
    body: dict[str, Any] = {"stable": ns.stable, "reason": ns.reason}
    if ns.canary:
        body["canaries"] = [_pair(c, "canary") for c in ns.canary]
    if ns.shadow:
        body["shadows"] = [_pair(s, "shadow") for s in ns.shadow]
    return _call(ns, "PUT", path, body)


def rollback(ns: argparse.Namespace) -> int:
    return _call(ns, "POST", f"/admin/models/{ns.model}/rollback", {"reason": ns.reason})


def _step(text: str) -> float | dict[str, Any]:
    """``0.25`` (a weight), ``approval`` or ``approval:SECONDS`` (an approval with a deadline)."""
    word, _, deadline = text.strip().partition(":")
    if word != "approval":
        return float(text)
    return {"approval": {"deadline_seconds": float(deadline)} if deadline else {}}


def rollout(ns: argparse.Namespace) -> int:
    path = f"/admin/models/{ns.model}/rollout"
    if ns.action == "status":
        return _call(ns, "GET", path)
    if ns.action == "start":
        if not ns.canary:
            print("turnout rollout start: --canary is required", file=sys.stderr)
            return 2
        plan: dict[str, Any] = {}
        if ns.steps:
            plan["steps"] = [_step(x) for x in ns.steps.split(",")]
        if ns.hold is not None:
            plan["hold_seconds"] = ns.hold
        if ns.min_requests is not None:
            plan["min_requests"] = ns.min_requests
        gates = {
            k: v
            for k, v in (
                ("max_error_rate_increase", ns.max_error_rate_increase),
                ("max_p99_ratio", ns.max_p99_ratio),
                ("max_disagreement", ns.max_disagreement),
                ("max_accuracy_drop", ns.max_accuracy_drop),
            )
            if v is not None
        }
        if gates:
            plan["gates"] = gates
        return _call(ns, "POST", path, {"canary": ns.canary, "plan": plan, "reason": ns.reason})
    return _call(ns, "POST", f"{path}/{ns.action}", {"reason": ns.reason})


def audit(ns: argparse.Namespace) -> int:
    query = f"?limit={ns.limit}" + (f"&model={ns.model}" if ns.model else "")
    return _call(ns, "GET", f"/admin/audit{query}")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=os.environ.get("TURNOUT_URL", "http://127.0.0.1:8000"), help="server HTTP address"
    )
    p.add_argument(
        "--token", help="bearer token; the audit log records its name (default: $TURNOUT_ADMIN_TOKEN)"
    )
    p.add_argument("--reason", default="", help="why: recorded in the audit log")


def add_admin_commands(sub: Any) -> None:
    t = sub.add_parser("traffic", help="show or change a model's traffic policy")
    t.add_argument("action", choices=["get", "set", "clear"])
    t.add_argument("model")
    t.add_argument("--stable", help="version that takes the remaining traffic")
    t.add_argument("--canary", action="append", help="VERSION:WEIGHT, repeatable (e.g. 2:0.1)")
    t.add_argument(
        "--shadow", action="append", help="VERSION:FRACTION mirrored off the request path (e.g. 3:1.0)"
    )
    _common(t)
    t.set_defaults(func=traffic)

    r = sub.add_parser("rollback", help="send all traffic back to the previous stable version, now")
    r.add_argument("model")
    _common(r)
    r.set_defaults(func=rollback)

    o = sub.add_parser("rollout", help="automated progressive rollout")
    o.add_argument(
        "action", choices=["start", "status", "abort", "pause", "resume", "promote", "approve", "reject"]
    )
    o.add_argument("model")
    o.add_argument("--canary", help="version to roll out (start)")
    o.add_argument(
        "--steps",
        help="comma-separated canary weights and approvals, e.g. 0.05,0.25,approval:3600,0.5,1",
    )
    o.add_argument("--hold", type=float, help="seconds each step is held")
    o.add_argument("--min-requests", type=int, help="canary requests needed per step")
    o.add_argument("--max-error-rate-increase", type=float)
    o.add_argument("--max-p99-ratio", type=float)
    o.add_argument("--max-disagreement", type=float)
    o.add_argument("--max-accuracy-drop", type=float, help="accuracy gate on ground-truth feedback")
    _common(o)
    o.set_defaults(func=rollout)

    a = sub.add_parser("audit", help="who changed what, when and why")
    a.add_argument("--limit", type=int, default=50)
    a.add_argument("--model")
    _common(a)
    a.set_defaults(func=audit)
