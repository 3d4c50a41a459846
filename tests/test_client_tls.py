"""rawrt.client over TLS (wss:// and https://), against rawrt serving TLS itself
(`tls_cert`, `tls_key`) with a certificate made for the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import rawrt
import rawrt.client
from rawrt.client import Message, Unreachable

STEP_S = 5.0


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rawrt test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_wss_and_https_with_the_servers_certificate(
    start_server: Any, tmp_path: Path
) -> None:
    cert, key = _certificate(tmp_path)
    server = await start_server(tls_cert=str(cert), tls_key=str(key))
    assert server.url.startswith("https://")
    trusted = ssl.create_default_context(cafile=str(cert))
    async with asyncio.timeout(STEP_S), rawrt.client.connect(server.url, ssl_context=trusted) as c:
        sub = c.subscribe("news")
        await sub.ready()
        sent = await c.publish("news", {"over": "tls"})
        event = await anext(sub)
    assert isinstance(event, Message) and (event.id, event.data) == (sent, {"over": "tls"})


async def test_an_untrusted_certificate_is_unreachable(start_server: Any, tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path)
    server = await start_server(tls_cert=str(cert), tls_key=str(key))
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        await rawrt.client.connect(f"wss://127.0.0.1:{server.port}").open()
