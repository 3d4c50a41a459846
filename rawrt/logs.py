"""Log lines: text for people, JSON for collectors, and the opt-in access log.

Theory of operation
-------------------
Everything rawrt logs goes through the `rawrt` logger; `configure()` gives the root logger
one handler on stderr whose formatter is chosen by `--log-format`: `text` (a timestamp, the
level, the message) or `json` (one object per line: `time`, `level`, `logger`, `message`, and
an access line's fields). Both are plain `logging.Formatter`s.

The access log (`--access-log`, off by default) is one line per answered request on the
`rawrt.access` logger: method, path, status, bytes written, duration and client address (the
one the trusted-proxy rules give: rawrt.netpolicy). The path is cut at `?`: a query string
may carry a token (`?token=`), and no credential may ever reach a log line. Headers, bodies
and WebSocket messages are never logged. A request handed to a transport (a WebSocket, an
event stream, a parked poll) is logged when it is handed over, with the status it starts
with and the bytes of the response head written so far (0 when a transport writes it).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "access", "configure"]

ACCESS_LOGGER = "rawrt.access"
_access_log = logging.getLogger(ACCESS_LOGGER)
_TEXT_FORMAT = "%(asctime)s rawrt %(levelname)s %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per line; an access line adds its fields (`extra={"access": ...}`)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "access", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, log_format: str) -> None:
    """Log to stderr at `level`, as `text` or `json` lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def access(
    method: bytes, target: bytes, status: int, nbytes: int, duration_s: float, client: str
) -> None:
    """Log one answered request (the caller checks `--access-log`)."""
    path = target.partition(b"?")[0].decode("latin-1")
    verb = method.decode("latin-1")
    ms = round(duration_s * 1000, 3)
    fields = {
        "method": verb,
        "path": path,
        "status": status,
        "bytes": nbytes,
        "duration_ms": ms,
        "client": client,
    }
    _access_log.info(
        "%s %s %d %dB %.3fms %s",
        verb,
        path,
        status,
        nbytes,
        ms,
        client or "-",
        extra={"access": fields},
    )
