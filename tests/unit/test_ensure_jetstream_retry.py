"""``Bus.ensure_jetstream(create=True)`` asks again while JetStream cannot answer yet (a cluster that has
just started elects its leaders first: requests time out or answer 503), and gives up with a clear error
once its time is up; it never retries a request JetStream answered."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from services.runtime.bus import Bus, StreamsMissing


class FlakyJetStream:
    """Stream look-ups that fail ``failures`` times with ``error``, then find every stream and bucket."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures = failures
        self.error = error
        self.calls = 0
        self.updates = 0

    async def stream_info(self, name: str) -> Any:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        return SimpleNamespace(config=SimpleNamespace(max_age=None))

    async def update_stream(self, config: Any) -> None:
        self.updates += 1

    async def key_value(self, bucket: str) -> None:
        return None

    async def consumer_info(self, stream: str, name: str) -> Any:  # every durable exists already
        return SimpleNamespace(name=name)


def bus_with(js: FlakyJetStream) -> Bus:
    bus = Bus.__new__(Bus)
    bus.js = js  # type: ignore[assignment]
    bus.cfg = SimpleNamespace(extra={}, nodes=("node-1",))  # type: ignore[assignment]
    return bus


@pytest.mark.parametrize(
    "error",
    [nats.errors.TimeoutError(), nats.js.errors.ServiceUnavailableError(code=503, err_code=10008)],
    ids=["timeout", "503"],
)
def test_creating_waits_for_a_cluster_that_elects_its_leaders(error: Exception) -> None:
    js = FlakyJetStream(failures=3, error=error)
    asyncio.run(bus_with(js).ensure_jetstream(create=True, timeout=30))
    assert js.failures == 0 and js.updates >= 1  # asked again until it answered, then did its work


def test_creating_gives_up_with_a_clear_error() -> None:
    js = FlakyJetStream(failures=10**6, error=nats.errors.TimeoutError())
    with pytest.raises(StreamsMissing, match="did not answer within 1s"):
        asyncio.run(bus_with(js).ensure_jetstream(create=True, timeout=1))


def test_an_answered_request_is_not_retried() -> None:
    js = FlakyJetStream(failures=1, error=nats.js.errors.BadRequestError(code=400, description="bad config"))
    with pytest.raises(nats.js.errors.BadRequestError):
        asyncio.run(bus_with(js).ensure_jetstream(create=True, timeout=30))
    assert js.calls == 1
