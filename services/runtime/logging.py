"""JSON log lines: one object per line with ``ts``, ``level``, ``service``, ``msg`` and ``fields``.

Usage::

    log = get_logger("consensus")
    log.info("round opened", tx_id=tx_id, threshold=4)

Fields whose names look like secrets are redacted whatever their value (hex, bytes, numbers), in nested
dictionaries too (:func:`is_secret_name`); bytes values are logged only by length, at any depth.

Once :func:`setup_logging` ran (every service process), this module's loggers write their lines straight
to the stream's file descriptor, one ``write`` per line, past the ``logging`` machinery (records,
handlers, formatter: most of the cost of a line; a signer logs a line per vote). Records of other
libraries go through ``logging`` to the same stream in the same format. Without the set-up (tests), every
line goes through ``logging``.
"""

from __future__ import annotations

import logging as _std
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import msgspec

from .secrets_dir import private_dir

# a name containing one of these anywhere is secret (``secret_share``, ``hostkey``, ``nonce_sk``...)
SECRET_WORDS = (
    "secret",
    "password",
    "passwd",
    "passphrase",
    "private",
    "privkey",
    "seckey",
    "secnonce",
    "hostkey",
    "deckey",
    "share",
    "token",
    "apikey",
    "api_key",
    "seed",
    "kek",
    "mnemonic",
    "credential",
    "nonce_sk",
)
# a name with one of these as a whole word is secret (``key``, ``sk``, ``signing_key``), unless another
# word says it is about a key, not the key (``key_id``, ``pubkey``, ``key_count``)
SECRET_TOKENS = frozenset({"key", "keys", "sk", "pw", "pin"})
ABOUT_A_KEY = frozenset({"id", "ids", "pub", "public", "count", "len", "version", "path", "file", "kind"})
_MAX_DEPTH = 4


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` must never be logged (case and ``camelCase`` ignored)."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name).lower()
    if any(w in snake for w in SECRET_WORDS):
        return True
    tokens = set(re.split(r"[^a-z0-9]+", snake))
    return bool(tokens & SECRET_TOKENS) and not tokens & ABOUT_A_KEY


def _plain(x: Any, depth: int = 1) -> Any:
    """A value for a log line: bytes by length, containers redacted inside, other objects by repr."""
    if isinstance(x, str | int | float | bool) or x is None:
        return x
    if isinstance(x, bytes | bytearray | memoryview):
        return f"<{len(x)} bytes>"
    if depth >= _MAX_DEPTH:
        return "<nested>"
    if isinstance(x, dict):
        return {
            str(k): "[redacted]" if is_secret_name(str(k)) else _plain(v, depth + 1)
            for k, v in list(x.items())[:50]
        }
    if isinstance(x, list | tuple | set | frozenset):
        return [_plain(v, depth + 1) for v in list(x)[:50]]
    return repr(x)[:200]


def _redact(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if is_secret_name(k):
            out[k] = "[redacted]"
        elif isinstance(v, dict | list | tuple | set | frozenset):
            out[k] = _plain(v)
        elif isinstance(v, str | int | float | bool | bytes | bytearray | memoryview) or v is None:
            out[k] = _plain(v)
        else:
            out[k] = repr(v)[:500]
    return out


_ENCODER = msgspec.json.Encoder(enc_hook=str)


def _line(ts: float, level: str, service: str, msg: str, fields: dict[str, Any], error: str | None) -> bytes:
    obj: dict[str, Any] = {
        "ts": round(ts, 3),
        "level": level,
        "service": service,
        "msg": msg,
        "fields": _redact(fields),
    }
    if error is not None:
        obj["error"] = error
    return _ENCODER.encode(obj)


def _error_of(exc_info: Any) -> str | None:
    """The exception type and message only: tracebacks can carry local values."""
    if not exc_info or exc_info[0] is None:
        return None
    return f"{exc_info[0].__name__}: {exc_info[1]}"[:1000]


class JsonFormatter(_std.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: _std.LogRecord) -> str:
        return _line(
            record.created,
            record.levelname.lower(),
            getattr(record, "service", None) or self.service,
            record.getMessage(),
            getattr(record, "fields", {}) or {},
            _error_of(record.exc_info),
        ).decode()


class _Sink:
    """Where :class:`Logger` writes once :func:`setup_logging` ran: a file descriptor and a level."""

    def __init__(self, fd: int, level: int) -> None:
        self.fd = fd
        self.level = level

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.fd, view) :]
            except InterruptedError:
                continue
            except OSError:
                return  # the log's destination is gone: losing a line beats crashing the service


_sink: _Sink | None = None
_LEVEL_NAMES = {_std.DEBUG: "debug", _std.INFO: "info", _std.WARNING: "warning", _std.ERROR: "error"}


class Logger:
    """A thin wrapper: ``log.info(msg, **fields)``."""

    def __init__(self, service: str) -> None:
        self.service = service
        self._log = _std.getLogger(f"mpcw.{service}")

    def _emit(self, level: int, msg: str, exc: bool, fields: dict[str, Any]) -> None:
        sink = _sink
        if sink is None:
            if self._log.isEnabledFor(level):
                self._log.log(level, msg, exc_info=exc, extra={"fields": fields, "service": self.service})
            return
        if level < sink.level:
            return
        error = _error_of(sys.exc_info()) if exc else None
        sink.write(_line(time.time(), _LEVEL_NAMES[level], self.service, msg, fields, error) + b"\n")

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
    """Route every ``logging`` record of the process to stderr (or ``stream``) as JSON lines, and this
    module's loggers straight to the stream's file descriptor (when it has one)."""
    global _sink
    out = stream or sys.stderr
    handler = _std.StreamHandler(out)
    handler.setFormatter(JsonFormatter(service))
    root = _std.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    _std.getLogger("nats").setLevel(_std.WARNING)
    _std.Formatter.converter = time.gmtime
    try:
        out.flush()
        _sink = _Sink(out.fileno(), root.getEffectiveLevel())
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor: logging only
        _sink = None
    return Logger(service)


def get_logger(service: str) -> Logger:
    return Logger(service)


def open_log_file(path: Path) -> BinaryIO:
    """``path`` opened for appending, 0600 (an existing file is narrowed to 0600), in a 0700 directory:
    a log names transactions, addresses and peers, for the operator only."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "ab")
