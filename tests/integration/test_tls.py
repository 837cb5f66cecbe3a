"""mTLS on both protocols with real clients, and certificate reload without a restart: a CA,
server and client certificates made here (cryptography), the server as a subprocess."""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gevent.ssl
import httpx
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from tritonclient.utils import InferenceServerException

from tests.server_proc import ServerProc, start_server

T = 10.0


@dataclass
class Issued:
    cert: bytes
    key: bytes
    serial: int


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def issue(
    cn: str,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    server: bool = False,
) -> tuple[Issued, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    serial = x509.random_serial_number()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key), serial), cert, key


@dataclass
class Pki:
    dir: Path
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.dir / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.dir / "server.key"

    @property
    def client_cert(self) -> Path:
        return self.dir / "client.pem"

    @property
    def client_key(self) -> Path:
        return self.dir / "client.key"

    def new_server_cert(self, cn: str) -> int:
        """Issue a server certificate and key and put them in place atomically (as a renewal
        tool would). Returns its serial."""
        issued, _, _ = issue(cn, (self.ca_cert, self.ca_key), server=True)
        for path, data in ((self.server_key, issued.key), (self.server_cert, issued.cert)):
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return issued.serial


def make_pki(d: Path) -> tuple[Pki, int]:
    ca, ca_cert, ca_key = issue("turnout test CA", None, ca=True)
    (d / "ca.pem").write_bytes(ca.cert)
    pki = Pki(d, ca_cert, ca_key)
    client, _, _ = issue("test client", (ca_cert, ca_key))
    pki.client_cert.write_bytes(client.cert)
    pki.client_key.write_bytes(client.key)
    serial = pki.new_server_cert("turnout-1")
    return pki, serial


def wait_tls_ready(s: ServerProc, pki: Pki, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(
                f"https://127.0.0.1:{s.http_port}/v2/health/ready", verify=client_ctx(pki), timeout=2
            )
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not s.alive():
            raise RuntimeError(f"TLS server never became ready:\n{s.log()}")
        time.sleep(0.1)


def client_ctx(pki: Pki, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


def peer_serial(port: int, pki: Pki) -> int:
    """The serial of the certificate a new TLS connection to ``port`` is shown."""
    ctx = client_ctx(pki)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=T) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def triton_http(s: ServerProc, pki: Pki, with_cert: bool = True) -> httpclient.InferenceServerClient:
    def factory() -> ssl.SSLContext:
        ctx = gevent.ssl.create_default_context(cafile=str(pki.ca))
        if with_cert:
            ctx.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        return ctx

    return httpclient.InferenceServerClient(
        s.http_url,
        ssl=True,
        ssl_context_factory=factory,
        ssl_options={"server_hostname": "127.0.0.1"},
        connection_timeout=T,
        network_timeout=T,
    )


def triton_grpc(s: ServerProc, pki: Pki, with_cert: bool = True) -> grpcclient.InferenceServerClient:
    if with_cert:
        return grpcclient.InferenceServerClient(
            s.grpc_url,
            ssl=True,
            root_certificates=str(pki.ca),
            private_key=str(pki.client_key),
            certificate_chain=str(pki.client_cert),
        )
    return grpcclient.InferenceServerClient(s.grpc_url, ssl=True, root_certificates=str(pki.ca))


@pytest.fixture
def pki(tmp_path: Path) -> tuple[Pki, int]:
    return make_pki(tmp_path)


def tls_server(tmp: Path, pki: Pki, *extra: str) -> Iterator[ServerProc]:
    args = [
        "--tls-cert",
        str(pki.server_cert),
        "--tls-key",
        str(pki.server_key),
        "--tls-client-ca",
        str(pki.ca),
    ]
    s = start_server(tmp, args=[*args, "--drift", "false", *extra], wait_ready=False)
    try:
        wait_tls_ready(s, pki)
        yield s
    finally:
        assert s.stop() == 0, s.log()


def test_mtls_both_protocols_and_reload(tmp_path: Path, pki: tuple[Pki, int]) -> None:
    p, first_serial = pki
    for s in tls_server(tmp_path, p, "--tls-reload-secs", "0.3"):
        pid = s.proc.pid
        h, g = triton_http(s, p), triton_grpc(s, p)
        try:
            assert h.is_server_ready() and h.is_model_ready("mlp")
            assert g.is_server_ready() and g.get_model_metadata("mlp").name == "mlp"
        finally:
            h.close()
            g.close()

        # no client certificate: refused on both protocols
        with pytest.raises(httpx.HTTPError):
            httpx.get(
                f"https://127.0.0.1:{s.http_port}/v2/health/ready", verify=client_ctx(p, False), timeout=T
            )
        h = triton_http(s, p, with_cert=False)
        with pytest.raises(Exception):  # noqa: B017  # an SSL error from gevent's socket
            h.is_server_live()
        h.close()
        g = triton_grpc(s, p, with_cert=False)
        with pytest.raises(InferenceServerException):
            g.is_server_live(client_timeout=5)
        g.close()

        # renewal: new certificate and key in place; new connections see it, no restart
        assert peer_serial(s.http_port, p) == first_serial == peer_serial(s.grpc_port, p)
        second_serial = p.new_server_cert("turnout-2")
        deadline = time.monotonic() + 15
        while peer_serial(s.http_port, p) != second_serial or peer_serial(s.grpc_port, p) != second_serial:
            assert time.monotonic() < deadline, f"not reloaded:\n{s.log()}"
            time.sleep(0.2)
        assert s.alive() and s.proc.pid == pid
        g = triton_grpc(s, p)
        try:
            assert g.is_server_ready()
        finally:
            g.close()

        # a broken file: one log line, the current certificate stays
        failed = s.log().count("TLS reload failed")  # a poll between the key and the cert above fails once
        p.server_cert.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
        deadline = time.monotonic() + 15
        while s.log().count("TLS reload failed") == failed:
            assert time.monotonic() < deadline, s.log()
            time.sleep(0.2)
        time.sleep(1.0)  # several more polls: the same broken file is not retried
        assert s.log().count("TLS reload failed") == failed + 1, s.log()
        assert peer_serial(s.http_port, p) == second_serial == peer_serial(s.grpc_port, p)


def test_mtls_with_the_grpcio_transport(tmp_path: Path, pki: tuple[Pki, int]) -> None:
    p, _ = pki
    for s in tls_server(tmp_path, p, "--grpc-transport", "grpcio"):
        g = triton_grpc(s, p)
        try:
            assert g.is_server_ready()
        finally:
            g.close()
        g = triton_grpc(s, p, with_cert=False)
        with pytest.raises(InferenceServerException):
            g.is_server_live(client_timeout=5)
        g.close()
