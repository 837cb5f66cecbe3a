"""Server TLS for both protocols: the certificate and key, optionally a CA that client
certificates must chain to (mTLS), and reloading all three without a restart.

A reload loads the files into the SSLContext objects the servers already listen with, so new
handshakes use the new certificate and connections already open keep theirs. The files are
first copied into a private directory and checked in a scratch context: a half-written or
mismatched pair is refused (one log line) and the old certificate stays.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import ssl
import tempfile
from pathlib import Path

log = logging.getLogger("turnout.tls")


def server_tls(cert_path: str, key_path: str) -> ssl.SSLContext:
    """TLS for gRPC: HTTP/2 negotiated with ALPN, TLS 1.2 or newer (RFC 9113 §9.2)."""
    return _context(Path(cert_path), Path(key_path), None, ["h2"])


def _context(cert: Path, key: Path, client_ca: Path | None, alpn: list[str] | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca is not None:
        ctx.load_verify_locations(cafile=client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


class ServerTls:
    """The TLS files of this server and every SSLContext made from them."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self.cert = cert
        self.key = key
        self.client_ca = client_ca
        self._contexts: list[ssl.SSLContext] = []
        self._seen = self._stamp()
        self.reloads = 0

    @property
    def files(self) -> list[Path]:
        return [self.cert, self.key, *([self.client_ca] if self.client_ca is not None else [])]

    def context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A new server context (client certificates required when a CA is configured); it
        follows every reload."""
        ctx = _context(self.cert, self.key, self.client_ca, alpn)
        self._contexts.append(ctx)
        return ctx

    def pem(self) -> tuple[bytes, bytes, bytes | None]:
        """Key, certificate chain and CA as bytes, for grpcio's credentials."""
        ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return self.key.read_bytes(), self.cert.read_bytes(), ca

    def _stamp(self) -> tuple[tuple[int, int, int], ...]:
        out = []
        for path in self.files:
            try:
                st = path.stat()
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((0, 0, 0))
        return tuple(out)

    def reload_if_changed(self) -> bool:
        """Reload when any file changed since the last attempt. True if new files were loaded.
        A failed attempt is not retried until the files change again."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return self.reload()

    def reload(self) -> bool:
        with tempfile.TemporaryDirectory(prefix="turnout-tls-") as tmp:  # mode 0700
            try:
                copies = [
                    Path(shutil.copyfile(path, os.path.join(tmp, f"{i}.pem")))
                    for i, path in enumerate(self.files)
                ]
                cert, key = copies[0], copies[1]
                ca = copies[2] if self.client_ca is not None else None
                _context(cert, key, ca, None)  # refuses a broken or mismatched set
                for ctx in self._contexts:
                    ctx.load_cert_chain(cert, key)
                    if ca is not None:
                        ctx.load_verify_locations(cafile=ca)
            except (OSError, ssl.SSLError, ValueError) as exc:
                log.error("TLS reload failed, keeping the previous certificates: %s", exc)
                return False
        self.reloads += 1
        log.info("TLS certificates reloaded from %s", ", ".join(str(p) for p in self.files))
        return True

    async def watch(self, interval: float) -> None:
        """Poll the files' mtimes every ``interval`` seconds and reload on a change."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()
