"""The spend lifecycle (core.lifecycle) over every (state, event) pair, the round record it moves
(core.round) and the signer-set choice and retries (core.signer_set)."""

from __future__ import annotations

import itertools

import msgspec
import pytest

from core import signer_set as SS
from core import tally
from core.lifecycle import (
    TERMINAL,
    Event,
    IllegalTransition,
    TxEvent,
    TxState,
    Violation,
    can_transition,
    is_replay,
    transition,
)
from core.round import advance, close, round_state
from schemas import kv as K
from schemas.kv import FinalOutcome, RoundOutcome

S, E = TxState, Event
NODES = [f"node-{i}" for i in range(1, 6)]
NOW = 1_700_000_000_000

# The specification, written out independently of the module's table: (state, event) -> new state.
# Every pair not listed must be refused.
LEGAL: dict[tuple[TxState | None, Event], TxState] = {
    (None, E.REQUESTED): S.PENDING,
    (S.PENDING, E.VOTING_OPENED): S.VOTING,
    (S.PENDING, E.VOTE_COUNTED): S.PENDING,
    (S.PENDING, E.VOTE_EQUIVOCATED): S.PENDING,
    (S.PENDING, E.REJECTED): S.REJECTED,
    (S.PENDING, E.FAILED): S.FAILED,
    (S.VOTING, E.VOTE_COUNTED): S.VOTING,
    (S.VOTING, E.VOTE_EQUIVOCATED): S.VOTING,
    (S.VOTING, E.QUORUM_REACHED): S.APPROVED,
    (S.VOTING, E.REJECTED): S.REJECTED,
    (S.VOTING, E.FAILED): S.FAILED,
    (S.APPROVED, E.VOTE_COUNTED): S.APPROVED,
    (S.APPROVED, E.VOTE_EQUIVOCATED): S.APPROVED,
    (S.APPROVED, E.VOTE_MISMATCHED): S.APPROVED,
    (S.APPROVED, E.ATTEMPT_STARTED): S.SIGNING,
    (S.APPROVED, E.FAILED): S.FAILED,
    (S.SIGNING, E.VOTE_COUNTED): S.SIGNING,
    (S.SIGNING, E.VOTE_EQUIVOCATED): S.SIGNING,
    (S.SIGNING, E.VOTE_MISMATCHED): S.SIGNING,
    (S.SIGNING, E.ATTEMPT_STARTED): S.SIGNING,
    (S.SIGNING, E.ATTEMPT_WAITING): S.SIGNING,
    (S.SIGNING, E.ATTEMPT_REFUSED): S.SIGNING,
    (S.SIGNING, E.ATTEMPT_BLAMED): S.SIGNING,
    (S.SIGNING, E.ATTEMPT_TIMED_OUT): S.SIGNING,
    (S.SIGNING, E.SIGNED): S.SIGNED,
    (S.SIGNING, E.FAILED): S.FAILED,
    (S.SIGNED, E.VOTE_EQUIVOCATED): S.SIGNED,
    (S.SIGNED, E.BROADCAST): S.BROADCAST,
    (S.SIGNED, E.FAILED): S.FAILED,
    (S.BROADCAST, E.BROADCAST): S.BROADCAST,
    (S.BROADCAST, E.CONFIRMED): S.CONFIRMED,
    (S.BROADCAST, E.FAILED): S.FAILED,
    (S.REJECTED, E.VOTE_EQUIVOCATED): S.REJECTED,
    (S.FAILED, E.VOTE_EQUIVOCATED): S.FAILED,
}
ANNOUNCES = {
    E.REQUESTED: TxEvent.REQUESTED,
    E.VOTING_OPENED: TxEvent.VOTING,
    E.QUORUM_REACHED: TxEvent.APPROVED,
    E.REJECTED: TxEvent.REJECTED,
    E.ATTEMPT_STARTED: TxEvent.SIGNING,
    E.SIGNED: TxEvent.SIGNED,
    E.FAILED: TxEvent.FAILED,
    E.BROADCAST: TxEvent.BROADCAST,
    E.CONFIRMED: TxEvent.CONFIRMED,
}
REPORTS = {E.VOTE_EQUIVOCATED: Violation.EQUIVOCATION, E.VOTE_MISMATCHED: Violation.SIGHASH_MISMATCH}

ALL_PAIRS = list(itertools.product([None, *TxState], Event))


@pytest.mark.parametrize(("state", "event"), ALL_PAIRS)
def test_every_state_event_pair(state: TxState | None, event: Event) -> None:
    expected = LEGAL.get((state, event))
    if expected is None:
        with pytest.raises(IllegalTransition) as info:
            transition(state, event, NOW)
        assert (info.value.state, info.value.event) == (state, event)
        assert event.value in str(info.value)
        return
    new, fx = transition(state, event, NOW)
    assert new is expected
    assert fx.announce is ANNOUNCES.get(event)
    assert fx.report is REPORTS.get(event)
    assert fx.at_ms == NOW


def test_terminal_states_announce_nothing_further() -> None:
    for state, event in ALL_PAIRS:
        if state in TERMINAL and (state, event) in LEGAL:
            new, fx = transition(state, event, NOW)
            assert new is state and fx.announce is None


# the announced transitions the recorder has always accepted
RECORDER_EDGES: dict[TxState | None, set[TxState]] = {
    None: {S.PENDING},
    S.PENDING: {S.VOTING, S.REJECTED, S.FAILED},
    S.VOTING: {S.APPROVED, S.REJECTED, S.FAILED},
    S.APPROVED: {S.SIGNING, S.FAILED},
    S.SIGNING: {S.SIGNING, S.SIGNED, S.FAILED},
    S.SIGNED: {S.BROADCAST, S.FAILED},
    S.BROADCAST: {S.BROADCAST, S.CONFIRMED, S.FAILED},
    S.CONFIRMED: set(),
    S.REJECTED: set(),
    S.FAILED: set(),
}


@pytest.mark.parametrize(("current", "new"), list(itertools.product([None, *TxState], TxState)))
def test_announced_view_is_the_recorders_table(current: TxState | None, new: TxState) -> None:
    assert can_transition(current, new) is (new in RECORDER_EDGES[current])


@pytest.mark.parametrize(
    ("current", "new", "replay"),
    [
        (None, S.PENDING, False),
        (S.VOTING, S.VOTING, True),  # tx.voting again
        (S.SIGNING, S.SIGNING, False),  # a retry
        (S.BROADCAST, S.BROADCAST, False),  # a rebroadcast
        (S.SIGNING, S.APPROVED, True),
        (S.CONFIRMED, S.SIGNED, True),
        (S.FAILED, S.FAILED, True),
        (S.FAILED, S.SIGNING, True),
        (S.REJECTED, S.VOTING, True),
        (S.VOTING, S.SIGNED, False),  # a jump ahead is illegal, not a replay
    ],
)
def test_replays(current: TxState | None, new: TxState, replay: bool) -> None:
    assert is_replay(current, new) is replay


# ---- the round record ---------------------------------------------------------------------------------


def round_in(state: TxState) -> K.RoundRecord:
    """A round record spelling ``state`` (consensus keeps every state but broadcast and confirmed)."""
    rnd = tally.new_round("tx", 5, 4, NODES)
    path = {
        S.PENDING: [],
        S.VOTING: [E.VOTING_OPENED],
        S.APPROVED: [E.VOTING_OPENED, E.QUORUM_REACHED],
        S.SIGNING: [E.VOTING_OPENED, E.QUORUM_REACHED, E.ATTEMPT_STARTED],
        S.SIGNED: [E.VOTING_OPENED, E.QUORUM_REACHED, E.ATTEMPT_STARTED, E.SIGNED],
        S.REJECTED: [E.VOTING_OPENED, E.REJECTED],
        S.FAILED: [E.FAILED],
    }[state]
    for event in path:
        advance(rnd, event, NOW - 1)
    assert round_state(rnd) is state
    return rnd


ROUND_STATES = [S.PENDING, S.VOTING, S.APPROVED, S.SIGNING, S.SIGNED, S.REJECTED, S.FAILED]


@pytest.mark.parametrize(("state", "event"), list(itertools.product(ROUND_STATES, Event)))
def test_advance_moves_the_record_along_the_table(state: TxState, event: Event) -> None:
    rnd = round_in(state)
    before = msgspec.msgpack.encode(rnd)
    expected = LEGAL.get((state, event))
    if expected is None or expected in (S.BROADCAST, S.CONFIRMED):  # not a round's business
        with pytest.raises(IllegalTransition):
            advance(rnd, event, NOW)
        assert msgspec.msgpack.encode(rnd) == before  # refused: nothing changed
        return
    fx = advance(rnd, event, NOW)
    assert round_state(rnd) is expected
    assert fx.announce is ANNOUNCES.get(event)


def test_advance_stamps_the_time_passed_in() -> None:
    rnd = round_in(S.VOTING)
    advance(rnd, E.QUORUM_REACHED, NOW)
    assert (rnd.outcome, rnd.approved_ms, rnd.attempt) == (RoundOutcome.APPROVED, NOW, 0)
    advance(rnd, E.ATTEMPT_STARTED, NOW + 5)
    assert (rnd.attempt, rnd.attempt_started_ms, rnd.approved_ms) == (1, NOW + 5, NOW)
    advance(rnd, E.ATTEMPT_WAITING, NOW + 9)
    assert (rnd.attempt, rnd.attempt_started_ms) == (1, NOW + 9)


def test_close_ends_once_and_refuses_signed_before_signing() -> None:
    rnd = round_in(S.SIGNING)
    assert close(rnd, FinalOutcome.SIGNED, NOW) is True
    assert (rnd.done, rnd.final, round_state(rnd)) == (True, FinalOutcome.SIGNED, S.SIGNED)
    assert close(rnd, FinalOutcome.FAILED, NOW) is False  # ended already: nothing to write
    voting = round_in(S.VOTING)
    with pytest.raises(IllegalTransition):
        close(voting, FinalOutcome.SIGNED, NOW)
    assert close(voting, FinalOutcome.FAILED, NOW) is True
    assert round_state(voting) is S.FAILED


def test_old_kv_entries_decode_and_new_ones_store_the_same_strings() -> None:
    class OldRound(msgspec.Struct, kw_only=True):  # the record as versions before core wrote it
        tx_id: str
        n: int
        t: int
        nodes: list[str]
        opened: bool = False
        outcome: str = "open"
        attempt: int = 0
        done: bool = False

    for outcome, attempt, done, state in [
        ("open", 0, False, S.PENDING),
        ("approved", 0, False, S.APPROVED),
        ("approved", 2, False, S.SIGNING),
        ("approved", 2, True, S.FAILED),  # closed before rounds said how: an end either way
        ("rejected", 0, True, S.REJECTED),
    ]:
        raw = msgspec.msgpack.encode(
            OldRound(tx_id="t", n=5, t=4, nodes=NODES, outcome=outcome, attempt=attempt, done=done)
        )
        rnd = msgspec.msgpack.decode(raw, type=K.RoundRecord)
        assert rnd.outcome is RoundOutcome(outcome) and rnd.final is None
        assert round_state(rnd) is state
    new = msgspec.msgpack.decode(msgspec.msgpack.encode(round_in(S.SIGNED)), type=dict[str, object])
    assert (new["outcome"], new["final"]) == ("approved", "signed")
    final = K.FinalRecord(outcome=FinalOutcome.FAILED, by="consensus", at_ms=NOW)
    stored = msgspec.msgpack.decode(msgspec.msgpack.encode(final), type=dict[str, object])
    assert stored["outcome"] == "failed"
    old_final = msgspec.msgpack.encode({"outcome": "signed", "by": "broadcaster", "at_ms": NOW})
    assert msgspec.msgpack.decode(old_final, type=K.FinalRecord).outcome is FinalOutcome.SIGNED
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(
            msgspec.msgpack.encode({"outcome": "maybe", "by": "x", "at_ms": NOW}), type=K.FinalRecord
        )


# ---- votes through the lifecycle ----------------------------------------------------------------------


def vote(node: str, approve: bool = True, sighashes: tuple[bytes, ...] = (b"h",)) -> tally.CastVote:
    return tally.CastVote(node, approve, [] if approve else ["no"], f"env-{node}".encode(), sighashes)


def test_votes_approve_and_start_attempt_1_in_one_change_and_report_by_the_table() -> None:
    rnd = round_in(S.VOTING)
    change = tally.add_votes(rnd, [vote(n) for n in NODES[:3]] + [vote("node-5", sighashes=(b"x",))], NOW)
    assert not change.approved and round_state(rnd) is S.VOTING
    change = tally.add_votes(rnd, [vote("node-4"), vote("node-1", approve=False)], NOW + 1)
    assert change.approved and change.counted == ["node-4"]
    assert round_state(rnd) is S.SIGNING and (rnd.attempt, rnd.attempt_started_ms) == (1, NOW + 1)
    assert change.reports == [("node-1", Violation.EQUIVOCATION), ("node-5", Violation.SIGHASH_MISMATCH)]


def test_votes_of_an_ended_round_are_late_but_equivocation_is_still_reported() -> None:
    rnd = round_in(S.REJECTED)
    tally.add_vote(rnd, "node-1", False, ["no"], b"e1")
    change = tally.add_votes(rnd, [vote("node-2"), vote("node-1", approve=True)], NOW)
    assert change.counted == [] and not change.changed
    assert "node-2" not in rnd.approve
    assert change.reports == [("node-1", Violation.EQUIVOCATION)]


def test_open_round_once_and_decide_what_is_in() -> None:
    rnd = round_in(S.PENDING)
    tally.add_votes(rnd, [vote(n) for n in NODES[:4]], NOW)
    assert round_state(rnd) is S.PENDING  # votes before the round opened: counted, not decided
    change = tally.open_round(rnd, 1000, 2, NOW + 1)
    assert change.opened and change.approved and round_state(rnd) is S.SIGNING
    assert (rnd.amount, rnd.inputs) == (1000, 2)
    assert not tally.open_round(rnd, 1000, 2, NOW + 2).changed  # a replayed request


def test_reject_if_decided() -> None:
    rnd = round_in(S.VOTING)
    tally.add_votes(rnd, [vote(n, approve=False) for n in NODES[:2]], NOW)
    assert tally.reject_if_decided(rnd, NOW) is True and round_state(rnd) is S.REJECTED
    assert tally.reject_if_decided(rnd, NOW) is False
    open_one = round_in(S.VOTING)
    tally.add_votes(open_one, [vote("node-1", approve=False)], NOW)
    assert tally.reject_if_decided(open_one, NOW) is False and round_state(open_one) is S.VOTING


# ---- signer sets and retries --------------------------------------------------------------------------

Q = NODES  # a quorum of all five


@pytest.mark.parametrize(
    ("failed", "banned", "short", "attempt", "expected"),
    [
        ((), (), (), 1, ["node-1", "node-2", "node-3", "node-4"]),
        ((), (), (), 2, ["node-2", "node-3", "node-4", "node-5"]),
        (("node-2",), (), (), 1, ["node-1", "node-3", "node-4", "node-5"]),
        # everybody failed once: every approver not banned is tried again
        (("node-1", "node-2"), (), (), 1, ["node-1", "node-2", "node-3", "node-4"]),
        (("node-1", "node-2"), ("node-1",), (), 1, ["node-2", "node-3", "node-4", "node-5"]),
        ((), ("node-1",), ("node-2",), 1, SS.NoSignerSet.WAIT_FOR_NONCES),
        ((), ("node-1", "node-2"), (), 1, SS.NoSignerSet.TOO_FEW),
        (("node-3",), (), ("node-3",), 1, ["node-1", "node-2", "node-4", "node-5"]),
    ],
)
def test_signer_set(
    failed: tuple[str, ...],
    banned: tuple[str, ...],
    short: tuple[str, ...],
    attempt: int,
    expected: list[str] | SS.NoSignerSet,
) -> None:
    assert SS.signer_set(Q, 4, attempt, failed=failed, banned=banned, short=short) == expected


TIMEOUT = 10_000


def test_next_attempt_after_each_cause() -> None:
    for cause in (E.ATTEMPT_REFUSED, E.ATTEMPT_BLAMED, E.ATTEMPT_TIMED_OUT):
        rnd = round_in(S.SIGNING)
        assert SS.next_attempt(rnd, NOW + TIMEOUT, TIMEOUT, cause=cause, failed="node-2", from_attempt=1) == 2
        assert (rnd.attempt, rnd.attempt_started_ms, rnd.failed_signers) == (2, NOW + TIMEOUT, ["node-2"])


def test_next_attempt_refuses_what_moved_on() -> None:
    rnd = round_in(S.SIGNING)
    assert SS.next_attempt(rnd, NOW, TIMEOUT, cause=E.ATTEMPT_REFUSED, from_attempt=2) is None  # stale
    started = rnd.attempt_started_ms
    assert SS.next_attempt(rnd, started + TIMEOUT - 1, TIMEOUT, cause=E.ATTEMPT_TIMED_OUT) is None
    assert rnd.attempt == 1
    for ended in (S.SIGNED, S.FAILED, S.REJECTED, S.VOTING, S.PENDING):
        assert SS.next_attempt(round_in(ended), NOW, TIMEOUT, cause=E.ATTEMPT_REFUSED) is None
    old = round_in(S.APPROVED)  # approved by a version that started attempts separately
    assert SS.next_attempt(old, NOW, TIMEOUT, from_attempt=0) == 1 and round_state(old) is S.SIGNING


def test_wait_for_nonces_and_the_limits() -> None:
    rnd = round_in(S.SIGNING)
    assert SS.wait_for_nonces(rnd, 2, NOW) is False
    assert SS.wait_for_nonces(rnd, 1, NOW + 7) is True and rnd.attempt_started_ms == NOW + 7
    assert SS.wait_for_nonces(round_in(S.SIGNED), 1, NOW) is False
    assert SS.mark_failed(rnd, ["node-1"]) and not SS.mark_failed(rnd, ["node-1"])
    assert SS.exhausted(6, 5) and not SS.exhausted(5, 5)
    assert not SS.nonce_wait_over(rnd, rnd.approved_ms + 999, 1000)
    assert SS.nonce_wait_over(rnd, rnd.approved_ms + 1000, 1000)
