"""A file of JSON lines, each batch durable (``fdatasync``) before its caller acts on it: the storage of a
signer's vote journal and of its signing-attempt counts.

The file holds one JSON object per line, followed by zero bytes up to the end of the file. It grows a
chunk of zeros at a time (written, not merely allocated, and fsynced once per chunk), and a batch of lines
is written over the zeros and made durable with ``fdatasync``. Writing over blocks the file already has
changes no metadata, so the sync needs no filesystem-journal commit and does not queue behind the other
processes' syncs; an append that grew the file would need one every time.

Reading stops at the first zero byte. A crash in the middle of a write can leave a torn last line, or
(blocks reach the disk in any order) bytes after a hole of zeros; the caller never acted on either (it
waits for the sync), so on open everything after the last complete line is zeroed again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

GROW_BYTES = 1 << 20  # zeros added at a time


class SyncedLines:
    """Open (or create, 0600) ``path``; :attr:`loaded` holds the objects of its complete lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        raw = _read_all(self._fd)
        self._size = len(raw)
        used = raw.find(b"\0")
        used = len(raw) if used < 0 else used
        self._end = raw.rfind(b"\n", 0, used) + 1  # after the last complete line
        self.loaded: list[dict[str, Any]] = []
        for line in raw[: self._end].decode(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue  # an older version's torn line, since appended to: never acted on
            if isinstance(obj, dict):
                self.loaded.append(obj)
        if raw[self._end :].strip(b"\0"):  # what a crash left after the last complete line
            os.pwrite(self._fd, bytes(self._size - self._end), self._end)
            os.fdatasync(self._fd)

    def append(self, objs: list[dict[str, Any]]) -> None:
        """Durably (one sync for the lot)."""
        if not objs:
            return
        data = "".join(json.dumps(o) + "\n" for o in objs).encode()
        if self._end + len(data) > self._size:
            self._grow(self._end + len(data))
        os.pwrite(self._fd, data, self._end)
        os.fdatasync(self._fd)
        self._end += len(data)

    def _grow(self, needed: int) -> None:
        size = self._size
        while size < needed:
            size += GROW_BYTES
        os.pwrite(self._fd, bytes(size - self._size), self._size)
        os.fsync(self._fd)  # the new size and blocks: the one metadata commit per chunk
        self._size = size

    def close(self) -> None:
        os.close(self._fd)


def _read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)
