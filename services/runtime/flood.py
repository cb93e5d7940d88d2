"""Per-sender rate limits on what a service consumes: a node flooding the bus is slowed, then reported.

Each consuming :class:`services.runtime.bus.Bus` keeps one token bucket per verified sender
(:class:`SenderRateLimiter`). A message over the limit is not dropped (nothing is lost): the bus naks it
with a delay, so the server redelivers it later while everyone else's messages go on being handled, and
reports the sender once per ``report_every`` seconds (``flood``, the message as evidence; it carries the
sender's own signature, so it counts toward a ban). Only verified senders are counted: a forged sender
name cannot slow an honest node down.

The limits come from ``cluster.json`` ``"bus_sender_rate": {"per_second": R, "burst": B}`` (defaults
below, generous: at 65 spends/s the busiest sender, consensus, sends a consumer about 200 messages/s).
Pure: the time is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DEFAULT_PER_SECOND = 1000.0
DEFAULT_BURST = 10_000.0
DEFAULT_REPORT_EVERY_S = 60.0
NAK_DELAY_S = 1.0  # how long a message over the limit waits before the server redelivers it


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float
    reported: float | None = None
    over: int = 0  # messages over the limit since the last report


@dataclass(slots=True)
class SenderRateLimiter:
    """Token buckets per sender: ``per_second`` refill, ``burst`` capacity."""

    per_second: float = DEFAULT_PER_SECOND
    burst: float = DEFAULT_BURST
    report_every: float = DEFAULT_REPORT_EVERY_S
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (self.per_second > 0 and self.burst >= 1 and self.report_every > 0):
            raise ValueError("bus_sender_rate: per_second > 0, burst >= 1 and report_every > 0 required")

    @classmethod
    def from_config(cls, extra: dict[str, Any]) -> SenderRateLimiter:
        """From ``cluster.json`` (``ServiceConfig.extra``): ``bus_sender_rate`` or the defaults."""
        conf = extra.get("bus_sender_rate") or {}
        if not isinstance(conf, dict):
            raise ValueError("bus_sender_rate must be an object")
        return cls(
            per_second=float(conf.get("per_second", DEFAULT_PER_SECOND)),
            burst=float(conf.get("burst", DEFAULT_BURST)),
            report_every=float(conf.get("report_every_s", DEFAULT_REPORT_EVERY_S)),
        )

    def admit(self, sender: str, now: float) -> bool:
        """Take one token of ``sender``'s bucket; False when it is empty (the message is over the limit)."""
        b = self._buckets.get(sender)
        if b is None:
            b = self._buckets[sender] = _Bucket(tokens=self.burst, last=now)
        b.tokens = min(self.burst, b.tokens + max(0.0, now - b.last) * self.per_second)
        b.last = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        b.over += 1
        return False

    def report_due(self, sender: str, now: float) -> int:
        """After a refused message: how many were over the limit since the last report, when a report is
        due now (at most one per ``report_every`` seconds per sender), else 0."""
        b = self._buckets.get(sender)
        if b is None or b.over == 0:
            return 0
        if b.reported is not None and now - b.reported < self.report_every:
            return 0
        b.reported, over, b.over = now, b.over, 0
        return over
