"""A signer node's vote journal: every vote it cast, durable before the vote is published.

A replayed request re-sends the recorded vote (never a different one, even if the policy changed since),
and the daily limit counts the recorded approvals.

On disk: ``<node dir>/votes.jsonl``, one JSON object per line (:mod:`services.signer.synced_lines`: a
batch of votes is one write and one ``fdatasync`` into a preallocated file).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

from services.signer.synced_lines import GROW_BYTES, SyncedLines

__all__ = ["GROW_BYTES", "JournalEntry", "VoteJournal"]


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
        self._lines = SyncedLines(path)
        self.entries: dict[str, JournalEntry] = {}
        for d in self._lines.loaded:
            self.entries[d["tx_id"]] = JournalEntry(**d)
        self._lines.loaded = []
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
        self._lines.append([e.__dict__ for e in entries])
        for e in entries:
            self.entries[e.tx_id] = e
            if e.approve:
                self._window.append((e.ts_ms, e.amount))
                self._window_sum += e.amount

    def close(self) -> None:
        self._lines.close()
