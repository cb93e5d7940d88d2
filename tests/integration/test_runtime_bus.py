"""The bus against a real TLS JetStream server: de-duplication, ack-after-effect, rejection reports, KV."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from schemas import envelope as E
from services.runtime.bus import Bus, CasConflict, Received
from services.runtime.flood import SenderRateLimiter
from services.runtime.seal import IdentityKeys, seal


class Ping(msgspec.Struct, frozen=True):
    n: int
    text: str = ""


REG: dict[str, type[msgspec.Struct]] = {"Ping": Ping}
BusFactory = Callable[..., Awaitable[Bus]]


def uid() -> str:
    return uuid.uuid4().hex[:12]


async def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def test_publish_consume_and_duplicate(bus_factory: BusFactory) -> None:
    n1 = await bus_factory("node-1", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    tx = uid()
    ack1 = await n1.publish(f"vote.{tx}.node-1", Ping(n=1), f"vote-{tx}-node-1")
    ack2 = await n1.publish(f"vote.{tx}.node-1", Ping(n=1), f"vote-{tx}-node-1")
    assert not ack1.duplicate and ack2.duplicate and ack2.seq == ack1.seq
    got: list[Received] = []

    async def handler(r: Received) -> None:
        got.append(r)

    task = cons.start_consumer(f"vote.{tx}.*", f"c-{tx}", handler)
    await wait_for(lambda: len(got) == 1)
    await asyncio.sleep(0.3)
    assert len(got) == 1
    r = got[0]
    assert r.payload == Ping(n=1) and r.sender == "node-1" and r.seq == ack1.seq and r.stream == "VOTE"
    assert cons.verify_envelope(r.envelope_raw).sender == "node-1"  # certificate material
    await cons.stop_consuming()
    assert task.done()


async def test_ack_only_after_handler_returns(bus_factory: BusFactory) -> None:
    n2 = await bus_factory("node-2", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    tx = uid()
    await n2.publish(f"vote.{tx}.node-2", Ping(n=7), f"m-{tx}")
    entered = asyncio.Event()

    async def stuck(r: Received) -> None:
        entered.set()
        await asyncio.sleep(3600)  # "crashes" before storing its effect

    stop1 = asyncio.Event()
    t1 = asyncio.create_task(cons.consume(f"vote.{tx}.*", f"d-{tx}", stuck, ack_wait=1.0, stop=stop1))
    await asyncio.wait_for(entered.wait(), 10)
    t1.cancel()  # kill the loop mid-handler: no ack
    with pytest.raises(asyncio.CancelledError):
        await t1

    seen: list[Received] = []

    async def ok(r: Received) -> None:
        seen.append(r)

    cons2 = await bus_factory("consensus", registry=REG)
    cons2.start_consumer(f"vote.{tx}.*", f"d-{tx}", ok, ack_wait=1.0)
    await wait_for(lambda: len(seen) == 1)
    assert seen[0].payload == Ping(n=7) and seen[0].num_delivered == 2
    await asyncio.sleep(1.5)  # acked now: not delivered a third time
    assert len(seen) == 1


async def test_handler_failure_redelivers_then_poison(bus_factory: BusFactory) -> None:
    n3 = await bus_factory("node-3", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    mon = await bus_factory("monitor", registry=REG)
    tx = uid()
    ack = await n3.publish(f"vote.{tx}.node-3", Ping(n=3), f"m-{tx}")
    attempts: list[int] = []

    async def failing(r: Received) -> None:
        attempts.append(r.num_delivered)
        raise RuntimeError("database down")

    reports: list[E.BusRejection] = []

    async def on_violation(r: Received) -> None:
        if isinstance(r.payload, E.BusRejection) and r.payload.subject == f"vote.{tx}.node-3":
            reports.append(r.payload)

    cons.start_consumer(f"vote.{tx}.*", f"p-{tx}", failing, nak_delay=0.05, poison_after=3)
    mon.start_consumer("node.violation.node-3", f"mon-{tx}", on_violation, deliver_policy="new")
    await wait_for(lambda: len(reports) == 1)
    assert attempts == [1, 2, 3]
    assert (
        reports[0].kind == "poison"
        and reports[0].stream_seq == ack.seq
        and reports[0].reporter == "consensus"
    )


async def test_invalid_messages_dropped_and_reported(bus_factory: BusFactory, pki: object) -> None:
    n1 = await bus_factory("node-1", registry=REG)
    admin = await bus_factory("admin", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    mon = await bus_factory("monitor", registry=REG)
    tx = uid()
    subj1 = f"vote.{tx}.node-1"
    # 1. malformed bytes
    await n1.publish_raw(subj1, b"\x00not an envelope", f"bad1-{tx}")
    # 2. forged: claims node-1, signed with node-3's key
    k3 = IdentityKeys.load(n1.cfg.data_dir, "node-3")
    forged = seal(
        IdentityKeys(name="node-1", signing=k3.signing, exchange=k3.exchange),
        n1.identities,
        subject=subj1,
        type_name="Ping",
        payload=msgspec.msgpack.encode(Ping(n=666)),
        msg_id=f"bad2-{tx}",
    )
    await n1.publish_raw(subj1, E.encode(forged), f"bad2-{tx}")
    # 3. node-2's genuine envelope on node-1's subject (broker allows admin to put it there)
    n2 = await bus_factory("node-2", registry=REG)
    await admin.publish_raw(subj1, n2.seal(subj1, Ping(n=2), f"bad3-{tx}"), f"bad3-{tx}")
    # 4. unknown payload type
    await n1.publish(
        subj1, E.BusRejection(offender="x", kind="y", detail="", reporter="", subject=""), f"t-{tx}"
    )
    # 5. node-1's genuine message re-published by node-3 on its own subject: node-3 moved it, and it is
    # node-3 that is reported (blaming node-1 would let node-3 get an honest node banned)
    n3 = await bus_factory("node-3", registry=REG)
    subj3 = f"vote.{tx}.node-3"
    await n3.publish_raw(subj3, n1.seal(subj1, Ping(n=7), f"moved-{tx}"), f"moved-{tx}")
    # 6. a good one
    await n1.publish(subj1, Ping(n=1), f"good-{tx}")

    got: list[Received] = []
    reports: list[tuple[str, E.BusRejection]] = []

    async def handler(r: Received) -> None:
        got.append(r)

    async def on_violation(r: Received) -> None:
        if isinstance(r.payload, E.BusRejection) and r.payload.subject in (subj1, subj3):
            reports.append((r.subject, r.payload))

    mon.start_consumer("node.violation.*", f"mon-{tx}", on_violation, deliver_policy="all")
    cons.start_consumer(f"vote.{tx}.*", f"v-{tx}", handler, registry=REG)
    await wait_for(lambda: len(got) >= 1 and len(reports) >= 4)
    await asyncio.sleep(0.3)
    assert [r.payload for r in got if isinstance(r.payload, Ping)] == [Ping(n=1)]
    kinds = {rep.kind: (subject, rep) for subject, rep in reports}
    assert kinds["malformed"][0] == "node.violation.unknown"
    assert kinds["bad-signature"][0] == "node.violation.unknown"
    assert "claimed" in kinds["bad-signature"][1].detail
    assert kinds["sender-not-allowed"][0] == "node.violation.node-2"  # verified: attributable
    assert kinds["subject-mismatch"][0] == "node.violation.node-3", kinds["subject-mismatch"]
    assert "signed by node-1" in kinds["subject-mismatch"][1].detail
    assert all(rep.reporter == "consensus" for _, rep in reports)
    assert kinds["malformed"][1].evidence == b"\x00not an envelope"


async def test_point_to_point_encrypted(bus_factory: BusFactory) -> None:
    n1 = await bus_factory("node-1", registry=REG)
    n2 = await bus_factory("node-2", registry=REG)
    mon = await bus_factory("monitor", registry=REG)
    sess = uid()
    subj = f"proto.frost.{sess}.1.node-1.node-2"
    await n1.publish(subj, Ping(n=42, text="secret-share-material"), f"p-{sess}", to="node-2")
    msg = await n1.js.get_msg("PROTO", subject=subj, direct=False)  # type: ignore[call-arg]
    assert b"secret-share-material" not in (msg.data or b"")
    mine: list[Received] = []
    theirs: list[Received] = []

    async def h2(r: Received) -> None:
        mine.append(r)

    async def hm(r: Received) -> None:
        theirs.append(r)

    n2.start_consumer(f"proto.*.{sess}.*.*.node-2", f"n2-{sess}", h2)
    mon.start_consumer(f"proto.*.{sess}.>", f"m-{sess}", hm)
    await wait_for(lambda: len(mine) == 1 and len(theirs) == 1)
    assert mine[0].payload == Ping(n=42, text="secret-share-material")
    assert theirs[0].payload is None and theirs[0].sender == "node-1"


async def test_kv_cas(bus_factory: BusFactory) -> None:
    cons = await bus_factory("consensus")
    kv = await cons.kv("rounds")
    key = f"r{uid()}"
    assert await kv.get(key) is None
    rev1 = await kv.create(key, b"open")
    with pytest.raises(CasConflict):
        await kv.create(key, b"again")
    rev2 = await kv.update_cas(key, Ping(n=1), rev1)
    with pytest.raises(CasConflict) as ei:
        await kv.update_cas(key, b"stale writer", rev1)
    assert ei.value.expected == rev1 and "no longer at revision" in str(ei.value)
    e = await kv.get(key)
    assert e is not None and e.revision == rev2 and e.decode(Ping) == Ping(n=1)
    # two writers race on the same revision: exactly one wins
    results = await asyncio.gather(
        *(kv.update_cas(key, f"w{i}".encode(), rev2) for i in range(5)), return_exceptions=True
    )
    assert sum(not isinstance(r, Exception) for r in results) == 1
    assert sum(isinstance(r, CasConflict) for r in results) == 4


async def test_an_existing_consumer_gets_the_current_ack_wait(bus_factory: BusFactory) -> None:
    """A durable made by an older version keeps its position but takes the ack wait asked for now."""
    n2 = await bus_factory("node-2", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    tx = uid()
    seen: list[int] = []

    async def note(r: Received) -> None:
        seen.append(r.payload.n)

    for n, ack_wait in ((1, 10.0), (2, 4.0)):
        await n2.publish(f"vote.{tx}.node-2", Ping(n=n), f"aw-{tx}-{n}")
        stop = asyncio.Event()
        task = asyncio.create_task(
            cons.consume(f"vote.{tx}.*", f"aw-{tx}", note, ack_wait=ack_wait, stop=stop)
        )
        await wait_for(lambda n=n: seen[-1:] == [n])  # type: ignore[misc]
        stop.set()
        await task
        info = await cons.js.consumer_info("VOTE", f"aw-{tx}")
        assert info.config.ack_wait == ack_wait
    assert seen == [1, 2]  # the position was kept: nothing delivered twice


async def test_an_old_bucket_gets_the_current_ttl(bus_factory: BusFactory) -> None:
    """A bucket created by an older version (no TTL) is brought to nats/jetstream.json's TTL when admin
    connects: pool entries and rounds do not pile up for ever."""
    admin = await bus_factory("admin")
    info = await admin.js.stream_info("KV_presig")
    info.config.max_age = 0
    await admin.js.update_stream(info.config)
    assert not (await admin.js.stream_info("KV_presig")).config.max_age
    await admin.ensure_jetstream(create=True)
    assert (await admin.js.stream_info("KV_presig")).config.max_age == 86400
    assert (await admin.js.stream_info("KV_rounds")).config.max_age == 7 * 86400


async def test_kv_watch(bus_factory: BusFactory) -> None:
    cons = await bus_factory("consensus")
    kv = await cons.kv("rounds")  # a bucket consensus may write
    prefix = f"w{uid()}"
    await kv.put(f"{prefix}.a", b"1")
    seen: list[tuple[str, bytes]] = []
    stop = asyncio.Event()

    async def watch() -> None:
        async for e in kv.watch(f"{prefix}.>", stop=stop):
            if e is not None:
                seen.append((e.key, e.value))

    t = asyncio.create_task(watch())
    await wait_for(lambda: len(seen) == 1)
    await kv.put(f"{prefix}.b", b"2")
    await wait_for(lambda: len(seen) == 2)
    stop.set()
    await asyncio.wait_for(t, 5)
    assert seen == [(f"{prefix}.a", b"1"), (f"{prefix}.b", b"2")]


async def test_sequential_publishes_then_one_consumer_gets_all_in_order(bus_factory: BusFactory) -> None:
    """300 votes published one at a time (each acked), then consumed in batches: all, in order (the
    speed of both is measured by loadtest/bench_bus.py)."""
    n4 = await bus_factory("node-4", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    tx = uid()
    count = 300
    for i in range(count):
        await n4.publish(f"vote.{tx}.node-4", Ping(n=i), f"{tx}-{i}")
    got: list[int] = []

    async def h(r: Received) -> None:
        got.append(r.payload.n)

    cons.start_consumer(f"vote.{tx}.*", f"tp-{tx}", h, batch=64)
    await wait_for(lambda: len(got) == count, 30)
    assert got == list(range(count))


async def test_a_deleted_consumer_is_created_again(bus_factory: BusFactory) -> None:
    """The server ends the pull (409 Consumer Deleted): the loop re-creates the durable and goes on."""
    n2 = await bus_factory("node-2", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    admin = await bus_factory("admin")
    tx = uid()
    seen: list[int] = []

    async def note(r: Received) -> None:
        seen.append(r.payload.n)

    cons.start_consumer(f"vote.{tx}.*", f"gone-{tx}", note)
    await n2.publish(f"vote.{tx}.node-2", Ping(n=1), f"gone-{tx}-1")
    await wait_for(lambda: seen == [1])
    await admin.js.delete_consumer("VOTE", f"gone-{tx}")
    await n2.publish(f"vote.{tx}.node-2", Ping(n=2), f"gone-{tx}-2")
    # re-created with deliver_policy "all": the first comes again (handlers are idempotent), then the new
    await wait_for(lambda: 2 in seen, timeout=15)
    assert seen[0] == 1 and seen[-1] == 2


async def test_a_flooding_sender_is_slowed_and_reported_never_dropped(bus_factory: BusFactory) -> None:
    """Over its rate limit a sender's messages are delayed (nak), not dropped: every one arrives in the
    end; a ``flood`` report with its own signed message as evidence names it; others are not slowed."""
    n3 = await bus_factory("node-3", registry=REG)
    n1 = await bus_factory("node-1", registry=REG)
    cons = await bus_factory("consensus", registry=REG)
    mon = await bus_factory("monitor", registry=REG)
    cons.sender_rate = SenderRateLimiter(per_second=20, burst=10, report_every=60)
    tx = uid()
    for i in range(40):
        await n3.publish(f"vote.{tx}.node-3", Ping(n=i), f"flood-{tx}-{i}")
    await n1.publish(f"vote.{tx}.node-1", Ping(n=1000), f"honest-{tx}")

    got: list[Received] = []
    reports: list[E.BusRejection] = []

    async def handler(r: Received) -> None:
        got.append(r)

    async def on_violation(r: Received) -> None:
        if isinstance(r.payload, E.BusRejection) and r.payload.subject == f"vote.{tx}.node-3":
            reports.append(r.payload)

    mon.start_consumer("node.violation.node-3", f"mon-{tx}", on_violation, deliver_policy="all")
    cons.start_consumer(f"vote.{tx}.*", f"v-{tx}", handler, registry=REG)
    await wait_for(lambda: any(r.sender == "node-1" for r in got) and len(reports) >= 1, timeout=10)
    honest_at = next(i for i, r in enumerate(got) if r.sender == "node-1")
    assert honest_at < 40  # not queued behind the flood
    await wait_for(lambda: len({r.payload.n for r in got if r.sender == "node-3"}) == 40, timeout=30)
    [rep] = reports  # one report per interval
    assert rep.kind == "flood" and rep.offender == "node-3" and rep.reporter == "consensus"
    assert "delayed, not dropped" in rep.detail
    assert mon.verify_envelope(rep.evidence).sender == "node-3"  # its own signature: it counts
