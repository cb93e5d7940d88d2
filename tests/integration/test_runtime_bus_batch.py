"""``Bus.consume_batch`` against a real TLS JetStream server: valid messages in stream order in one call,
invalid ones left out, acks only after the handler returned, nak + redelivery on failure,
poison termination, and ``resume_from`` resetting the durable to a given sequence."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from services.runtime.bus import Bus, Received

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="session")]


class Ping(msgspec.Struct, frozen=True):
    n: int


REG: dict[str, type[msgspec.Struct]] = {"Ping": Ping}
BusFactory = Callable[..., Awaitable[Bus]]


async def wait_for(pred: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_batches_in_order_invalid_dropped_and_reported(bus_factory: BusFactory) -> None:
    n1 = await bus_factory("node-1", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    tx = uuid.uuid4().hex[:12]
    for i in range(20):
        await n1.publish(f"vote.{tx}.node-1", Ping(n=i), f"{tx}-{i}")
    # an envelope node-1 signed for another subject: invalid on this one
    await n1.publish_raw(f"vote.{tx}.node-1", n1.seal(f"vote.{tx}.other", Ping(n=99), "x"), f"{tx}-bad")
    for i in range(20, 30):
        await n1.publish(f"vote.{tx}.node-1", Ping(n=i), f"{tx}-{i}")
    batches: list[list[Received]] = []

    async def handler(recs: list[Received]) -> None:
        batches.append(recs)

    task = cons.start_batch_consumer(f"vote.{tx}.*", f"b-{tx}", handler, batch=8)
    await wait_for(lambda: sum(len(b) for b in batches) == 30)
    await asyncio.sleep(0.3)
    got = [r.payload.n for b in batches for r in b]
    assert got == list(range(30))
    assert all(len(b) <= 8 for b in batches)
    seqs = [r.seq for b in batches for r in b]
    assert seqs == sorted(seqs)
    info = await cons.js.consumer_info("VOTE", f"b-{tx}")
    assert info.num_ack_pending == 0 and info.config.max_ack_pending == 8
    await cons.stop_consuming()
    assert task.done()


async def test_linger_gathers_a_trickle_into_one_batch(bus_factory: BusFactory) -> None:
    """Messages published 20 ms apart: without linger each is a batch of its own; with a linger longer
    than the trickle they arrive as one batch (up to ``batch``)."""
    n1 = await bus_factory("node-1", registry=REG)
    sizes: dict[str, list[int]] = {"plain": [], "linger": []}
    for kind, linger in (("plain", 0.0), ("linger", 1.5)):
        cons = await bus_factory("consensus", registry=REG)
        tx = uuid.uuid4().hex[:12]
        got = sizes[kind]

        async def handler(recs: list[Received], got: list[int] = got) -> None:
            got.append(len(recs))

        task = cons.start_batch_consumer(f"vote.{tx}.*", f"l-{tx}", handler, batch=64, linger=linger)
        await asyncio.sleep(0.3)  # the consumer is waiting before the first message
        for i in range(10):
            await n1.publish(f"vote.{tx}.node-1", Ping(n=i), f"{tx}-{i}")
            await asyncio.sleep(0.02)
        await wait_for(lambda got=got: sum(got) == 10)
        await cons.stop_consuming()
        assert task.done()
    assert len(sizes["plain"]) >= 5, sizes
    assert sizes["linger"] == [10], sizes


async def test_failure_naks_all_then_redelivers_and_poison(bus_factory: BusFactory) -> None:
    n2 = await bus_factory("node-2", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    tx = uuid.uuid4().hex[:12]
    for i in range(3):
        await n2.publish(f"vote.{tx}.node-2", Ping(n=i), f"{tx}-{i}")
    calls: list[list[int]] = []

    async def flaky(recs: list[Received]) -> None:
        calls.append([r.payload.n for r in recs])
        if len(calls) == 1:
            raise RuntimeError("database down")

    stop = asyncio.Event()
    t = asyncio.create_task(
        cons.consume_batch(f"vote.{tx}.*", f"f-{tx}", flaky, batch=10, nak_delay=0.1, stop=stop)
    )
    await wait_for(lambda: {n for c in calls[1:] for n in c} == {0, 1, 2})
    # the failed batch (all three, or the first of them if the others arrived a moment later) was not
    # acked: every one of its messages came back, in stream order
    later = [n for c in calls[1:] for n in c]
    assert calls[0] == [0, 1, 2][: len(calls[0])] and calls[0]
    assert [n for n in later if n in calls[0]] == calls[0]
    stop.set()
    await t

    # always failing: terminated after poison_after deliveries
    tx2 = uuid.uuid4().hex[:12]
    await n2.publish(f"vote.{tx2}.node-2", Ping(n=7), f"{tx2}-7")
    deliveries: list[int] = []

    async def broken(recs: list[Received]) -> None:
        deliveries.append(recs[0].num_delivered)
        raise RuntimeError("bug")

    stop2 = asyncio.Event()
    t2 = asyncio.create_task(
        cons.consume_batch(
            f"vote.{tx2}.*", f"p-{tx2}", broken, batch=4, nak_delay=0.05, poison_after=3, stop=stop2
        )
    )
    await wait_for(lambda: len(deliveries) >= 3)
    await asyncio.sleep(1.0)
    assert deliveries == [1, 2, 3]
    stop2.set()
    await t2


async def test_cancelled_handler_acks_nothing_and_resume_from(bus_factory: BusFactory) -> None:
    n3 = await bus_factory("node-3", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    tx = uuid.uuid4().hex[:12]
    acks = [await n3.publish(f"vote.{tx}.node-3", Ping(n=i), f"{tx}-{i}") for i in range(6)]
    entered = asyncio.Event()

    async def stuck(recs: list[Received]) -> None:
        entered.set()
        await asyncio.sleep(3600)

    t1 = asyncio.create_task(
        cons.consume_batch(f"vote.{tx}.*", f"r-{tx}", stuck, batch=4, ack_wait=30, stop=asyncio.Event())
    )
    await asyncio.wait_for(entered.wait(), 10)
    t1.cancel()  # a crash mid-batch: nothing acked, 4 deliveries outstanding for 30 s
    with pytest.raises(asyncio.CancelledError):
        await t1
    info = await cons.js.consumer_info("VOTE", f"r-{tx}")
    assert info.num_ack_pending == 4

    # resuming after "our stored position" (the 2nd message): the durable starts over at the 3rd,
    # without waiting for ack_wait, and nothing later overtakes anything earlier
    seen: list[int] = []

    async def record(recs: list[Received]) -> None:
        seen.extend(r.payload.n for r in recs)

    async def position() -> int:
        return acks[1].seq + 1

    stop = asyncio.Event()
    t2 = asyncio.create_task(
        cons.consume_batch(f"vote.{tx}.*", f"r-{tx}", record, batch=4, resume_from=position, stop=stop)
    )
    await wait_for(lambda: len(seen) == 4, timeout=10)
    assert seen == [2, 3, 4, 5]
    stop.set()
    await t2
