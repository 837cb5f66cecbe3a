"""Who may use the admin API: a bearer token when one is configured (compared in constant
time), otherwise only clients on the loopback interface."""

from __future__ import annotations

import hmac
import ipaddress

from pydantic import SecretStr

from server.errors import PermissionDenied, Unauthenticated


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


class AdminAuth:
    def __init__(self, token: SecretStr | None) -> None:
        self._token = token.get_secret_value().encode() if token is not None else None

    def __repr__(self) -> str:
        return f"AdminAuth(token={'***' if self._token else None})"

    def check(self, authorization: str | None, peer_host: str | None, user: str | None = None) -> str:
        """Return who is calling (for the audit log) or raise."""
        if self._token is None:
            if not is_loopback(peer_host):
                raise PermissionDenied(
                    "the admin API answers only on loopback unless an admin token is configured"
                )
            return user or f"loopback:{peer_host}"
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthenticated("admin calls need 'Authorization: Bearer <token>'")
        given = authorization[7:].strip().encode()
        if not hmac.compare_digest(given, self._token):
            raise Unauthenticated("wrong admin token")
        return user or "token"
