"""rawrt.client over TLS (wss:// and https://): rawrt itself speaks plain HTTP, so a small
TLS terminator on 127.0.0.1 (asyncio's own, with a certificate made for the test) relays
each connection to it, as nginx would in front of a deployment."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

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


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        with contextlib.suppress(OSError):
            for _ in range(1_000_000):  # bounded: every turn moves bytes or ends
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tls_front(port: int, cert: Path, key: Path) -> AsyncIterator[int]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    relays: set[asyncio.Task[object]] = set()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        task = asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        relays.add(task)
        await task

    listener = await asyncio.start_server(relay, "127.0.0.1", 0, ssl=context)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)
        await listener.wait_closed()


async def test_wss_and_https_with_the_servers_certificate(
    server: rawrt.Server, tmp_path: Path
) -> None:
    cert, key = _certificate(tmp_path)
    trusted = ssl.create_default_context(cafile=str(cert))
    async with tls_front(server.port, cert, key) as port:
        url = f"https://127.0.0.1:{port}"
        async with asyncio.timeout(STEP_S), rawrt.client.connect(url, ssl_context=trusted) as c:
            sub = c.subscribe("news")
            await sub.ready()
            sent = await c.publish("news", {"over": "tls"})
            event = await anext(sub)
            await c.close()
    assert isinstance(event, Message) and (event.id, event.data) == (sent, {"over": "tls"})


async def test_an_untrusted_certificate_is_unreachable(
    server: rawrt.Server, tmp_path: Path
) -> None:
    cert, key = _certificate(tmp_path)
    async with tls_front(server.port, cert, key) as port:
        with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
            await rawrt.client.connect(f"wss://127.0.0.1:{port}").open()
