"""How many signing attempts of each spend a signer node has taken nonces for, durable before it signs.

A coordinator (honest or not) names the attempt and the nonces; without a cap, one that keeps sending
new attempts of an approved spend would have the node spend a pooled nonce on each until the pool is
empty. The node counts, per ``tx_id``, the distinct sessions it took nonces for and refuses (taking no
nonce) once :data:`DEFAULT_MAX_ATTEMPTS` are counted. Consensus makes at most that many attempts of a
spend (``MAX_ATTEMPTS`` in :mod:`services.consensus.service`), so an honest one never meets the cap.

The count survives a restart: ``<node dir>/signing_attempts.jsonl`` holds one line ``{"tx_id", "session_id",
"ts_ms"}`` per counted attempt (:mod:`services.signer.synced_lines`), written and synced before the
attempt's nonces are taken, in the same batch (one ``fdatasync`` per signing batch).
"""

from __future__ import annotations

import time
from pathlib import Path

from services.signer.synced_lines import SyncedLines

DEFAULT_MAX_ATTEMPTS = 5  # cluster.json ``max_signing_attempts`` overrides it
CONFIG_KEY = "max_signing_attempts"


class SigningAttempts:
    def __init__(self, path: Path) -> None:
        self._lines = SyncedLines(path)
        self._sessions: dict[str, set[str]] = {}
        for d in self._lines.loaded:
            tx_id, session_id = d.get("tx_id"), d.get("session_id")
            if isinstance(tx_id, str) and isinstance(session_id, str):
                self._sessions.setdefault(tx_id, set()).add(session_id)
        self._lines.loaded = []

    def count(self, tx_id: str) -> int:
        """The sessions of ``tx_id`` counted so far."""
        return len(self._sessions.get(tx_id, ()))

    def counted(self, tx_id: str, session_id: str) -> bool:
        return session_id in self._sessions.get(tx_id, ())

    def record(self, attempts: list[tuple[str, str]]) -> None:
        """Count these ``(tx_id, session_id)`` (durably, one sync for the lot); already counted ones are
        skipped."""
        now = int(time.time() * 1000)
        fresh: list[tuple[str, str]] = []
        for tx_id, session_id in attempts:
            if not self.counted(tx_id, session_id) and (tx_id, session_id) not in fresh:
                fresh.append((tx_id, session_id))
        self._lines.append([{"tx_id": t, "session_id": s, "ts_ms": now} for t, s in fresh])
        for tx_id, session_id in fresh:
            self._sessions.setdefault(tx_id, set()).add(session_id)

    def close(self) -> None:
        self._lines.close()
