"""The transaction lifecycle: every state and every allowed transition, in one table.

Theory of operation
-------------------
A spend moves through ``pending -> voting -> approved -> signing -> signed -> broadcast -> confirmed``;
``rejected`` and ``failed`` are terminal side exits. Each transition is an event on ``tx.<event>.<tx_id>``
(published by exactly one kind of service), a row in ``transactions`` / ``transaction_transitions`` and an
``audit_log`` entry. Every party that moves or records a transaction (the services, the recorder, the
REST API) asks :func:`check_transition` first; an illegal transition raises :class:`IllegalTransition`
and is refused, never patched around.

Two transitions are deliberately re-entrant: ``signing -> signing`` (consensus retries with another signer
set after a timeout or a blamed signer) and ``broadcast -> broadcast`` (a rebroadcast after the backend
was unreachable). Replaying an event that would move a transaction to the state it is already in is
reported by :func:`is_replay` so handlers can stay idempotent.
"""

from __future__ import annotations

from enum import StrEnum


class TxState(StrEnum):
    PENDING = "pending"
    VOTING = "voting"
    APPROVED = "approved"
    SIGNING = "signing"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    FAILED = "failed"


TERMINAL: frozenset[TxState] = frozenset({TxState.CONFIRMED, TxState.REJECTED, TxState.FAILED})

# from-state -> the states it may move to
TRANSITIONS: dict[TxState, frozenset[TxState]] = {
    TxState.PENDING: frozenset({TxState.VOTING, TxState.REJECTED, TxState.FAILED}),
    TxState.VOTING: frozenset({TxState.APPROVED, TxState.REJECTED, TxState.FAILED}),
    TxState.APPROVED: frozenset({TxState.SIGNING, TxState.FAILED}),
    TxState.SIGNING: frozenset({TxState.SIGNING, TxState.SIGNED, TxState.FAILED}),
    TxState.SIGNED: frozenset({TxState.BROADCAST, TxState.FAILED}),
    TxState.BROADCAST: frozenset({TxState.BROADCAST, TxState.CONFIRMED, TxState.FAILED}),
    TxState.CONFIRMED: frozenset(),
    TxState.REJECTED: frozenset(),
    TxState.FAILED: frozenset(),
}

# the event name on ``tx.<event>.<tx_id>`` that announces entry into each state
EVENT_FOR_STATE: dict[TxState, str] = {
    TxState.PENDING: "requested",
    TxState.VOTING: "voting",
    TxState.APPROVED: "approved",
    TxState.SIGNING: "signing",
    TxState.SIGNED: "signed",
    TxState.BROADCAST: "broadcast",
    TxState.CONFIRMED: "confirmed",
    TxState.REJECTED: "rejected",
    TxState.FAILED: "failed",
}
STATE_FOR_EVENT: dict[str, TxState] = {event: state for state, event in EVENT_FOR_STATE.items()}


class IllegalTransition(ValueError):
    def __init__(self, current: TxState | None, new: TxState) -> None:
        self.current = current
        self.new = new
        where = current.value if current is not None else "(none)"
        super().__init__(f"illegal transition {where} -> {new.value}")


def can_transition(current: TxState | None, new: TxState) -> bool:
    """Whether a transaction in ``current`` (None: not yet known) may move to ``new``."""
    if current is None:
        return new is TxState.PENDING
    return new in TRANSITIONS[current]


def check_transition(current: TxState | None, new: TxState) -> None:
    if not can_transition(current, new):
        raise IllegalTransition(current, new)


def is_replay(current: TxState | None, new: TxState) -> bool:
    """True when ``new`` is a state the transaction already reached or passed (a replayed event)."""
    if current is None:
        return False
    if current is new:
        return new not in TRANSITIONS[current]
    return _rank(new) < _rank(current) and not can_transition(current, new)


_ORDER = [
    TxState.PENDING,
    TxState.VOTING,
    TxState.APPROVED,
    TxState.SIGNING,
    TxState.SIGNED,
    TxState.BROADCAST,
    TxState.CONFIRMED,
]


def _rank(state: TxState) -> int:
    if state in (TxState.REJECTED, TxState.FAILED):
        return len(_ORDER)
    return _ORDER.index(state)
