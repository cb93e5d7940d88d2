"""The per-sender token buckets behind the bus's flood limit (services.runtime.flood)."""

from __future__ import annotations

import pytest

from services.runtime.flood import DEFAULT_BURST, DEFAULT_PER_SECOND, SenderRateLimiter


def test_burst_then_refill_per_sender() -> None:
    lim = SenderRateLimiter(per_second=10, burst=5, report_every=60)
    assert all(lim.admit("node-3", 0.0) for _ in range(5))
    assert not lim.admit("node-3", 0.0)  # the bucket is empty
    assert lim.admit("node-1", 0.0)  # another sender has its own bucket
    assert not lim.admit("node-3", 0.05)  # half a token
    assert lim.admit("node-3", 0.15)  # 1.5 tokens refilled since 0.0, minus the refused half-step
    assert all(lim.admit("node-3", 100.0) for _ in range(5))  # refill caps at the burst
    assert not lim.admit("node-3", 100.0)


def test_one_report_per_interval_with_the_count_over() -> None:
    lim = SenderRateLimiter(per_second=1, burst=1, report_every=10)
    assert lim.report_due("node-3", 0.0) == 0  # nothing over the limit yet
    assert lim.admit("node-3", 0.0)
    assert not lim.admit("node-3", 0.0) and not lim.admit("node-3", 0.0)
    assert lim.report_due("node-3", 0.0) == 2
    assert not lim.admit("node-3", 0.1)
    assert lim.report_due("node-3", 0.1) == 0  # reported less than 10 s ago
    assert not lim.admit("node-3", 0.2)
    assert lim.report_due("node-3", 10.5) == 2  # the two since the last report


def test_config() -> None:
    lim = SenderRateLimiter.from_config({})
    assert (lim.per_second, lim.burst) == (DEFAULT_PER_SECOND, DEFAULT_BURST)
    lim = SenderRateLimiter.from_config({"bus_sender_rate": {"per_second": 5, "burst": 7}})
    assert (lim.per_second, lim.burst) == (5.0, 7.0)
    with pytest.raises(ValueError):
        SenderRateLimiter.from_config({"bus_sender_rate": {"per_second": 0}})
    with pytest.raises(ValueError):
        SenderRateLimiter.from_config({"bus_sender_rate": "fast"})
