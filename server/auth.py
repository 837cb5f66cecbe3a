"""Who may call what: scoped, named bearer tokens, and the one table that says which scope
every HTTP route and gRPC method needs.

Scopes are ``infer``, ``read`` and ``admin``; ``admin`` implies the other two, ``read`` does
not imply ``infer``. Tokens are kept as sha256 digests only and compared in constant time.
Without any token configured, control-plane calls (``read``, ``admin``) answer only on
loopback, and everything else is open.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from turnout.server.errors import PermissionDenied, Unauthenticated

SCOPES = ("infer", "read", "admin")
_IMPLIED = {"admin": ("admin", "read", "infer"), "read": ("read",), "infer": ("infer",)}
_HEX64 = re.compile(r"[0-9a-f]{64}")


class Need(enum.Enum):
    """What a route or method requires."""

    OPEN = "open"  # health, metadata: always open (probes must work)
    INFER = "infer"  # inference: the infer scope when --auth-infer is on, else open
    OBSERVE = "observe"  # metrics, dashboard, statistics: read when --auth-metrics is on, else open
    READ = "read"  # control-plane reads
    ADMIN = "admin"  # anything that changes state


# ---- the policy table ---------------------------------------------------------------------
# Every HTTP route (method, path template) and every gRPC method (full name) the server
# answers. A route or method missing here is refused at start (server/http/access.py) or at
# import (server/grpc/admin.py), and tests/unit/test_auth_policy.py checks the table against
# the routes and the service descriptors.

_MODEL_PREFIXES = ("/v2/models/{model}", "/v2/models/{model}/versions/{version}")

HTTP_POLICY: dict[tuple[str, str], Need] = {
    ("GET", "/v2/health/live"): Need.OPEN,
    ("GET", "/v2/health/ready"): Need.OPEN,
    ("GET", "/v2"): Need.OPEN,
    ("GET", "/v2/models/stats"): Need.OBSERVE,
    ("POST", "/v2/repository/index"): Need.OBSERVE,
    ("POST", "/v2/repository/models/{model}/load"): Need.ADMIN,
    ("POST", "/v2/repository/models/{model}/unload"): Need.ADMIN,
    ("GET", "/metrics"): Need.OBSERVE,
    ("GET", "/dashboard"): Need.OBSERVE,
    ("GET", "/"): Need.OBSERVE,
    # the dashboard's series and state carry what the read routes do (traffic, rollouts, drift)
    ("GET", "/dashboard/data"): Need.READ,
    **{
        entry: need
        for prefix in _MODEL_PREFIXES
        for entry, need in (
            (("GET", prefix), Need.OPEN),
            (("GET", prefix + "/ready"), Need.OPEN),
            (("GET", prefix + "/config"), Need.OPEN),
            (("GET", prefix + "/stats"), Need.OBSERVE),
            (("GET", prefix + "/drift"), Need.READ),
            (("POST", prefix + "/infer"), Need.INFER),  # answered by server/http/infer_route.py
        )
    },
    ("GET", "/v2/models/{model}/versions/{version}/drift/counts"): Need.READ,
    # ground-truth feedback comes from whoever may ask for predictions (docs/feedback.md)
    ("POST", "/v2/models/{model}/feedback"): Need.INFER,
    ("GET", "/v2/models/{model}/performance"): Need.READ,
    ("GET", "/v2/models/{model}/versions/{version}/performance"): Need.READ,
    ("GET", "/admin/traffic"): Need.READ,
    ("GET", "/admin/models/{model}/traffic"): Need.READ,
    ("PUT", "/admin/models/{model}/traffic"): Need.ADMIN,
    ("DELETE", "/admin/models/{model}/traffic"): Need.ADMIN,
    ("POST", "/admin/models/{model}/rollback"): Need.ADMIN,
    ("POST", "/admin/models/{model}/rollout"): Need.ADMIN,
    ("GET", "/admin/models/{model}/rollout"): Need.READ,
    ("DELETE", "/admin/models/{model}/rollout"): Need.ADMIN,
    ("POST", "/admin/models/{model}/rollout/{action}"): Need.ADMIN,
    ("GET", "/admin/models/{model}/shadow"): Need.READ,
    ("GET", "/admin/audit"): Need.READ,
}

_INFERENCE = "/inference.GRPCInferenceService/"
_ADMIN = "/turnout.admin.v1.Admin/"

GRPC_POLICY: dict[str, Need] = {
    _INFERENCE + "ServerLive": Need.OPEN,
    _INFERENCE + "ServerReady": Need.OPEN,
    _INFERENCE + "ModelReady": Need.OPEN,
    _INFERENCE + "ServerMetadata": Need.OPEN,
    _INFERENCE + "ModelMetadata": Need.OPEN,
    _INFERENCE + "ModelConfig": Need.OPEN,
    _INFERENCE + "ModelInfer": Need.INFER,
    _INFERENCE + "ModelStreamInfer": Need.INFER,
    _INFERENCE + "ModelStatistics": Need.OBSERVE,
    _INFERENCE + "RepositoryIndex": Need.OBSERVE,
    _INFERENCE + "RepositoryModelLoad": Need.ADMIN,
    _INFERENCE + "RepositoryModelUnload": Need.ADMIN,
    # not implemented by Turnout (answered UNIMPLEMENTED once authorized)
    _INFERENCE + "SystemSharedMemoryStatus": Need.READ,
    _INFERENCE + "SystemSharedMemoryRegister": Need.ADMIN,
    _INFERENCE + "SystemSharedMemoryUnregister": Need.ADMIN,
    _INFERENCE + "CudaSharedMemoryStatus": Need.READ,
    _INFERENCE + "CudaSharedMemoryRegister": Need.ADMIN,
    _INFERENCE + "CudaSharedMemoryUnregister": Need.ADMIN,
    _INFERENCE + "TraceSetting": Need.ADMIN,
    _INFERENCE + "LogSettings": Need.ADMIN,
    _ADMIN + "GetTraffic": Need.READ,
    _ADMIN + "SetTraffic": Need.ADMIN,
    _ADMIN + "Rollback": Need.ADMIN,
    _ADMIN + "StartRollout": Need.ADMIN,
    _ADMIN + "GetRollout": Need.READ,
    _ADMIN + "ControlRollout": Need.ADMIN,
    _ADMIN + "GetAudit": Need.READ,
    _ADMIN + "GetDrift": Need.READ,
    _ADMIN + "PostFeedback": Need.INFER,
    _ADMIN + "GetPerformance": Need.READ,
    # registered by grpcio's health and reflection packages: open, like the HTTP health routes
    "/grpc.health.v1.Health/Check": Need.OPEN,
    "/grpc.health.v1.Health/List": Need.OPEN,
    "/grpc.health.v1.Health/Watch": Need.OPEN,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": Need.OPEN,
}


# ---- tokens ---------------------------------------------------------------------------------


class TokenConfigError(ValueError):
    """A token file or variable that cannot be used; the server does not start."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name, ``loopback:<addr>``, or ``anonymous`` on open routes."""

    name: str
    scopes: frozenset[str]


ANONYMOUS = Principal("anonymous", frozenset())


@dataclass(frozen=True)
class Token:
    name: str
    scopes: frozenset[str]  # with the implied ones
    digest: bytes  # sha256 of the token

    def __repr__(self) -> str:
        return f"Token(name={self.name!r}, scopes={sorted(self.scopes)})"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(obj: Any, source: str) -> list[Token]:
    """``{"tokens": [{"name": ..., "scopes": [...], "sha256": hex | "token": plaintext}]}``."""
    if not isinstance(obj, dict) or not isinstance(obj.get("tokens"), list):
        raise TokenConfigError(f'{source}: expected {{"tokens": [...]}}')
    out: list[Token] = []
    for i, entry in enumerate(obj["tokens"]):
        where = f"{source}: tokens[{i}]"
        if not isinstance(entry, dict):
            raise TokenConfigError(f"{where}: expected an object")
        unknown = set(entry) - {"name", "scopes", "sha256", "token"}
        if unknown:
            raise TokenConfigError(f"{where}: unknown keys {sorted(unknown)}")
        name = entry.get("name")
        if not isinstance(name, str) or not name or name.startswith("loopback:") or name == "anonymous":
            raise TokenConfigError(
                f"{where}: 'name' must be a non-empty string (not 'anonymous' or 'loopback:*')"
            )
        scopes = entry.get("scopes")
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)
        ):
            raise TokenConfigError(f"{where} ({name}): 'scopes' must be a non-empty list of {list(SCOPES)}")
        if ("sha256" in entry) == ("token" in entry):
            raise TokenConfigError(f"{where} ({name}): give exactly one of 'sha256' and 'token'")
        if "token" in entry:
            plain = entry["token"]
            if not isinstance(plain, str) or len(plain) < 8:
                raise TokenConfigError(f"{where} ({name}): 'token' must be a string of at least 8 characters")
            digest = token_digest(plain)
        else:
            hexdigest = entry["sha256"]
            if not isinstance(hexdigest, str) or not _HEX64.fullmatch(hexdigest.lower()):
                raise TokenConfigError(f"{where} ({name}): 'sha256' must be 64 hex digits")
            digest = bytes.fromhex(hexdigest)
        out.append(Token(name, _with_implied(scopes), digest))
    return out


def _with_implied(scopes: Iterable[str]) -> frozenset[str]:
    return frozenset(s for scope in scopes for s in _IMPLIED[scope])


def load_tokens(
    admin_token: SecretStr | None, tokens_file: Path | None, tokens_json: SecretStr | None
) -> list[Token]:
    """Every configured token: ``--admin-token`` (named ``admin``), the token file and the
    ``TURNOUT_AUTH_TOKENS`` variable (same format as the file). Names and tokens are unique."""
    tokens: list[Token] = []
    if admin_token is not None:
        tokens.append(Token("admin", _with_implied(["admin"]), token_digest(admin_token.get_secret_value())))
    if tokens_file is not None:
        try:
            obj = json.loads(tokens_file.read_text())
        except (OSError, ValueError) as exc:
            raise TokenConfigError(f"{tokens_file}: {exc}") from None
        tokens += parse_tokens(obj, str(tokens_file))
    if tokens_json is not None:
        try:
            obj = json.loads(tokens_json.get_secret_value())
        except ValueError as exc:
            raise TokenConfigError(f"TURNOUT_AUTH_TOKENS: {exc}") from None
        tokens += parse_tokens(obj, "TURNOUT_AUTH_TOKENS")
    names = [t.name for t in tokens]
    for name in names:
        if names.count(name) > 1:
            raise TokenConfigError(f"token name '{name}' is configured more than once")
    digests = [t.digest for t in tokens]
    if len(set(digests)) != len(digests):
        raise TokenConfigError("two configured tokens are the same secret")
    return tokens


# ---- the check ------------------------------------------------------------------------------


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def grpc_peer_host(peer: str) -> str:
    """'ipv4:127.0.0.1:5555' / 'ipv6:[::1]:5555' -> the address part."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    return ""


class Authorizer:
    """The one check every protocol calls: :meth:`require`."""

    def __init__(self, tokens: list[Token], *, infer: bool = False, metrics: bool = False) -> None:
        if (infer or metrics) and not tokens:
            raise TokenConfigError("--auth-infer and --auth-metrics need at least one token")
        self._tokens = tuple(tokens)
        self.infer = infer
        self.metrics = metrics

    def __repr__(self) -> str:
        return (
            f"Authorizer(tokens={[t.name for t in self._tokens]}, infer={self.infer}, metrics={self.metrics})"
        )

    @property
    def has_tokens(self) -> bool:
        return bool(self._tokens)

    def enforces(self, need: Need) -> bool:
        """Whether :meth:`require` can refuse ``need`` (callers skip it where it cannot)."""
        if need is Need.OPEN:
            return False
        if need is Need.INFER:
            return self.infer
        if need is Need.OBSERVE:
            return self.metrics
        return True

    def require(self, need: Need, authorization: str | None, peer_host: str | None) -> Principal:
        """The caller, if allowed ``need``; else Unauthenticated (no or unknown token) or
        PermissionDenied (a token without the scope, or not loopback when no token exists)."""
        if not self.enforces(need):
            return ANONYMOUS
        scope = "read" if need is Need.OBSERVE else need.value
        if not self._tokens:  # only READ and ADMIN get here: the loopback rule
            if not is_loopback(peer_host):
                raise PermissionDenied(
                    "the control plane answers only on loopback unless access tokens are configured"
                )
            return Principal(f"loopback:{peer_host}", frozenset(SCOPES))
        token = self._match(authorization)
        if token is None:
            if not authorization:
                raise Unauthenticated(
                    f"this call needs 'Authorization: Bearer <token>' with the '{scope}' scope"
                )
            raise Unauthenticated("unknown or malformed bearer token")
        if scope not in token.scopes:
            raise PermissionDenied(f"token '{token.name}' lacks the '{scope}' scope this call needs")
        return Principal(token.name, token.scopes)

    def _match(self, authorization: str | None) -> Token | None:
        if not authorization or authorization[:7].lower() != "bearer ":
            return None
        digest = token_digest(authorization[7:].strip())
        found: Token | None = None
        for token in self._tokens:  # no early exit: every configured digest is compared
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


# ---- cross-site refusal (HTTP) ------------------------------------------------------------------

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def cross_site_refusal(method: str, headers: Mapping[str, str], scheme: str) -> str | None:
    """Why a state-changing request looks like a browser's cross-site request (None: it does
    not). A page on another site can make a browser POST ``text/plain`` or form bodies without
    asking first; such a request carries ``Origin`` and, in current browsers, ``Sec-Fetch-Site``."""
    if method in _SAFE_METHODS:
        return None
    if headers.get("sec-fetch-site", "").lower() == "cross-site":
        return "cross-site request refused (Sec-Fetch-Site: cross-site)"
    origin = headers.get("origin")
    if origin is not None and not _same_origin(origin, headers.get("host", ""), scheme):
        return (
            f"cross-site request refused: Origin '{origin}' does not match Host '{headers.get('host', '')}'"
        )
    content_type = headers.get("content-type")
    if content_type is not None and not _is_json(content_type):  # even with an empty body: a form
        return f"request body must be JSON (Content-Type application/json), not '{content_type}'"
    return None


def _same_origin(origin: str, host: str, scheme: str) -> bool:
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return False  # "null" and other opaque origins
    origin_port = str(parts.port) if parts.port is not None else _DEFAULT_PORTS[parts.scheme]
    try:
        h = urlsplit(f"//{host}")
        host_port = str(h.port) if h.port is not None else _DEFAULT_PORTS.get(scheme, "")
    except ValueError:
        return False
    return (parts.hostname, origin_port) == ((h.hostname or "").lower(), host_port)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
