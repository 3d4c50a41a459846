"""rawrt.tls.server_context: built from PEM files made at test time, refused with a sentence."""

from __future__ import annotations

import contextlib
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from support import QUIET_PATCH_WRITER
from support.certs import make_cert

from rawrt.errors import ConfigError
from rawrt.tls import server_context

pytestmark = QUIET_PATCH_WRITER


def test_context_is_tls12_or_newer_with_alpn_http11(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    context = server_context(str(cert.cert), str(cert.key))
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.verify_mode is ssl.CERT_NONE  # no client certificates asked for
    # A real handshake in memory: the client sees ALPN http/1.1 and trusts the certificate.
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = cert.client_context().wrap_bio(to_client, from_client, server_hostname="localhost")
    server = context.wrap_bio(to_server, from_server, server_side=True)
    for _ in range(10):  # bounded: a TLS 1.3 handshake takes two flights each way
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        to_server.write(from_client.read())
        to_client.write(from_server.read())
    assert client.selected_alpn_protocol() == "http/1.1"
    assert client.version() in ("TLSv1.2", "TLSv1.3")


def test_missing_file_is_named(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    with pytest.raises(ConfigError, match=r"tls_key: cannot read .*nowhere\.key"):
        server_context(str(cert.cert), str(tmp_path / "nowhere.key"))
    with pytest.raises(ConfigError, match="tls_cert: cannot read"):
        server_context(str(tmp_path / "nowhere.crt"), str(cert.key))


def test_key_of_another_certificate_is_refused(tmp_path: Path) -> None:
    one, other = make_cert(tmp_path, "one"), make_cert(tmp_path, "other")
    with pytest.raises(ConfigError, match="the key does not belong to the certificate"):
        server_context(str(one.cert), str(other.key))


def test_a_file_that_is_not_pem_is_refused(tmp_path: Path) -> None:
    cert = make_cert(tmp_path)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="not a PEM"):
        server_context(str(junk), str(cert.key))


def test_the_command_refuses_an_unusable_certificate_before_listening(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAWRT_")}
    done = subprocess.run(
        [sys.executable, "-m", "rawrt", "--port", "0", "--tls-cert", str(tmp_path / "no.crt"),
         "--tls-key", str(tmp_path / "no.key")],
        capture_output=True, text=True, timeout=30, env=env, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "tls_cert: cannot read" in done.stderr and "listening" not in done.stderr
    assert "Traceback" not in done.stderr


def test_an_encrypted_key_is_refused_without_prompting(tmp_path: Path) -> None:
    cert = make_cert(tmp_path, passphrase=b"secret")
    with pytest.raises(ConfigError, match="encrypted"):
        server_context(str(cert.cert), str(cert.key))
