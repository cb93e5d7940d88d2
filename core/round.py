"""A spend's lifecycle state as consensus keeps it: the ``RoundRecord`` in KV ``rounds`` (pure).

The record's fields spell the state (:func:`round_state`): ``opened`` (``tx.voting`` went out),
``outcome`` (how the vote ended), ``attempt`` (the signing attempt running), ``done`` and ``final``
(how the spend ended). :func:`advance` is the only code that changes those fields: it asks
:func:`core.lifecycle.transition` first, so a record moves only along the lifecycle table, and it stamps
the step's time (passed in) where the record keeps one. Vote counting itself (``votes``, ``approve``,
``sighashes``) is :mod:`core.tally`; the signer sets and failed signers are :mod:`core.signer_set`.
"""

from __future__ import annotations

from core.lifecycle import (
    ROUND_STATES,
    Effects,
    Event,
    IllegalTransition,
    TxState,
    transition,
)
from schemas.kv import FinalOutcome, RoundOutcome, RoundRecord


def round_state(rnd: RoundRecord) -> TxState:
    """The lifecycle state the record spells. A round closed before rounds recorded ``final`` (and
    still approved) reads as failed: both are ends, and consensus does nothing more with either."""
    if rnd.final is not None:
        return TxState(rnd.final)
    if rnd.outcome == RoundOutcome.REJECTED:
        return TxState.REJECTED
    if rnd.done:
        return TxState.FAILED
    if rnd.outcome == RoundOutcome.APPROVED:
        return TxState.SIGNING if rnd.attempt > 0 else TxState.APPROVED
    return TxState.VOTING if rnd.opened else TxState.PENDING


def advance(rnd: RoundRecord, event: Event, now_ms: int) -> Effects:
    """Apply ``event`` to the round in place; raises :class:`core.lifecycle.IllegalTransition` (and
    changes nothing) when the lifecycle does not allow it, or leads to a state a round does not keep."""
    state = round_state(rnd)
    new, effects = transition(state, event, now_ms)
    if new not in ROUND_STATES:
        raise IllegalTransition(state, event)  # broadcast and confirmation are not kept in rounds
    if event is Event.VOTING_OPENED:
        rnd.opened = True
    elif event is Event.QUORUM_REACHED:
        rnd.outcome = RoundOutcome.APPROVED
        rnd.approved_ms = now_ms
    elif event is Event.REJECTED:
        rnd.outcome = RoundOutcome.REJECTED
        rnd.done = True
    elif event is Event.ATTEMPT_STARTED:
        rnd.attempt += 1
        rnd.attempt_started_ms = now_ms
        if not rnd.approved_ms:
            rnd.approved_ms = now_ms
    elif event is Event.ATTEMPT_WAITING:
        rnd.attempt_started_ms = now_ms  # the attempt is alive: its clock restarts
    elif event is Event.SIGNED:
        rnd.done = True
        rnd.final = FinalOutcome.SIGNED
    elif event is Event.FAILED:
        rnd.done = True
        rnd.final = FinalOutcome.FAILED
    return effects


def close(rnd: RoundRecord, final: FinalOutcome, now_ms: int) -> bool:
    """End the round with the spend's final outcome: False (nothing to write) when it already ended."""
    if rnd.done:
        return False
    advance(rnd, Event.SIGNED if final is FinalOutcome.SIGNED else Event.FAILED, now_ms)
    return True
