"""A signer node's vote journal: every vote it cast, durable before the vote is published.

A replayed request re-sends the recorded vote (never a different one, even if the policy changed since),
and the daily limit counts the recorded approvals.

On disk (``<node dir>/votes.jsonl``): one JSON object per line, followed by zero bytes up to the end of
the file. The file grows a chunk of zeros at a time (written, not merely allocated, and fsynced once per
chunk), and a batch of votes is written over the zeros and made durable with ``fdatasync``. Writing over
blocks the file already has changes no metadata, so the sync needs no filesystem-journal commit and does
not queue behind the other processes' syncs; an append that grew the file would need one every time.

Reading stops at the first zero byte. A crash in the middle of a write can leave a torn last line, or
(blocks reach the disk in any order) bytes after a hole of zeros; neither vote was published (publishing
waits for the sync), so on open everything after the last complete line is zeroed again.
"""

from __future__ import annotations

import collections
import json
import os
from dataclasses import dataclass
from pathlib import Path

GROW_BYTES = 1 << 20  # zeros added at a time (a vote line is ~200 bytes)


@dataclass
class JournalEntry:
    tx_id: str
    approve: bool
    amount: int
    ts_ms: int
    sighashes: list[str]
    reasons: list[str]
    policy_version: int = 0  # the policy the decision was made under (a replayed vote repeats it)


class VoteJournal:
    """Append-only record of this node's votes: replays re-send the same vote; daily limits count it.

    The file stays open (one write and one ``fdatasync`` per batch). Approvals inside the daily window
    are also kept in time order with their running total, so the daily limit check does not scan the
    whole history (:meth:`spent_since` with a ``since`` that only grows, as the signer calls it).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, JournalEntry] = {}
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        raw = _read_all(self._fd)
        self._size = len(raw)
        used = raw.find(b"\0")
        used = len(raw) if used < 0 else used
        self._end = raw.rfind(b"\n", 0, used) + 1  # after the last complete line
        for line in raw[: self._end].decode(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except ValueError:
                continue  # an older version's torn line, since appended to: that vote was never sent
            self.entries[d["tx_id"]] = JournalEntry(**d)
        if raw[self._end :].strip(b"\0"):  # what a crash left after the last complete line
            os.pwrite(self._fd, bytes(self._size - self._end), self._end)
            os.fdatasync(self._fd)
        approved = sorted((e.ts_ms, e.amount) for e in self.entries.values() if e.approve)
        self._window: collections.deque[tuple[int, int]] = collections.deque(approved)
        self._window_sum = sum(amount for _, amount in approved)

    def spent_since(self, since_ms: int) -> int:
        """Approved amounts with ``ts_ms >= since_ms``; approvals before ``since_ms`` are dropped for good,
        so ``since_ms`` must not go back."""
        while self._window and self._window[0][0] < since_ms:
            self._window_sum -= self._window.popleft()[1]
        return self._window_sum

    def record(self, entries: list[JournalEntry]) -> None:
        """Durably (one sync for the lot), before the votes are published: after a crash the node
        re-sends the same votes."""
        if not entries:
            return
        data = "".join(json.dumps(e.__dict__) + "\n" for e in entries).encode()
        if self._end + len(data) > self._size:
            self._grow(self._end + len(data))
        os.pwrite(self._fd, data, self._end)
        os.fdatasync(self._fd)
        self._end += len(data)
        for e in entries:
            self.entries[e.tx_id] = e
            if e.approve:
                self._window.append((e.ts_ms, e.amount))
                self._window_sum += e.amount

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
