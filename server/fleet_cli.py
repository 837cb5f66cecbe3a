"""``turnout drift merge``: one drift report for a whole fleet of replicas.

Fetches each replica's mergeable counts (``GET /v2/models/{m}/versions/{v}/drift/counts``, scope
``read``), adds them exactly (:func:`drift.fleet.merge_counts`) and prints the report a single
replica that had served all their rows would compute (:func:`drift.fleet.counts_report`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

from turnout.drift.fleet import NotMergeable, counts_report, merge_counts

Fetch = Callable[[str, str | None], dict[str, Any]]


def counts_url(base: str, model: str, version: str) -> str:
    """A replica's counts address: ``base`` as given when it already names one."""
    if "/drift/counts" in base:
        return base
    return f"{base.rstrip('/')}/v2/models/{quote(model, safe='')}/versions/{quote(version, safe='')}/drift/counts"


def http_fetch(url: str, token: str | None) -> dict[str, Any]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as resp:
        body: dict[str, Any] = json.loads(resp.read())
        return body


def fleet_report(
    urls: Sequence[str], model: str, version: str, token: str | None, fetch: Fetch = http_fetch
) -> dict[str, Any]:
    """The merged report of the replicas at ``urls``."""
    parts = [fetch(counts_url(u, model, version), token) for u in urls]
    merged = merge_counts(parts)
    return {
        "model_name": model,
        "model_version": parts[0].get("model_version", version),
        "replicas": [{"url": u, "rows": int(p["window"]["rows"])} for u, p in zip(urls, parts, strict=True)],
        **counts_report(merged),
    }


def drift_merge(ns: argparse.Namespace) -> int:
    token = ns.token or os.environ.get("TURNOUT_ADMIN_TOKEN")
    try:
        report = fleet_report(ns.urls, ns.model, ns.version, token)
    except urllib.error.HTTPError as exc:
        print(f"turnout: {exc.url}: {exc.code} {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"turnout: cannot reach a replica: {exc.reason}", file=sys.stderr)
        return 2
    except NotMergeable as exc:
        print(f"turnout: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    return 0


def add_fleet_commands(sub: Any) -> None:
    d = sub.add_parser("drift", help="drift across replicas")
    dsub = d.add_subparsers(dest="drift_command", required=True)
    m = dsub.add_parser(
        "merge", help="merge the drift counts of several replicas and report on all their rows"
    )
    m.add_argument("urls", nargs="+", help="each replica's HTTP address (e.g. http://10.0.0.5:8000)")
    m.add_argument("--model", required=True)
    m.add_argument("--version", required=True, help="the version (counts are per version)")
    m.add_argument("--token", help="a token with the read scope (default: $TURNOUT_ADMIN_TOKEN)")
    m.set_defaults(func=drift_merge)
