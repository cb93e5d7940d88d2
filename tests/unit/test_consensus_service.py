"""The consensus service against an in-memory bus: KV with compare-and-set, publishes de-duplicated by
message id, a fake nonce pool and a settable clock. No servers; each test drives the handlers directly
(``on_requested``, ``on_votes``, ``check_timers``, ``resume``...) the way the consumers would."""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

import services.consensus.service as C
from schemas import kv as K
from schemas.kv import RoundOutcome
from schemas.messages import (
    InputRef,
    NonceRef,
    PartialSignatures,
    SigningRefused,
    TxApproved,
    TxFailed,
    TxRejected,
    TxRequested,
    TxSigned,
    TxSigning,
    Violation,
    Vote,
)
from services.runtime.bus import Received
from tests.unit.service_fakes import FakeBus as BaseFakeBus
from tests.unit.service_fakes import received, service_context

NODES = [f"node-{i}" for i in range(1, 6)]
H = [b"\x01" * 32]
ODD = [b"\xee" * 32]
T0 = 1_700_000_000_000

# ---- fakes ----------------------------------------------------------------------------------------------


@dataclass
class FakeBus(BaseFakeBus):
    identity: str = "consensus"

    def last(self, subject: str) -> Any:
        found = self.all(subject)
        return found[-1] if found else None

    def signings(self, tx_id: str) -> list[TxSigning]:
        return self.all(f"tx.signing.{tx_id}")

    def violations(self, kind: str) -> list[Violation]:
        return [p for _, p, _, _ in self.published if isinstance(p, Violation) and p.kind == kind]


class FakePool:
    def __init__(self, level: int = 100) -> None:
        self.levels = dict.fromkeys(NODES, level)
        self.broken: set[str] = set()  # claims for these fail although the level says otherwise
        self.loaded = asyncio.Event()
        self.loaded.set()
        self.ids = itertools.count()

    def level(self, node: str) -> int:
        return self.levels.get(node, 0)

    async def claim(self, node: str, count: int, tx_id: str, attempt: int) -> list[NonceRef] | None:
        await asyncio.sleep(0)
        if node in self.broken or self.levels[node] < count:
            return None
        self.levels[node] -= count
        return [NonceRef(nonce_id=f"n{next(self.ids)}", pubnonce=b"\x02" * 66) for _ in range(count)]


class Clock:
    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(C, "now_ms", c)
    return c


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> FakeBus:
    b = FakeBus()

    async def last_message(_bus: Any, subject: str) -> Any:
        found = [(p, sender) for s, p, _, sender in b.published if s == subject]
        if not found:
            return None
        payload, sender = found[-1]
        return SimpleNamespace(payload=payload, sender=sender, envelope_raw=f"env:{subject}".encode())

    monkeypatch.setattr(C, "last_message", last_message)
    return b


def consensus(bus: FakeBus, pool: FakePool | None = None) -> C.Consensus:
    ctx = service_context("consensus", bus, n=5, t=4, nodes=tuple(NODES))
    c = C.Consensus(ctx)
    c.pool = pool or FakePool()  # type: ignore[assignment]
    return c


def request(tx_id: str, inputs: int = 1) -> Received:
    req = TxRequested(
        tx_id=tx_id,
        key_id="default",
        scheme="frost",
        network="regtest",
        recipient="bcrt1q",
        amount=1000,
        fee_rate=1.0,
        fee=200,
        unsigned_tx=b"",
        inputs=[
            InputRef(txid="00" * 32, vout=i, amount=5000, script_pubkey=b"\x51\x20" + b"\x00" * 32)
            for i in range(inputs)
        ],
    )
    return received(req, f"tx.requested.{tx_id}", "intake", f"requested.{tx_id}")


def vote(tx_id: str, node: str, sighashes: list[bytes] | None = None, approve: bool = True) -> Received:
    v = Vote(
        tx_id=tx_id,
        node=node,
        approve=approve,
        reasons=[] if approve else ["no"],
        sighashes=H if sighashes is None else sighashes,
    )
    return Received(
        subject=f"vote.{tx_id}.{node}",
        sender=node,
        payload=v,
        seq=0,
        msg_id=f"vote.{tx_id}.{node}",
        envelope_raw=f"env-{node}-{tx_id}".encode(),
        envelope=None,  # type: ignore[arg-type]
    )


async def approve(c: C.Consensus, tx_id: str, voters: list[str] = NODES[:4], inputs: int = 1) -> None:
    await c.on_requested(request(tx_id, inputs))
    await c.on_votes([vote(tx_id, n) for n in voters])


def warnings(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and r.getMessage() == message]


# ---- task 1: the certificate from matching votes ---------------------------------------------------------


async def test_odd_approver_is_left_out_of_certificate_and_signers(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await c.on_requested(request("t1"))
    await c.on_votes([vote("t1", "node-1", ODD)])
    await c.on_votes([vote("t1", n) for n in NODES[1:4]])
    assert bus.signings("t1") == []  # 3 matching approvals: not yet
    await c.on_votes([vote("t1", "node-5")])
    approved = bus.last("tx.approved.t1")
    assert isinstance(approved, TxApproved)
    assert approved.certificate == [f"env-{n}-t1".encode() for n in NODES[1:]]
    [signing] = bus.signings("t1")
    assert "node-1" not in signing.signers and signing.certificate == approved.certificate
    assert [(v.offender, v.tx_id) for v in bus.violations("sighash-mismatch")] == [("node-1", "t1")]
    # a redelivered batch reports nothing again
    await c.on_votes([vote("t1", n) for n in NODES])
    assert len(bus.violations("sighash-mismatch")) == 1
    assert len(bus.signings("t1")) == 1


async def test_late_odd_approver_is_reported(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await approve(c, "t2")
    assert bus.violations("sighash-mismatch") == []
    await c.on_votes([vote("t2", "node-5", ODD)])
    assert [v.offender for v in bus.violations("sighash-mismatch")] == ["node-5"]


async def test_split_approvals_reject(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await c.on_requested(request("t3"))
    await c.on_votes([vote("t3", "node-1", ODD), vote("t3", "node-2", ODD), vote("t3", "node-3")])
    assert bus.subjects("t3") == ["tx.voting.t3"]  # ODD: 2 + 2 outstanding could still make 4
    await c.on_votes([vote("t3", "node-4")])  # 2 + 2 approvals, 1 outstanding: nobody can reach 4
    rejected = bus.last("tx.rejected.t3")
    assert isinstance(rejected, TxRejected) and rejected.certificate == []
    assert rejected.reasons == ["approving nodes disagree on the sighashes: node-1, node-2 / node-3, node-4"]
    assert bus.kvs["rounds"].round("t3").outcome == "rejected"


# ---- task 4: approval, attempt 1 and tx.signing with few round trips -------------------------------------


async def test_deciding_vote_approves_and_starts_attempt_1_in_one_write(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await c.on_requested(request("t4"))
    await c.on_votes([vote("t4", n) for n in NODES[:3]])
    rounds = bus.kvs["rounds"]
    before = len(rounds.writes)
    await c.on_votes([vote("t4", "node-4")])
    assert rounds.writes[before:] == ["t4"]  # votes, outcome and attempt 1: one write
    rnd = rounds.round("t4")
    assert (rnd.outcome, rnd.attempt, rnd.attempt_started_ms, rnd.approved_ms) == ("approved", 1, T0, T0)
    assert bus.subjects("t4") == ["tx.voting.t4", "tx.approved.t4", "tx.signing.t4"]
    assert c.active["t4"] == C.Timer(1, T0 + 10_000)


async def test_the_lifecycle_refuses_signed_before_signing_and_late_votes(
    bus: FakeBus, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    c = consensus(bus)
    await c.on_requested(request("t4c"))
    await c.on_votes([vote("t4c", n) for n in NODES[:2]])
    rounds = bus.kvs["rounds"]
    before = len(rounds.writes)
    signed = TxSigned(tx_id="t4c", txid="00" * 32, signed_tx=b"", attempt=1)
    await c.on_tx_event(received(signed, "tx.signed.t4c", "broadcaster"))
    assert rounds.writes[before:] == []  # refused: the round is still voting, not closed
    assert not rounds.round("t4c").done and warnings(caplog, "lifecycle refused a step")
    await c.on_votes([vote("t4c", n, approve=False) for n in NODES[2:4]])  # 2 + 2: rejected
    assert isinstance(bus.last("tx.rejected.t4c"), TxRejected) and rounds.round("t4c").done
    before = len(rounds.writes)
    await c.on_votes([vote("t4c", "node-5")])  # the round ended: a late vote is not written
    assert rounds.writes[before:] == [] and "node-5" not in rounds.round("t4c").approve


async def test_a_request_opens_its_round_with_one_write_and_no_read(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await c.on_requested(request("t4b"))
    rounds = bus.kvs["rounds"]
    assert (rounds.writes, rounds.reads) == (["t4b"], [])
    assert rounds.round("t4b").opened
    # another instance (no cached copy) seeing the same request again: the create fails, it reads, and
    # finds the round open already (nothing written)
    other = consensus(bus)
    await other.on_requested(request("t4b"))
    assert (rounds.writes, rounds.reads) == (["t4b"], ["t4b"])


async def test_votes_before_the_request_approve_when_it_opens(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await c.on_votes([vote("t5", n) for n in NODES])
    assert bus.subjects("t5") == []  # not opened: tx.voting must come first
    await c.on_requested(request("t5"))
    assert bus.subjects("t5") == ["tx.voting.t5", "tx.approved.t5", "tx.signing.t5"]


async def test_crash_after_the_approving_write_is_redriven_by_the_timeout(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await c.on_requested(request("t6"))

    async def crash(*args: Any, **kw: Any) -> None:
        raise RuntimeError("killed")

    c._run_attempt = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await c.on_votes([vote("t6", n) for n in NODES[:4]])
    assert bus.subjects("t6") == ["tx.voting.t6"]  # approved and attempt 1 started in KV, nothing sent
    # a restarted instance: the timeout of attempt 1 runs from its start in KV
    clock.advance(4)
    c2 = consensus(bus)
    await c2.resume()
    await c2.check_timers()
    assert bus.signings("t6") == []
    clock.advance(6.1)
    await c2.check_timers()
    assert bus.subjects("t6") == ["tx.voting.t6", "tx.approved.t6", "tx.signing.t6"]
    assert [s.attempt for s in bus.signings("t6")] == [2]
    # the redelivered votes change nothing
    await c2.on_votes([vote("t6", n) for n in NODES[:4]])
    assert len(bus.signings("t6")) == 1


# ---- task 3: timers from KV ------------------------------------------------------------------------------


async def test_restart_keeps_the_remaining_time(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await approve(c, "t7")
    clock.advance(8)
    c2 = consensus(bus)  # restarted: nothing in memory
    await c2.resume()
    assert c2.active["t7"] == C.Timer(1, T0 + 10_000)
    clock.advance(1.9)
    await c2.check_timers()
    assert len(bus.signings("t7")) == 1
    clock.advance(0.2)
    await c2.check_timers()
    assert [s.attempt for s in bus.signings("t7")] == [1, 2]


async def test_two_instances_retry_an_expired_attempt_once(bus: FakeBus, clock: Clock) -> None:
    a = consensus(bus)
    b = consensus(bus)
    await approve(a, "t8")
    await b.resume()
    clock.advance(10.1)
    await asyncio.gather(a.check_timers(), b.check_timers())
    assert [s.attempt for s in bus.signings("t8")] == [1, 2]
    assert bus.kvs["rounds"].round("t8").attempt == 2
    await asyncio.gather(a.check_timers(), b.check_timers())
    assert len(bus.signings("t8")) == 2
    # both keep watching attempt 2
    assert a.active["t8"].attempt == b.active["t8"].attempt == 2


async def test_a_timed_out_attempt_reports_the_signers_that_did_not_answer(
    bus: FakeBus, clock: Clock
) -> None:
    """``timeout`` violations (never counted toward a ban) for the signers of the expired attempt that sent
    neither partial signatures nor a refusal, the tx.signing they did not answer as evidence; once."""
    a, b = consensus(bus), consensus(bus)
    req = request("t20")
    bus.published.append((req.subject, req.payload, "requested.t20", "intake"))
    await approve(a, "t20")
    await b.resume()
    [first] = bus.signings("t20")
    s1, s2, s3, s4 = first.signers
    psig = PartialSignatures(
        tx_id="t20", session_id=first.session_id, attempt=1, node=s1, psigs=[b"\x00" * 32]
    )
    bus.published.append((f"proto.frost.{first.session_id}.2.{s1}", psig, "p1", s1))
    refused = SigningRefused(tx_id="t20", session_id=first.session_id, attempt=1, node=s2, reason="busy")
    bus.published.append((f"proto.frost.{first.session_id}.refused.{s2}", refused, "r2", s2))
    # a partial signature on s3's subject from someone else answers nothing
    bus.published.append((f"proto.frost.{first.session_id}.2.{s3}", psig, "p3", s1))
    clock.advance(10.1)
    await asyncio.gather(a.check_timers(), b.check_timers())
    assert [s.attempt for s in bus.signings("t20")] == [1, 2]
    reports = bus.violations("timeout")
    assert sorted(v.offender for v in reports) == sorted([s3, s4])  # once each, by the retry that won
    assert all(v.tx_id == "t20" and v.evidence == b"env:tx.signing.t20" for v in reports)
    assert all("attempt 1" in v.detail for v in reports)


async def test_after_max_attempts_the_spend_fails(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await approve(c, "t9")
    for _ in range(C.MAX_ATTEMPTS):
        clock.advance(10.1)
        await c.check_timers()
    assert [s.attempt for s in bus.signings("t9")] == [1, 2, 3, 4, 5]
    failed = bus.last("tx.failed.t9")
    assert isinstance(failed, TxFailed) and "5 attempts" in failed.reason
    assert bus.kvs["rounds"].round("t9").done and "t9" not in c.active


async def test_a_refusal_of_the_current_attempt_starts_the_next(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await approve(c, "t10", voters=NODES)
    [first] = bus.signings("t10")
    refusal = SigningRefused(tx_id="t10", session_id=first.session_id, attempt=1, node="node-2", reason="x")
    rec = received(refusal, "proto.frost.s.refused.node-2", "node-2", "r")
    await c.on_refused(rec)
    await c.on_refused(rec)  # a repeat does not start a third
    assert [s.attempt for s in bus.signings("t10")] == [1, 2]
    assert "node-2" not in bus.signings("t10")[1].signers


# ---- task 2: waiting for nonces does not use up attempts --------------------------------------------------


async def test_nonce_shortage_waits_without_using_attempts(
    bus: FakeBus, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    pool = FakePool(level=0)
    c = consensus(bus, pool)
    await approve(c, "t11", voters=NODES, inputs=2)
    assert bus.subjects("t11") == ["tx.voting.t11", "tx.approved.t11"]  # approved, but no signer set
    for _ in range(30):  # 30 s of retries, far more than MAX_ATTEMPTS
        clock.advance(1)
        await c.check_timers()
    retries = warnings(caplog, "nonce pools too low for a signer set; retrying shortly")
    assert len(retries) >= 30 and all(r.fields["tx_id"] == "t11" for r in retries)  # type: ignore[attr-defined]
    rnd = bus.kvs["rounds"].round("t11")
    assert rnd.attempt == 1 and not rnd.done and rnd.attempt_started_ms == clock.ms
    pool.levels.update(dict.fromkeys(NODES, 2))
    clock.advance(1)
    await c.check_timers()
    [signing] = bus.signings("t11")
    assert signing.attempt == 1 and all(len(v) == 2 for v in signing.nonces.values())


async def test_nonce_shortage_fails_after_the_bound(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus, FakePool(level=0))
    await approve(c, "t12")
    for _ in range(int(C.NONCE_WAIT_MAX_S) + 2):
        clock.advance(1)
        await c.check_timers()
    failed = bus.last("tx.failed.t12")
    assert isinstance(failed, TxFailed) and "120 s of approval" in failed.reason
    assert bus.signings("t12") == [] and bus.kvs["rounds"].round("t12").attempt == 1
    final = bus.kvs["rounds"].data[K.final_key("t12")][1]
    assert msgspec.msgpack.decode(final, type=K.FinalRecord).outcome == "failed"


async def test_a_waiting_attempt_is_not_taken_over_by_another_instance(bus: FakeBus, clock: Clock) -> None:
    pool = FakePool(level=0)
    a = consensus(bus, pool)
    b = consensus(bus, pool)
    await approve(a, "t13")
    await b.resume()
    for _ in range(25):  # beyond the signing timeout: a keeps the attempt alive in KV
        clock.advance(1)
        await asyncio.gather(a.check_timers(), b.check_timers())
    assert bus.kvs["rounds"].round("t13").attempt == 1


async def test_a_failed_claim_passes_the_node_over_without_using_an_attempt(
    bus: FakeBus, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    pool = FakePool()
    pool.broken.add("node-2")
    c = consensus(bus, pool)
    await approve(c, "t14", voters=NODES)
    assert bus.signings("t14") == [] and warnings(caplog, "nonce pool empty")
    rnd = bus.kvs["rounds"].round("t14")
    assert rnd.failed_signers == ["node-2"] and rnd.attempt == 1
    clock.advance(1)
    await c.check_timers()
    [signing] = bus.signings("t14")
    assert signing.attempt == 1 and "node-2" not in signing.signers


# ---- task 5: the final-outcome arbiter -----------------------------------------------------------------


async def test_fail_publishes_only_if_it_wins_the_final_outcome(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    kv = await bus.kv("rounds")
    await kv.create(K.final_key("s1"), K.FinalRecord(outcome="signed", by="broadcaster", at_ms=T0))
    await c._fail("s1", "gave up")
    assert bus.last("tx.failed.s1") is None

    await c._fail("f1", "gave up")
    assert isinstance(bus.last("tx.failed.f1"), TxFailed)
    final = msgspec.msgpack.decode(kv.data[K.final_key("f1")][1], type=K.FinalRecord)
    assert (final.outcome, final.by) == ("failed", "consensus")

    # already failed (another instance, or a try that did not get to publish): published (again)
    await kv.create(K.final_key("f2"), K.FinalRecord(outcome="failed", by="consensus", at_ms=T0))
    await c._fail("f2", "gave up")
    assert isinstance(bus.last("tx.failed.f2"), TxFailed)


async def test_a_fail_cut_short_by_a_crash_is_finished_by_the_timeout(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await approve(c, "f3")
    kv = await bus.kv("rounds")
    # the instance that gave up claimed the outcome, then died before announcing it and closing the round
    reason = "no signer set completed after 5 attempts"
    await kv.create(
        K.final_key("f3"), K.FinalRecord(outcome="failed", by="consensus", at_ms=T0, reason=reason)
    )
    c2 = consensus(bus)
    await c2.resume()
    clock.advance(10.1)
    await c2.check_timers()
    failed = bus.last("tx.failed.f3")
    assert isinstance(failed, TxFailed) and failed.reason == reason
    assert [s.attempt for s in bus.signings("f3")] == [1]  # no new attempt for a spend that failed
    assert kv.round("f3").done and "f3" not in c2.active


async def test_a_retry_overtaken_by_the_signature_publishes_no_attempt(bus: FakeBus, clock: Clock) -> None:
    class SignedWhileClaiming(FakePool):
        signed = False

        async def claim(self, node: str, count: int, tx_id: str, attempt: int) -> list[NonceRef] | None:
            if attempt == 2 and not self.signed:
                # the late partial signature of attempt 1 arrives: the broadcaster signs meanwhile
                self.signed = True
                record = K.FinalRecord(outcome="signed", by="broadcaster", at_ms=T0)
                await bus.kvs["rounds"].create(K.final_key(tx_id), record)
            return await super().claim(node, count, tx_id, attempt)

    c = consensus(bus, SignedWhileClaiming())
    await approve(c, "r1")
    clock.advance(10.1)
    await c.check_timers()
    assert [s.attempt for s in bus.signings("r1")] == [1]  # no tx.signing after tx.signed
    assert bus.last("tx.failed.r1") is None
    assert bus.kvs["rounds"].round("r1").done and "r1" not in c.active


async def test_resume_skips_final_entries_and_foreign_keys(bus: FakeBus, clock: Clock) -> None:
    c = consensus(bus)
    await approve(c, "t15")
    kv = await bus.kv("rounds")
    await kv.create(K.final_key("t15"), K.FinalRecord(outcome="signed", by="broadcaster", at_ms=T0))
    await kv.put("junk", b"\x00not a round")
    c2 = consensus(bus)
    await c2.resume()
    assert set(c2.active) == {"t15"}


async def test_resume_decides_a_round_left_undecided(bus: FakeBus, clock: Clock) -> None:
    kv = await bus.kv("rounds")
    rnd = K.RoundRecord(tx_id="t16", n=5, t=4, nodes=NODES, opened=True, inputs=1)
    for n in NODES[:2]:
        rnd.approve[n] = False
        rnd.votes[n] = b"no"
        rnd.reasons[n] = ["too big"]
    await kv.create("t16", rnd)
    await consensus(bus).resume()
    assert isinstance(bus.last("tx.rejected.t16"), TxRejected)
    assert kv.round("t16").done


async def test_rounds_approved_by_an_earlier_version_start_attempt_1(bus: FakeBus, clock: Clock) -> None:
    kv = await bus.kv("rounds")
    rnd = K.RoundRecord(
        tx_id="t17", n=5, t=4, nodes=NODES, opened=True, inputs=1, outcome=RoundOutcome.APPROVED
    )
    for n in NODES[:4]:
        rnd.approve[n] = True
        rnd.votes[n] = f"env-{n}".encode()
        rnd.sighashes[n] = H
    await kv.create("t17", rnd)
    c = consensus(bus)
    await c.resume()
    await c.check_timers()
    assert bus.subjects("t17") == ["tx.approved.t17", "tx.signing.t17"]
    assert [s.attempt for s in bus.signings("t17")] == [1]
