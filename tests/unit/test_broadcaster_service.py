"""The broadcaster service against an in-memory bus and a fake chain backend. No servers: each test drives
the handlers directly (``follow_blocks``, ``on_broadcast``, ``on_signed``, ``_broadcast``, ``_claim_final``,
``_fail``) the way the consumers would, and counts the backend requests they make."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import services.broadcaster.service as B
from schemas import kv as K
from schemas.messages import (
    PartialSignatures,
    TxBroadcast,
    TxConfirmed,
    TxFailed,
    TxRequested,
    TxSigned,
    TxSigning,
)
from services.chain.esplora import (
    BroadcastRejected,
    ChainBackendUnavailable,
    TxNotFound,
    TxStatus,
)
from services.runtime.bus import Received, RetryLater
from tests.unit.service_fakes import FakeBus as BaseFakeBus
from tests.unit.service_fakes import received as delivered
from tests.unit.service_fakes import service_context

TXID_A = "a" * 64
TXID_B = "b" * 64
TXID_C = "c" * 64
TXID_D = "d" * 64
T0 = 1_700_000_000_000

# bitcoind's answers, as Esplora relays them
MISSING_OR_SPENT = BroadcastRejected("bad-txns-inputs-missingorspent", -25)
IN_BLOCK_CHAIN = BroadcastRejected("Transaction already in block chain", -27)
ALREADY_IN_MEMPOOL = BroadcastRejected("txn-already-known", -27)
LOW_FEE = BroadcastRejected("min relay fee not met, 100 < 141", -26)

# ---- fakes -----------------------------------------------------------------------------------------------


@dataclass
class FakeBus(BaseFakeBus):
    identity: str = "broadcaster"
    fail_lookups: list[str] = field(default_factory=list)  # subjects whose next lookup times out

    def place(self, subject: str, payload: Any, sender: str) -> None:
        """A message some service (maybe an earlier run of this one) put in the stream."""
        self.published.append((subject, payload, f"placed.{len(self.published)}", sender))

    def last_received(self, subject: str) -> Received | None:
        found = [(p, m, snd) for s, p, m, snd in self.published if s == subject]
        if not found:
            return None
        payload, msg_id, sender = found[-1]
        return received(payload, subject, sender, msg_id)

    def last(self, subject: str) -> Any:
        got = self.last_received(subject)
        return None if got is None else got.payload


class FakeChain:
    """The Esplora client as the broadcaster uses it; every request is counted."""

    def __init__(self, tip: int = 100) -> None:
        self.tip = tip
        self.blocks: dict[int, list[str]] = {}  # height -> txids of the main-chain block there
        self.mempool: set[str] = set()
        self.raw: dict[str, str] = {}  # signed hex -> txid
        self.reject: BroadcastRejected | None = None  # the answer to the next broadcasts
        self.failures: dict[str, int] = {}  # method -> how many of its next calls fail
        self.fail_at: Counter[int] = Counter()  # height -> how many of its next block_hash_at reads fail
        self.calls: Counter[str] = Counter()
        self.heights_read: list[int] = []
        self.broadcasts: list[str] = []

    def _call(self, method: str) -> None:
        self.calls[method] += 1
        if self.failures.get(method, 0) > 0:
            self.failures[method] -= 1
            raise ChainBackendUnavailable(f"{method}: HTTP 503: overloaded")

    def confirmed_at(self, txid: str) -> int | None:
        for height, txids in self.blocks.items():
            if height <= self.tip and txid in txids:
                return height
        return None

    def mine(self, height: int, *txids: str) -> None:
        self.blocks[height] = list(txids)
        self.mempool.difference_update(txids)
        self.tip = max(self.tip, height)

    async def tip_height(self) -> int:
        await asyncio.sleep(0)
        self._call("tip_height")
        return self.tip

    async def block_hash_at(self, height: int) -> str:
        await asyncio.sleep(0)
        self._call("block_hash_at")
        self.heights_read.append(height)
        if self.fail_at[height] > 0:
            self.fail_at[height] -= 1
            raise ChainBackendUnavailable(f"GET /block-height/{height}: HTTP 503: overloaded")
        return f"{height:064x}"

    async def block_txids(self, block_hash: str) -> list[str]:
        await asyncio.sleep(0)
        self._call("block_txids")
        return list(self.blocks.get(int(block_hash, 16), []))

    async def tx_status(self, txid: str) -> TxStatus:
        await asyncio.sleep(0)
        self._call("tx_status")
        height = self.confirmed_at(txid)
        if height is None:
            return TxStatus(False)
        return TxStatus(True, height, f"{height:064x}", 1_700_000_000)

    async def tx(self, txid: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._call("tx")
        if txid not in self.mempool and self.confirmed_at(txid) is None:
            raise TxNotFound(txid)
        return {"txid": txid}

    async def broadcast(self, raw_hex: str) -> str:
        await asyncio.sleep(0)
        self._call("broadcast")
        self.broadcasts.append(raw_hex)
        if self.reject is not None:
            raise self.reject
        txid = self.raw[raw_hex]
        if self.confirmed_at(txid) is None:
            self.mempool.add(txid)
        return txid

    @property
    def http(self) -> int:
        return sum(self.calls.values())


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> FakeBus:
    b = FakeBus()

    async def last_message(_bus: Any, subject: str) -> Received | None:
        await asyncio.sleep(0)
        return b.last_received(subject)

    monkeypatch.setattr(B, "last_message", last_message)
    return b


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain()


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "BLOCK_POLL_S", 0.001)


def broadcaster(bus: FakeBus, chain: FakeChain) -> B.Broadcaster:
    ctx = service_context("broadcaster", bus, esplora_url="http://esplora.invalid")
    b = B.Broadcaster(ctx)
    b.chain = chain  # type: ignore[assignment]
    return b


def received(payload: Any, subject: str, sender: str = "broadcaster", msg_id: str = "m") -> Received:
    return delivered(payload, subject, sender, msg_id)


def signed_tx(chain: FakeChain, tx_id: str, txid: str) -> TxSigned:
    """A signed spend whose raw bytes the fake backend maps to ``txid``."""
    msg = TxSigned(tx_id=tx_id, txid=txid, signed_tx=f"raw-{tx_id}".encode(), attempt=1)
    chain.raw[msg.signed_tx.hex()] = txid
    return msg


def broadcast_rec(tx_id: str, txid: str, sender: str = "broadcaster") -> Received:
    return received(TxBroadcast(tx_id=tx_id, txid=txid), f"tx.broadcast.{tx_id}", sender)


async def deliver(b: B.Broadcaster, rec: Received) -> RetryLater | None:
    """One delivery of ``tx.broadcast``: the RetryLater the handler raised (the message is nak'ed), or None
    when it returned (acked)."""
    try:
        await b.on_broadcast(rec)
    except RetryLater as exc:
        return exc
    return None


def age_watch(b: B.Broadcaster, txid: str) -> None:
    """Pretend the spend was last checked longer than REBROADCAST_AFTER_S ago."""
    b.watching[txid] = time.monotonic() - B.REBROADCAST_AFTER_S - 1


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def following(b: B.Broadcaster) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(b.follow_blocks())
    try:
        yield task
    finally:
        b.ctx.stop.set()
        await asyncio.wait_for(task, 5)  # returns by itself once stop is set; re-raises its errors


def follower_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage() == "following blocks failed; retrying"
    ]


async def put_final(bus: FakeBus, tx_id: str, outcome: str, by: str) -> None:
    kv = await bus.kv("rounds")
    await kv.create(K.final_key(tx_id), K.FinalRecord(outcome=outcome, by=by, at_ms=T0))


# ---- block following -------------------------------------------------------------------------------------


async def test_first_tip_read_starts_there_without_scanning_history(bus: FakeBus, chain: FakeChain) -> None:
    chain.mine(99, TXID_A)
    chain.mine(100, TXID_B)
    b = broadcaster(bus, chain)
    assert (b.scanned_height, b.tip_height) == (-1, 0)
    async with following(b):
        await until(lambda: chain.calls["tip_height"] >= 3)
        assert (b.scanned_height, b.tip_height) == (100, 100)
        assert b.confirmed_in == {}  # blocks 99 and 100 came before: on_broadcast's status read finds them
        assert chain.heights_read == [] and chain.calls["block_txids"] == 0


async def test_a_new_block_is_read_once_and_its_txids_land_in_confirmed_in(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    async with following(b):
        await until(lambda: b.scanned_height == 100)
        chain.mine(101, TXID_A, TXID_B)
        await until(lambda: b.tip_height == 101)
        assert b.confirmed_in == {TXID_A: 101, TXID_B: 101}
        assert b.scanned_height == 101
        reads = chain.calls["tip_height"]
        await until(lambda: chain.calls["tip_height"] >= reads + 3)  # more polls, no new block
        # two reads for the new block, however many polls followed
        assert chain.heights_read == [101] and chain.calls["block_txids"] == 1


async def test_a_gap_of_several_blocks_is_scanned_block_by_block(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    async with following(b):
        await until(lambda: b.scanned_height == 100)
        chain.mine(102, TXID_A)
        chain.mine(104, TXID_B, TXID_C)
        chain.mine(101)
        chain.mine(103)
        chain.tip = 104
        await until(lambda: b.tip_height == 104)
        assert chain.heights_read == [101, 102, 103, 104]
        assert b.confirmed_in == {TXID_A: 102, TXID_B: 104, TXID_C: 104}
        assert b.scanned_height == 104


async def test_a_gap_longer_than_scan_back_reads_only_the_newest_blocks(
    bus: FakeBus, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(B, "SCAN_BACK_BLOCKS", 3)
    b = broadcaster(bus, chain)
    async with following(b):
        await until(lambda: b.scanned_height == 100)
        chain.mine(101, TXID_A)
        chain.mine(110, TXID_B)
        await until(lambda: b.tip_height == 110)
    # the SCAN_BACK_BLOCKS newest heights; the older ones are left to the status read of a late spend
    assert chain.heights_read == [108, 109, 110]  # SCAN_BACK_BLOCKS (3 here) newest blocks
    assert b.confirmed_in == {TXID_B: 110}


async def test_chain_errors_are_logged_and_retried_not_raised(
    bus: FakeBus, chain: FakeChain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    chain.failures["tip_height"] = 2
    b = broadcaster(bus, chain)
    async with following(b) as task:
        await until(lambda: b.scanned_height == 100)
        assert chain.calls["tip_height"] >= 3 and len(follower_warnings(caplog)) == 2
        assert b.confirmed_in == {}  # the first successful read still only sets the start
        # a failure in the middle of a gap: the blocks before it stay scanned, the rest is read next time
        chain.mine(101, TXID_A)
        chain.mine(102, TXID_B)
        chain.mine(103, TXID_C)
        chain.fail_at[102] = 1
        await until(lambda: b.tip_height == 103)
        assert chain.heights_read == [101, 102, 102, 103]
        assert b.confirmed_in == {TXID_A: 101, TXID_B: 102, TXID_C: 103}
        assert len(follower_warnings(caplog)) == 3
        assert "503" in follower_warnings(caplog)[-1].fields["error"]  # type: ignore[attr-defined]
        assert not task.done()
    assert task.exception() is None


async def test_the_follower_returns_when_stop_is_set(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    b.ctx.stop.set()
    await asyncio.wait_for(b.follow_blocks(), 1)
    assert chain.http == 0


# ---- on_broadcast: confirmations -------------------------------------------------------------------------


async def test_a_txid_the_follower_saw_is_confirmed_without_http(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    b.confirmed_in[TXID_A] = 100
    b.tip_height = 102
    b.watching[TXID_A] = time.monotonic()
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
    assert bus.last("tx.confirmed.t1") == TxConfirmed(
        tx_id="t1", txid=TXID_A, block_height=100, confirmations=3
    )
    assert chain.http == 0
    assert TXID_A not in b.watching


async def test_a_block_newer_than_the_tip_read_still_counts_one_confirmation(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    b.confirmed_in[TXID_A] = 105  # the follower is in the middle of a gap: tip_height not updated yet
    b.tip_height = 100
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
    assert bus.last("tx.confirmed.t1").confirmations == 1


async def test_tx_broadcast_from_another_sender_is_ignored(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    b.confirmed_in[TXID_A] = 100
    assert await deliver(b, broadcast_rec("t1", TXID_A, sender="node-1")) is None
    assert bus.published == [] and chain.http == 0


async def test_a_spend_broadcast_while_following_is_not_status_checked(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    b.scanned_height = b.tip_height = 100  # the follower is running
    msg = signed_tx(chain, "t1", TXID_A)
    await b._broadcast(msg)
    assert b.broadcast_done == {"t1": True}
    before = chain.http
    retry = await deliver(b, broadcast_rec("t1", TXID_A))
    assert isinstance(retry, RetryLater) and retry.delay == B.CONFIRMATION_POLL_S
    assert chain.http == before and chain.calls["tx_status"] == 0
    assert TXID_A in b.watching
    # its block is seen by the follower: the next delivery confirms it, still without HTTP
    b.confirmed_in[TXID_A] = 101
    b.tip_height = 101
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
    assert bus.last("tx.confirmed.t1") == TxConfirmed(
        tx_id="t1", txid=TXID_A, block_height=101, confirmations=1
    )
    assert chain.http == before and TXID_A not in b.watching


async def test_the_follower_announces_a_waiting_spend_when_it_reads_its_block(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    async with following(b):
        await until(lambda: b.scanned_height == 100)
        msg = signed_tx(chain, "t1", TXID_A)
        await b._broadcast(msg)
        retry = await deliver(b, broadcast_rec("t1", TXID_A))
        assert isinstance(retry, RetryLater) and b.awaiting == {TXID_A: "t1"}
        chain.mine(101, TXID_A, TXID_B)
        # announced by the follower, not by the waiting tx.broadcast's next delivery
        await until(lambda: bus.last("tx.confirmed.t1") is not None)
        assert bus.last("tx.confirmed.t1") == TxConfirmed(
            tx_id="t1", txid=TXID_A, block_height=101, confirmations=1
        )
        assert b.awaiting == {} and TXID_A not in b.watching
        # that delivery, when it comes back, is acked without publishing again
        published = len(bus.published)
        assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
        assert len(bus.published) == published


async def test_a_spend_broadcast_before_the_follower_started_is_status_checked(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    await b._broadcast(signed_tx(chain, "t1", TXID_A))  # scanned_height is still -1
    assert b.broadcast_done == {"t1": False}
    chain.mine(100, TXID_A)  # confirmed before the follower's first tip read
    b.scanned_height = b.tip_height = 101
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
    assert chain.calls["tx_status"] == 1
    assert bus.last("tx.confirmed.t1") == TxConfirmed(
        tx_id="t1", txid=TXID_A, block_height=100, confirmations=2
    )


async def test_first_sight_of_an_unconfirmed_spend_reads_its_status_once(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    chain.mempool.add(TXID_A)
    for _ in range(5):
        assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)
    assert chain.calls == Counter(tx_status=1)  # later deliveries wait for the follower: no HTTP
    assert TXID_A in b.watching and bus.published == []


async def test_first_sight_of_a_confirmed_spend_publishes_confirmed(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    chain.mine(95, TXID_A)
    b.tip_height = 100
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
    assert chain.calls == Counter(tx_status=1)
    assert bus.last("tx.confirmed.t1") == TxConfirmed(
        tx_id="t1", txid=TXID_A, block_height=95, confirmations=6
    )
    assert TXID_A not in b.watching


async def test_first_sight_before_any_tip_read_counts_the_status_block_as_tip(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)  # tip_height 0: the follower has not read the tip yet
    chain.mine(95, TXID_A)
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
    assert bus.last("tx.confirmed.t1").confirmations == 1


async def test_a_backend_error_on_first_sight_is_raised_and_the_next_delivery_reads_again(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    chain.failures["tx_status"] = 1
    with pytest.raises(ChainBackendUnavailable):
        await b.on_broadcast(broadcast_rec("t1", TXID_A))
    assert TXID_A not in b.watching
    chain.mine(100, TXID_A)
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None
    assert chain.calls["tx_status"] == 2 and isinstance(bus.last("tx.confirmed.t1"), TxConfirmed)


# ---- on_broadcast: a spend the backend forgot ------------------------------------------------------------


async def test_a_dropped_spend_is_broadcast_again_after_rebroadcast_after_s(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    msg = signed_tx(chain, "t1", TXID_A)
    bus.place("tx.signed.t1", msg, "broadcaster")
    assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)  # first sight: watching
    # before REBROADCAST_AFTER_S nothing is asked
    assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)
    assert chain.calls == Counter(tx_status=1)
    age_watch(b, TXID_A)  # the backend lost its mempool meanwhile: it does not know TXID_A
    assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)
    assert chain.calls == Counter(tx_status=2, tx=1, broadcast=1)  # status again, then known?
    assert chain.broadcasts == [msg.signed_tx.hex()]
    assert TXID_A in chain.mempool
    assert time.monotonic() - b.watching[TXID_A] < 5  # checked again just now
    # the next delivery waits another REBROADCAST_AFTER_S
    assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)
    assert chain.calls == Counter(tx_status=2, tx=1, broadcast=1)  # status again, then known?
    assert bus.subjects("t1") == ["tx.signed.t1"]


async def test_rebroadcast_after_is_the_module_constant(
    bus: FakeBus, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(B, "REBROADCAST_AFTER_S", 0.0)
    b = broadcaster(bus, chain)
    msg = signed_tx(chain, "t1", TXID_A)
    bus.place("tx.signed.t1", msg, "broadcaster")
    await deliver(b, broadcast_rec("t1", TXID_A))
    await deliver(b, broadcast_rec("t1", TXID_A))
    assert chain.calls["broadcast"] == 1 and chain.calls["tx"] == 1


async def test_a_dropped_spend_refused_for_good_fails(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    await put_final(bus, "t1", "signed", "broadcaster")
    bus.place("tx.signed.t1", signed_tx(chain, "t1", TXID_A), "broadcaster")
    await deliver(b, broadcast_rec("t1", TXID_A))
    age_watch(b, TXID_A)
    chain.reject = MISSING_OR_SPENT  # its inputs were spent by another transaction
    assert await deliver(b, broadcast_rec("t1", TXID_A)) is None  # acked: no RetryLater
    failed = bus.last("tx.failed.t1")
    assert isinstance(failed, TxFailed)
    assert "bad-txns-inputs-missingorspent" in failed.reason and "code -25" in failed.reason
    assert bus.last("tx.confirmed.t1") is None
    kv = await bus.kv("rounds")
    final = kv.final("t1")
    assert final is not None and final.outcome == "signed"  # the arbiter is not rewritten


@pytest.mark.parametrize(
    "answer",
    [LOW_FEE, BroadcastRejected("mempool full", -26), ALREADY_IN_MEMPOOL, IN_BLOCK_CHAIN],
    ids=["low-fee", "mempool-full", "already-known", "in-block-chain"],
)
async def test_a_dropped_spend_refused_for_now_keeps_waiting(
    bus: FakeBus, chain: FakeChain, answer: BroadcastRejected
) -> None:
    b = broadcaster(bus, chain)
    bus.place("tx.signed.t1", signed_tx(chain, "t1", TXID_A), "broadcaster")
    await deliver(b, broadcast_rec("t1", TXID_A))
    age_watch(b, TXID_A)
    chain.reject = answer
    retry = await deliver(b, broadcast_rec("t1", TXID_A))
    assert isinstance(retry, RetryLater) and retry.delay == B.CONFIRMATION_POLL_S
    assert chain.calls["broadcast"] == 1
    assert bus.last("tx.failed.t1") is None and TXID_A in b.watching


async def test_a_spend_the_chain_still_knows_is_not_broadcast_again(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    bus.place("tx.signed.t1", signed_tx(chain, "t1", TXID_A), "broadcaster")
    chain.mempool.add(TXID_A)
    await deliver(b, broadcast_rec("t1", TXID_A))
    age_watch(b, TXID_A)
    assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)
    assert chain.calls == Counter(tx_status=2, tx=1)
    assert chain.broadcasts == [] and bus.last("tx.failed.t1") is None


async def test_a_dropped_spend_without_a_tx_signed_of_this_service_is_not_broadcast(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    bus.place("tx.signed.t1", signed_tx(chain, "t1", TXID_A), "node-3")  # not the broadcaster's
    await deliver(b, broadcast_rec("t1", TXID_A))
    age_watch(b, TXID_A)
    assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)
    assert chain.calls["broadcast"] == 0


# ---- the final-outcome arbiter ---------------------------------------------------------------------------


async def test_claim_final_creates_the_arbiter_and_is_idempotent(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    assert await b._claim_final("t1", "signed") is True
    kv = await bus.kv("rounds")
    final = kv.final("t1")
    assert final is not None and (final.outcome, final.by) == ("signed", "broadcaster")
    assert kv.writes == [K.final_key("t1")] == ["final.t1"]
    assert await b._claim_final("t1", "signed") is True  # already signed (here or by another instance)
    assert kv.writes == ["final.t1"]  # create-only: not rewritten


async def test_claim_final_loses_to_consensus_failing_first(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    await put_final(bus, "t1", "failed", "consensus")
    assert await b._claim_final("t1", "signed") is False
    kv = await bus.kv("rounds")
    final = kv.final("t1")
    assert final is not None and (final.outcome, final.by) == ("failed", "consensus")


async def test_two_instances_claiming_signed_both_win(bus: FakeBus, chain: FakeChain) -> None:
    a, c = broadcaster(bus, chain), broadcaster(bus, chain)
    won = await asyncio.gather(a._claim_final("t1", "signed"), c._claim_final("t1", "signed"))
    assert list(won) == [True, True]
    kv = await bus.kv("rounds")
    assert kv.writes == ["final.t1"]


async def test_fail_before_signing_publishes_when_it_wins(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    await b._fail("t1", "input 0: aggregate signature does not verify")
    assert bus.last("tx.failed.t1") == TxFailed(
        tx_id="t1", reason="input 0: aggregate signature does not verify"
    )
    kv = await bus.kv("rounds")
    final = kv.final("t1")
    assert final is not None and (final.outcome, final.by) == ("failed", "broadcaster")


async def test_fail_before_signing_publishes_when_already_failed(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    await put_final(bus, "t1", "failed", "consensus")
    await b._fail("t1", "gave up")
    assert bus.last("tx.failed.t1") == TxFailed(tx_id="t1", reason="gave up")


async def test_fail_before_signing_stands_down_when_signed(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    await put_final(bus, "t1", "signed", "broadcaster")
    await b._fail("t1", "signed transaction does not verify")
    assert bus.published == []
    kv = await bus.kv("rounds")
    final = kv.final("t1")
    assert final is not None and final.outcome == "signed"


@pytest.mark.parametrize("existing", [None, "signed", "failed"])
async def test_fail_of_a_signed_spend_publishes_regardless(
    bus: FakeBus, chain: FakeChain, existing: str | None
) -> None:
    b = broadcaster(bus, chain)
    if existing is not None:
        await put_final(bus, "t1", existing, "broadcaster")
    await b._fail("t1", "broadcast rejected: x", signed=True)
    assert bus.last("tx.failed.t1") == TxFailed(tx_id="t1", reason="broadcast rejected: x")
    kv = await bus.kv("rounds")
    assert kv.writes == ([] if existing is None else ["final.t1"])  # the arbiter is not consulted


# ---- _broadcast and on_signed ----------------------------------------------------------------------------


async def test_broadcast_publishes_tx_broadcast(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    await b._broadcast(signed_tx(chain, "t1", TXID_A))
    assert bus.all("tx.broadcast.t1") == [TxBroadcast(tx_id="t1", txid=TXID_A)]
    assert chain.calls == Counter(broadcast=1) and TXID_A in chain.mempool


@pytest.mark.parametrize(
    "answer",
    [
        ALREADY_IN_MEMPOOL,
        IN_BLOCK_CHAIN,
        BroadcastRejected("txn-already-in-mempool", -26),
    ],
    ids=["txn-already-known", "already-in-block-chain", "txn-already-in-mempool"],
)
async def test_a_backend_that_already_has_it_counts_as_broadcast(
    bus: FakeBus, chain: FakeChain, answer: BroadcastRejected
) -> None:
    b = broadcaster(bus, chain)
    chain.reject = answer
    await b._broadcast(signed_tx(chain, "t1", TXID_A))
    assert bus.all("tx.broadcast.t1") == [TxBroadcast(tx_id="t1", txid=TXID_A)]
    assert chain.calls == Counter(broadcast=1)  # the answer is enough: no lookup
    assert "t1" in b.broadcast_done


async def test_a_permanent_rejection_of_a_transaction_the_chain_has_counts_as_broadcast(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    chain.mine(100, TXID_A)  # confirmed, its outputs spent since: bitcoind says missingorspent
    chain.reject = MISSING_OR_SPENT
    await b._broadcast(signed_tx(chain, "t1", TXID_A))
    assert bus.subjects("t1") == ["tx.broadcast.t1"]
    assert chain.calls == Counter(broadcast=1, tx=1)


async def test_a_rejection_for_now_is_retried(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    chain.reject = LOW_FEE
    with pytest.raises(RetryLater) as info:
        await b._broadcast(signed_tx(chain, "t1", TXID_A))
    assert info.value.delay == B.BROADCAST_RETRY_S and "min relay fee" in str(info.value)
    assert bus.published == [] and b.broadcast_done == {}
    assert chain.calls == Counter(broadcast=1, tx=1)


@pytest.mark.parametrize(
    "answer",
    [
        MISSING_OR_SPENT,
        BroadcastRejected("txn-mempool-conflict", -26),
        BroadcastRejected("mandatory-script-verify-flag-failed (Invalid Schnorr signature)", -26),
        BroadcastRejected("bad-txns-in-belowout", -26),
    ],
    ids=["missingorspent", "mempool-conflict", "script-verify", "bad-txns"],
)
async def test_a_permanent_rejection_fails_the_spend(
    bus: FakeBus, chain: FakeChain, answer: BroadcastRejected
) -> None:
    b = broadcaster(bus, chain)
    await put_final(bus, "t1", "signed", "broadcaster")  # as _aggregate left it
    chain.reject = answer
    await b._broadcast(signed_tx(chain, "t1", TXID_A))
    assert bus.subjects("t1") == ["tx.failed.t1"]
    failed = bus.last("tx.failed.t1")
    assert isinstance(failed, TxFailed) and failed.reason == f"broadcast rejected: {answer}"
    assert b.broadcast_done == {}


async def test_a_backend_answering_another_txid_is_an_error(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    msg = signed_tx(chain, "t1", TXID_A)
    chain.raw[msg.signed_tx.hex()] = TXID_B
    with pytest.raises(RuntimeError, match="expected"):
        await b._broadcast(msg)
    assert bus.published == []


async def test_on_signed_broadcasts_once(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    msg = signed_tx(chain, "t1", TXID_A)
    rec = received(msg, "tx.signed.t1")
    await b.on_signed(rec)
    await b.on_signed(rec)  # redelivered: broadcast_done
    assert chain.calls == Counter(broadcast=1)
    # a restarted instance finds tx.broadcast in the stream
    b2 = broadcaster(bus, chain)
    await b2.on_signed(rec)
    assert chain.calls == Counter(broadcast=1)
    assert bus.subjects("t1") == ["tx.broadcast.t1"]


async def test_on_signed_ignores_a_tx_signed_from_another_sender(bus: FakeBus, chain: FakeChain) -> None:
    b = broadcaster(bus, chain)
    await b.on_signed(received(signed_tx(chain, "t1", TXID_A), "tx.signed.t1", sender="node-2"))
    assert chain.http == 0 and bus.published == []


# ---- liveness: a spend the follower cannot see is still confirmed -------------------------------------


async def test_a_repeat_broadcast_of_an_already_confirmed_spend_is_confirmed(
    bus: FakeBus, chain: FakeChain
) -> None:
    chain.mine(150, TXID_A)  # broadcast by the crashed run, confirmed while this service was down
    chain.tip = 200
    b = broadcaster(bus, chain)
    b.scanned_height = b.tip_height = 200  # the restarted follower started at 200: block 150 is not read
    msg = signed_tx(chain, "t1", TXID_A)
    bus.place("tx.signed.t1", msg, "broadcaster")
    chain.reject = IN_BLOCK_CHAIN
    await b.on_signed(received(msg, "tx.signed.t1"))  # the crash recovery path
    assert bus.last("tx.broadcast.t1") == TxBroadcast(tx_id="t1", txid=TXID_A)
    for _ in range(3):  # deliveries spread over more than REBROADCAST_AFTER_S
        if await deliver(b, broadcast_rec("t1", TXID_A)) is None:
            break
        age_watch(b, TXID_A)
    assert bus.last("tx.confirmed.t1") == TxConfirmed(
        tx_id="t1", txid=TXID_A, block_height=150, confirmations=51
    )


async def test_a_watched_spend_whose_block_the_follower_skipped_is_confirmed(
    bus: FakeBus, chain: FakeChain, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(B, "SCAN_BACK_BLOCKS", 3)
    b = broadcaster(bus, chain)
    async with following(b):
        await until(lambda: b.scanned_height == 100)
        await b._broadcast(signed_tx(chain, "t1", TXID_A))
        assert b.broadcast_done == {"t1": True}
        assert isinstance(await deliver(b, broadcast_rec("t1", TXID_A)), RetryLater)
        chain.mine(101, TXID_A)
        chain.tip = 110  # the follower (or the backend) was stalled for a while
        await until(lambda: b.tip_height == 110)
    assert TXID_A not in b.confirmed_in
    for _ in range(3):
        age_watch(b, TXID_A)
        if await deliver(b, broadcast_rec("t1", TXID_A)) is None:
            break
    assert isinstance(bus.last("tx.confirmed.t1"), TxConfirmed)


# ---- collecting partial signatures --------------------------------------------------------------------

SIGNERS = ["node-1", "node-2", "node-3", "node-4"]


@dataclass
class Collected:
    """A broadcaster whose aggregation is recorded instead of run, and the lookups it made."""

    b: B.Broadcaster
    lookups: list[str]
    aggregated: list[tuple[str, dict[str, list[bytes]]]]


@pytest.fixture
def collected(bus: FakeBus, chain: FakeChain, monkeypatch: pytest.MonkeyPatch) -> Collected:
    lookups: list[str] = []
    fail_next = bus.fail_lookups

    async def last_message(_bus: Any, subject: str) -> Received | None:
        await asyncio.sleep(0)
        lookups.append(subject)
        if subject in fail_next:
            fail_next.remove(subject)
            raise TimeoutError("nats: timeout")
        return bus.last_received(subject)

    monkeypatch.setattr(B, "last_message", last_message)
    monkeypatch.setattr(B, "READ_BACK_AFTER_S", 0.01)
    b = broadcaster(bus, chain)
    aggregated: list[tuple[str, dict[str, list[bytes]]]] = []

    async def fake_aggregate(req: Any, signing: Any, psigs: dict[str, list[bytes]]) -> bool:
        aggregated.append((req.tx_id, dict(psigs)))
        return True

    b._aggregate = fake_aggregate  # type: ignore[method-assign]
    return Collected(b, lookups, aggregated)


def place_session(bus: FakeBus, tx_id: str) -> str:
    session = f"{tx_id}-a1"
    request = TxRequested(
        tx_id=tx_id, key_id="default", scheme="frost", network="regtest", recipient="r", amount=1,
        fee_rate=1.0, fee=1, unsigned_tx=b"", inputs=[],
    )  # fmt: skip
    bus.place(f"tx.requested.{tx_id}", request, "intake")
    signing = TxSigning(
        tx_id=tx_id, attempt=1, session_id=session, signers=SIGNERS, signer_ids=[0, 1, 2, 3], nonces={},
        certificate=[],
    )  # fmt: skip
    bus.place(f"tx.signing.{tx_id}", signing, "consensus")
    return session


def psig_rec(tx_id: str, session: str, node: str, delivered: int = 1) -> Received:
    msg = PartialSignatures(tx_id=tx_id, session_id=session, attempt=1, node=node, psigs=[node.encode()])
    rec = received(msg, f"proto.frost.{session}.2.{node}", sender=node)
    return dataclasses.replace(rec, num_delivered=delivered)


async def test_a_session_delivered_whole_needs_two_lookups(bus: FakeBus, collected: Collected) -> None:
    session = place_session(bus, "t1")
    for node in SIGNERS:
        await collected.b.on_psig(psig_rec("t1", session, node))
    assert collected.aggregated == [("t1", {n: [n.encode()] for n in SIGNERS})]
    # the attempt and the request, nothing per partial signature
    assert sorted(collected.lookups) == ["tx.requested.t1", "tx.signing.t1"]
    await asyncio.sleep(0.05)  # the delayed read-back finds the session done
    assert len(collected.aggregated) == 1 and not collected.b.read_backs


async def test_partial_signatures_delivered_elsewhere_are_read_back(
    bus: FakeBus, collected: Collected
) -> None:
    session = place_session(bus, "t2")
    for node in SIGNERS[2:]:  # these two went to another broadcaster instance
        bus.place(f"proto.frost.{session}.2.{node}", psig_rec("t2", session, node).payload, node)
    for node in SIGNERS[:2]:
        await collected.b.on_psig(psig_rec("t2", session, node))
    assert collected.aggregated == []
    await until(lambda: bool(collected.aggregated))
    assert collected.aggregated == [("t2", {n: [n.encode()] for n in SIGNERS})]


async def test_a_redelivered_partial_signature_reads_back_at_once(bus: FakeBus, collected: Collected) -> None:
    session = place_session(bus, "t3")
    for node in SIGNERS[1:]:  # acked before a restart
        bus.place(f"proto.frost.{session}.2.{node}", psig_rec("t3", session, node).payload, node)
    await collected.b.on_psig(psig_rec("t3", session, SIGNERS[0], delivered=2))
    assert [tx for tx, _ in collected.aggregated] == ["t3"]


async def test_a_partial_signature_from_a_forger_is_not_read_back(bus: FakeBus, collected: Collected) -> None:
    session = place_session(bus, "t4")
    forged = psig_rec("t4", session, "node-4").payload
    bus.place(f"proto.frost.{session}.2.node-4", forged, "node-5")  # node-5 posing as node-4
    for node in SIGNERS[:3]:
        await collected.b.on_psig(psig_rec("t4", session, node))
    await asyncio.sleep(0.05)
    assert collected.aggregated == []
    await collected.b.on_psig(psig_rec("t4", session, "node-4"))  # the real one
    assert [tx for tx, _ in collected.aggregated] == ["t4"]


async def test_a_failed_request_lookup_is_retried_on_redelivery(bus: FakeBus, collected: Collected) -> None:
    session = place_session(bus, "t5")
    bus.fail_lookups.append("tx.requested.t5")
    for node in SIGNERS[:3]:
        await collected.b.on_psig(psig_rec("t5", session, node))
    with pytest.raises(TimeoutError):
        await collected.b.on_psig(psig_rec("t5", session, "node-4"))
    await collected.b.on_psig(psig_rec("t5", session, "node-4", delivered=2))
    assert [tx for tx, _ in collected.aggregated] == ["t5"]


async def test_tx_signed_delivered_during_the_broadcast_does_not_broadcast_again(
    bus: FakeBus, chain: FakeChain
) -> None:
    b = broadcaster(bus, chain)
    msg = signed_tx(chain, "t9", TXID_A)
    gate = asyncio.Event()
    real = chain.broadcast

    async def slow_broadcast(raw_hex: str) -> str:
        await gate.wait()
        return await real(raw_hex)

    chain.broadcast = slow_broadcast  # type: ignore[method-assign]
    first = asyncio.ensure_future(b._broadcast(msg))
    await asyncio.sleep(0)
    await b.on_signed(received(msg, "tx.signed.t9"))  # this process is handing it over right now
    gate.set()
    await first
    assert chain.broadcasts == [msg.signed_tx.hex()]
    assert bus.all("tx.broadcast.t9") == [TxBroadcast(tx_id="t9", txid=TXID_A)]
