"""``KV.watch`` announces "current values done" (None) only after the current values, even when nats-py's
watcher announces it before they arrive (its consumer-info check races the deliveries)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import nats.errors

from services.runtime.bus import KV, KvEntry


@dataclass
class E:
    key: str
    value: bytes
    revision: int
    delta: int
    operation: str | None = None


class FakeWatcher:
    """nats-py's KeyWatcher: ``updates(timeout)`` from a script of (delay, item)."""

    def __init__(self, script: list[tuple[float, E | None]]) -> None:
        self.script = list(script)

    async def updates(self, timeout: float = 5.0) -> E | None:
        if not self.script:
            await asyncio.sleep(timeout)
            raise nats.errors.TimeoutError
        delay, item = self.script[0]
        if delay > timeout:
            self.script[0] = (delay - timeout, item)
            await asyncio.sleep(timeout)
            raise nats.errors.TimeoutError
        await asyncio.sleep(delay)
        self.script.pop(0)
        return item

    async def stop(self) -> None:
        pass


class FakeNatsKV:
    """Opens the scripted watcher in place of ``KvWatcher``."""

    def __init__(self, script: list[tuple[float, E | None]]) -> None:
        self.script = script

    async def watch(self, key: str, include_history: bool = False) -> Any:
        return FakeWatcher(self.script)


async def first_values(script: list[tuple[float, E | None]]) -> list[KvEntry | None]:
    stop = asyncio.Event()
    bus: Any = SimpleNamespace(_stopping=stop, _generation=0, log=None)
    fake = FakeNatsKV(script)
    kv = KV(bus, "rounds", fake)  # type: ignore[arg-type]
    kv._open_watch = lambda key, include_history: fake.watch(key, include_history)  # type: ignore[method-assign]
    out: list[KvEntry | None] = []
    async for e in kv.watch(stop=stop):
        out.append(e)
        if e is None:
            stop.set()
    return out


async def test_values_announced_done_too_early_still_come_before_the_marker() -> None:
    got = await first_values(
        [(0, None), (0.01, E("a", b"1", 1, delta=2)), (0, E("b", b"2", 2, 1)), (0, E("c", b"3", 3, 0))]
    )
    assert [e.key if e else None for e in got] == ["a", "b", "c", None]


async def test_the_usual_order_is_kept() -> None:
    got = await first_values([(0, E("a", b"1", 1, delta=1)), (0, E("b", b"2", 2, 0)), (0, None)])
    assert [e.key if e else None for e in got] == ["a", "b", None]


async def test_an_empty_bucket_is_announced_after_the_grace_period() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await first_values([(0, None)]) == [None]
    assert loop.time() - t0 < 1.0
