"""The spend lifecycle: every state, every event and every allowed transition, in one table.

Theory of operation
-------------------
A spend moves through ``pending -> voting -> approved -> signing -> signed -> broadcast -> confirmed``;
``rejected`` and ``failed`` are terminal side exits. Everything that moves a spend is an :class:`Event`
applied by :func:`transition`, the one function that consults :data:`EVENT_TRIGGERED_TRANSITIONS`: it
returns the new state and the :class:`Effects` of the step (the ``tx.<event>`` to announce, the
violation to report), or raises :class:`IllegalTransition`. The caller refuses an illegal step and
reports it; it never patches the state around it. Everything that affects the state machine lives in
this module; whoever keeps a spend's state (consensus in KV ``rounds``, the recorder in PostgreSQL)
asks here what may happen next.

Two kinds of events:

- *Announced* events enter a state and are published as ``tx.<event>.<tx_id>`` by exactly one kind of
  service (``requested`` by intake; ``voting``, ``approved``, ``rejected``, ``signing`` and ``failed``
  by consensus; ``signed``, ``broadcast``, ``confirmed`` and ``failed`` by the broadcaster). Each one
  becomes a row in ``transactions`` / ``transaction_transitions`` and an ``audit_log`` entry. The
  recorder follows only these (:func:`can_transition`, :func:`is_replay`).
- *Round-internal* events happen inside one state and announce nothing: a vote counted, an equivocation
  or a vote for other sighashes found (these report a violation), a signing attempt refused, blamed,
  timed out or waiting for nonces (the next ``attempt-started`` announces ``tx.signing``).

Two announced transitions are deliberately re-entrant: ``signing -> signing`` (consensus retries with
another signer set after a refusal, a blamed signer or a timeout) and ``broadcast -> broadcast`` (a
rebroadcast after the backend was unreachable). An announced event that would move a spend to a state
it already reached is a replay (:func:`is_replay`): handlers stay idempotent by ignoring it.

The stored forms of two of these facts are KV values (``schemas.kv.RoundOutcome``, how a vote ended, and
``schemas.kv.FinalOutcome``, how signing ended); :mod:`core.round` maps a round record to its state.

Time is passed in (``now_ms``, wall clock in milliseconds) and returned in the effects, so the caller
stamps its records with the time the step was taken; this module reads no clock.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from schemas.kinds import TxState as TxState  # the states as they travel (REST, the recorder)


class TxEvent(StrEnum):
    """The ``<event>`` token of ``tx.<event>.<tx_id>``: the announcement of entering a state."""

    REQUESTED = "requested"
    VOTING = "voting"
    APPROVED = "approved"
    REJECTED = "rejected"
    SIGNING = "signing"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"
    FAILED = "failed"


class Event(StrEnum):
    """What happens to a spend."""

    REQUESTED = "requested"  # intake accepted the request
    VOTING_OPENED = "voting-opened"  # consensus opened the voting round
    VOTE_COUNTED = "vote-counted"  # a node's first vote went into the round
    VOTE_EQUIVOCATED = "vote-equivocated"  # a node voted a second, different time
    VOTE_MISMATCHED = "vote-mismatched"  # an approval of other sighashes than the quorum's
    QUORUM_REACHED = "quorum-reached"  # t approvals of one sighash list
    REJECTED = "rejected"  # no sighash list can reach t approvals any more
    ATTEMPT_STARTED = "attempt-started"  # a signing attempt with a new signer set
    ATTEMPT_WAITING = "attempt-waiting"  # no signer set has a nonce per input: the attempt waits
    ATTEMPT_REFUSED = "attempt-refused"  # a signer of the attempt refused
    ATTEMPT_BLAMED = "attempt-blamed"  # a signer of the attempt sent an invalid partial signature
    ATTEMPT_TIMED_OUT = "attempt-timed-out"  # the attempt did not complete in time
    SIGNED = "signed"  # the aggregate signature verified and the final outcome says signed
    FAILED = "failed"  # the spend was given up and the final outcome says failed
    BROADCAST = "broadcast"  # the transaction went to the network (again)
    CONFIRMED = "confirmed"  # the transaction is in a block


class Violation(StrEnum):
    """The violation kinds a transition reports (``Violation.kind`` on ``node.violation.<offender>``)."""

    EQUIVOCATION = "equivocation"
    SIGHASH_MISMATCH = "sighash-mismatch"


class Effects(NamedTuple):
    """What a transition asks its caller to do once the new state is stored."""

    announce: TxEvent | None  # publish ``tx.<announce>.<tx_id>``
    report: Violation | None  # report the node the event came from
    at_ms: int  # when the step was taken (the caller's clock, passed in)


class Transition(NamedTuple):
    state: TxState
    effects: Effects


class IllegalTransition(ValueError):
    """``event`` cannot happen to a spend in ``state`` (None: a spend not known yet)."""

    def __init__(self, state: TxState | None, event: Event) -> None:
        self.state = state
        self.event = event
        where = state.value if state is not None else "(none)"
        super().__init__(f"illegal transition: {event.value} in state {where}")


S = TxState

# state -> event -> the state it moves to. ``None`` is a spend not known yet.
EVENT_TRIGGERED_TRANSITIONS: dict[TxState | None, dict[Event, TxState]] = {
    None: {Event.REQUESTED: S.PENDING},
    S.PENDING: {
        Event.VOTING_OPENED: S.VOTING,
        Event.VOTE_COUNTED: S.PENDING,
        Event.VOTE_EQUIVOCATED: S.PENDING,
        Event.REJECTED: S.REJECTED,
        Event.FAILED: S.FAILED,
    },
    S.VOTING: {
        Event.VOTE_COUNTED: S.VOTING,
        Event.VOTE_EQUIVOCATED: S.VOTING,
        Event.QUORUM_REACHED: S.APPROVED,
        Event.REJECTED: S.REJECTED,
        Event.FAILED: S.FAILED,
    },
    S.APPROVED: {
        Event.VOTE_COUNTED: S.APPROVED,
        Event.VOTE_EQUIVOCATED: S.APPROVED,
        Event.VOTE_MISMATCHED: S.APPROVED,
        Event.ATTEMPT_STARTED: S.SIGNING,
        Event.FAILED: S.FAILED,
    },
    S.SIGNING: {
        Event.VOTE_COUNTED: S.SIGNING,
        Event.VOTE_EQUIVOCATED: S.SIGNING,
        Event.VOTE_MISMATCHED: S.SIGNING,
        Event.ATTEMPT_STARTED: S.SIGNING,
        Event.ATTEMPT_WAITING: S.SIGNING,
        Event.ATTEMPT_REFUSED: S.SIGNING,
        Event.ATTEMPT_BLAMED: S.SIGNING,
        Event.ATTEMPT_TIMED_OUT: S.SIGNING,
        Event.SIGNED: S.SIGNED,
        Event.FAILED: S.FAILED,
    },
    S.SIGNED: {
        Event.VOTE_EQUIVOCATED: S.SIGNED,
        Event.BROADCAST: S.BROADCAST,
        Event.FAILED: S.FAILED,
    },
    S.BROADCAST: {
        Event.BROADCAST: S.BROADCAST,
        Event.CONFIRMED: S.CONFIRMED,
        Event.FAILED: S.FAILED,
    },
    S.CONFIRMED: {},
    S.REJECTED: {Event.VOTE_EQUIVOCATED: S.REJECTED},
    S.FAILED: {Event.VOTE_EQUIVOCATED: S.FAILED},
}

# the announcement each event makes (the events not listed announce nothing)
ANNOUNCED: dict[Event, TxEvent] = {
    Event.REQUESTED: TxEvent.REQUESTED,
    Event.VOTING_OPENED: TxEvent.VOTING,
    Event.QUORUM_REACHED: TxEvent.APPROVED,
    Event.REJECTED: TxEvent.REJECTED,
    Event.ATTEMPT_STARTED: TxEvent.SIGNING,
    Event.SIGNED: TxEvent.SIGNED,
    Event.FAILED: TxEvent.FAILED,
    Event.BROADCAST: TxEvent.BROADCAST,
    Event.CONFIRMED: TxEvent.CONFIRMED,
}

# the violation each event reports (about the node whose vote it was)
REPORTED: dict[Event, Violation] = {
    Event.VOTE_EQUIVOCATED: Violation.EQUIVOCATION,
    Event.VOTE_MISMATCHED: Violation.SIGHASH_MISMATCH,
}

TERMINAL: frozenset[TxState] = frozenset({S.CONFIRMED, S.REJECTED, S.FAILED})
# the states a voting round in KV ``rounds`` spells (consensus does not follow broadcast and confirmation)
ROUND_STATES: frozenset[TxState] = frozenset(
    {S.PENDING, S.VOTING, S.APPROVED, S.SIGNING, S.SIGNED, S.REJECTED, S.FAILED}
)


def transition(state: TxState | None, event: Event, now_ms: int) -> Transition:
    """Apply ``event`` to a spend in ``state``: the new state and what to announce and report.
    Raises :class:`IllegalTransition` when the table has no such step."""
    new = EVENT_TRIGGERED_TRANSITIONS[state].get(event)
    if new is None:
        raise IllegalTransition(state, event)
    return Transition(new, Effects(ANNOUNCED.get(event), REPORTED.get(event), now_ms))


def allows(state: TxState | None, event: Event) -> bool:
    return event in EVENT_TRIGGERED_TRANSITIONS[state]


# ---- the announced view (what the recorder and readers of tx.> follow) -----------------------------

# the event name on ``tx.<event>.<tx_id>`` that announces entry into each state
EVENT_FOR_STATE: dict[TxState, TxEvent] = {
    S.PENDING: TxEvent.REQUESTED,
    S.VOTING: TxEvent.VOTING,
    S.APPROVED: TxEvent.APPROVED,
    S.SIGNING: TxEvent.SIGNING,
    S.SIGNED: TxEvent.SIGNED,
    S.BROADCAST: TxEvent.BROADCAST,
    S.CONFIRMED: TxEvent.CONFIRMED,
    S.REJECTED: TxEvent.REJECTED,
    S.FAILED: TxEvent.FAILED,
}
STATE_FOR_EVENT: dict[str, TxState] = {event.value: state for state, event in EVENT_FOR_STATE.items()}

# from-state -> the states an announced event may move it to (derived from the table above)
TRANSITIONS: dict[TxState | None, frozenset[TxState]] = {
    state: frozenset(new for event, new in row.items() if event in ANNOUNCED)
    for state, row in EVENT_TRIGGERED_TRANSITIONS.items()
}


def can_transition(current: TxState | None, new: TxState) -> bool:
    """Whether an announced event may move a spend in ``current`` (None: not yet known) to ``new``."""
    return new in TRANSITIONS[current]


def is_replay(current: TxState | None, new: TxState) -> bool:
    """True when ``new`` is a state the spend already reached or passed (a replayed announcement)."""
    if current is None:
        return False
    if current is new:
        return new not in TRANSITIONS[current]
    return _rank(new) < _rank(current) and not can_transition(current, new)


_ORDER = [S.PENDING, S.VOTING, S.APPROVED, S.SIGNING, S.SIGNED, S.BROADCAST, S.CONFIRMED]


def _rank(state: TxState) -> int:
    if state in (S.REJECTED, S.FAILED):
        return len(_ORDER)
    return _ORDER.index(state)
