"""JSON log lines: one object per line with ``ts``, ``level``, ``service``, ``msg`` and ``fields``.

Usage::

    log = get_logger("consensus")
    log.info("round opened", tx_id=tx_id, threshold=4)

Field names that look like secrets (``secret``, ``password``, ``private``, ``share``, ``token``, ``key``
material...) are redacted, and bytes values are logged only by length.
"""

from __future__ import annotations

import json
import logging as _std
import sys
import time
from typing import Any, TextIO

_SECRET_HINTS = (
    "secret",
    "password",
    "passwd",
    "private",
    "share",
    "token",
    "api_key",
    "apikey",
    "seed",
    "nonce_sk",
)


def _redact(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        lk = k.lower()
        if any(h in lk for h in _SECRET_HINTS):
            out[k] = "[redacted]"
        elif isinstance(v, bytes | bytearray | memoryview):
            out[k] = f"<{len(v)} bytes>"
        elif isinstance(v, str | int | float | bool) or v is None:
            out[k] = v
        elif isinstance(v, list | tuple):
            out[k] = [x if isinstance(x, str | int | float | bool) else repr(x)[:200] for x in v][:50]
        else:
            out[k] = repr(v)[:500]
    return out


class JsonFormatter(_std.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: _std.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "service": getattr(record, "service", None) or self.service,
            "msg": record.getMessage(),
            "fields": _redact(getattr(record, "fields", {}) or {}),
        }
        if record.exc_info and record.exc_info[0] is not None:
            # the exception type and message only: tracebacks can carry local values
            obj["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"[:1000]
        return json.dumps(obj, default=str, separators=(",", ":"))


class Logger:
    """A thin wrapper: ``log.info(msg, **fields)``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._log = _std.getLogger(f"mpcw.{service}")

    def _emit(self, level: int, msg: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._log.isEnabledFor(level):
            self._log.log(level, msg, exc_info=exc, extra={"fields": fields, "service": self.service})

    def debug(self, msg: str, **fields: Any) -> None:
        self._emit(_std.DEBUG, msg, False, fields)

    def info(self, msg: str, **fields: Any) -> None:
        self._emit(_std.INFO, msg, False, fields)

    def warning(self, msg: str, **fields: Any) -> None:
        self._emit(_std.WARNING, msg, False, fields)

    def error(self, msg: str, **fields: Any) -> None:
        self._emit(_std.ERROR, msg, False, fields)

    def exception(self, msg: str, **fields: Any) -> None:
        self._emit(_std.ERROR, msg, True, fields)


def setup_logging(service: str, level: str | int = "INFO", stream: TextIO | None = None) -> Logger:
    """Route every ``logging`` record of the process to stderr (or ``stream``) as JSON lines."""
    handler = _std.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = _std.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    _std.getLogger("nats").setLevel(_std.WARNING)
    _std.Formatter.converter = time.gmtime
    return Logger(service)


def get_logger(service: str) -> Logger:
    return Logger(service)
