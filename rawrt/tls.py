"""rawrt's own TLS: the one `ssl.SSLContext` its listener serves https and wss with.

It is built once, when the server starts, from the certificate chain and key files the
configuration names, and shared by every connection. Everything about TLS itself is the `ssl`
module's: this file only chooses. It starts from `ssl.create_default_context` for a server
(Python's vetted ciphers, no compression, no renegotiation), refuses anything older than
TLS 1.2 (RFC 8996 deprecates 1.0 and 1.1), and offers ALPN `http/1.1` alone (RFC 7301),
because rawrt speaks no HTTP/2 and a WebSocket upgrade exists only in HTTP/1.1.

A file that cannot be read, that is not PEM, or a key that does not belong to the certificate
is a ConfigError raised before anything listens, with a sentence saying which. An encrypted
key is refused too: OpenSSL would otherwise stop and prompt for its passphrase on the
terminal, which a server under a supervisor does not have.
"""

from __future__ import annotations

import ssl

from rawrt.errors import ConfigError

__all__ = ["ALPN", "server_context"]

ALPN = ["http/1.1"]


class _EncryptedKey(Exception):
    """Raised from the passphrase callback: rawrt never prompts for one."""


def _no_passphrase() -> bytes:
    raise _EncryptedKey


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context for `cert_file` (PEM, the chain from the leaf up) and `key_file`."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(ALPN)
    for name, path in (("tls_cert", cert_file), ("tls_key", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"{name}: cannot read {path!r}: {exc.strerror}") from None
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            f"tls_key: {key_file!r} is encrypted; give rawrt an unencrypted key"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(
            f"tls_cert/tls_key: {_reason(exc)} ({cert_file!r}, {key_file!r})"
        ) from None
    return context


def _reason(exc: ssl.SSLError) -> str:
    """OpenSSL's reason in words: a key that is not the certificate's, or unreadable PEM."""
    if exc.reason == "KEY_VALUES_MISMATCH":
        return "the key does not belong to the certificate"
    return f"not a PEM certificate chain and private key ({exc.reason or exc})"
