"""The files rawrt serves from its own package: the browser client and the demo page.

Each file is read once, when the router is built, and never again: the bytes, their ETag (a
hash of them) and the answers are fixed for the life of the process, so serving one costs what
answering `/healthz` does. Browsers revalidate (`Cache-Control: no-cache`) and get 304 while the
file is unchanged, so a page picks up a new rawrt.js after an upgrade without a stale cache.

RFC 9110 §13.1.2: "An origin server that receives an If-None-Match header field MUST NOT
perform the requested method if the condition evaluates to false", evaluated with the weak
comparison: the list matches when any entry, with its `W/` removed, equals the current ETag,
or when it is `*`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources

from rawrt.wire import http

__all__ = ["Asset", "load_asset"]


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # a strong validator, quoted as it travels

    def answer(self, if_none_match: bytes | None, headers: http.Headers, keep_alive: bool) -> bytes:
        """200 with the file, or 304 when the client's copy is this one."""
        common = [*headers, ("ETag", self.etag), ("Cache-Control", "no-cache")]
        if if_none_match is not None and self._matches(if_none_match):
            return http.response(304, headers=common, keep_alive=keep_alive)
        return http.response(
            200, self.body, content_type=self.content_type, headers=common, keep_alive=keep_alive
        )

    def _matches(self, if_none_match: bytes) -> bool:
        tags = [t.strip() for t in if_none_match.decode("latin-1").split(",")]
        return any(t == "*" or t.removeprefix("W/") == self.etag for t in tags)


def load_asset(name: str, content_type: str) -> Asset:
    """The file `name` of rawrt/static, read now."""
    body = (resources.files("rawrt") / "static" / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, content_type, etag)
