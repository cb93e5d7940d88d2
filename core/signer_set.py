"""Who signs an approved spend, and the next attempt after a refusal, a blame or a timeout (pure).

A signer set is ``t`` nodes of the quorum (the approvers of the certified sighashes; nobody else can
sign, as each signer checks that it approved the spend itself). Attempt ``a`` rotates the usable nodes by
``a - 1``, so successive attempts try different sets. Nodes that failed an earlier attempt (refused,
blamed, timed out, or had no nonce when claimed) are passed over, unless that leaves fewer than ``t``:
then every approver who is not banned is tried again. A node without a pooled nonce per input right now
is passed over too; if that is what leaves too few, the attempt waits for nonces (it is not used up),
otherwise there are simply not ``t`` approvers left and the spend fails.

:func:`next_attempt` starts the next attempt on the round record by the lifecycle (the cause first:
``attempt-refused``, ``attempt-blamed`` or ``attempt-timed-out``, then ``attempt-started``), so a retry
is one compare-and-set from the attempt it replaces: however many instances notice a timeout, one retry
happens. Time is passed in.
"""

from __future__ import annotations

from collections.abc import Collection
from enum import StrEnum

from core.lifecycle import Event, TxState
from core.round import advance, round_state
from schemas.kv import RoundRecord


class NoSignerSet(StrEnum):
    WAIT_FOR_NONCES = "wait-for-nonces"  # t approvers are available, but not all with nonces now
    TOO_FEW = "too-few"  # fewer than t approvers that are not banned


def choose_signers(candidates: list[str], t: int, exclude: set[str], attempt: int) -> list[str] | None:
    """``t`` signers among the candidates not excluded, rotated by the attempt number; None if too few."""
    usable = [c for c in candidates if c not in exclude]
    if len(usable) < t:
        return None
    start = (attempt - 1) % len(usable)
    rotated = usable[start:] + usable[:start]
    return sorted(rotated[:t], key=candidates.index)


def signer_set(
    quorum: list[str],
    t: int,
    attempt: int,
    *,
    failed: Collection[str],
    banned: Collection[str],
    short: Collection[str],
) -> list[str] | NoSignerSet:
    """The signers of ``attempt``: ``t`` of the quorum, none banned or ``short`` of nonces, avoiding the
    nodes that ``failed`` before while enough others are left."""
    banned, short = set(banned), set(short)
    signers = choose_signers(quorum, t, set(failed) | banned | short, attempt)
    if signers is None:  # everybody failed once: try again with every approver that is not banned
        signers = choose_signers(quorum, t, banned | short, attempt)
    if signers is not None:
        return signers
    if choose_signers(quorum, t, banned, attempt) is None:
        return NoSignerSet.TOO_FEW
    return NoSignerSet.WAIT_FOR_NONCES


def next_attempt(
    rnd: RoundRecord,
    now_ms: int,
    timeout_ms: int,
    *,
    cause: Event | None = None,
    failed: str | None = None,
    from_attempt: int | None = None,
) -> int | None:
    """Start the next signing attempt in place and return its number, or None (nothing changed) when the
    round is not being signed, has moved past ``from_attempt``, or (``cause`` ``attempt-timed-out``) its
    attempt was started less than ``timeout_ms`` ago. ``failed``: the signer the ``cause`` blames."""
    state = round_state(rnd)
    if state not in (TxState.APPROVED, TxState.SIGNING):
        return None
    if from_attempt is not None and rnd.attempt != from_attempt:
        return None  # somebody already moved on
    if cause is Event.ATTEMPT_TIMED_OUT and not attempt_expired(rnd, now_ms, timeout_ms):
        return None  # the attempt was (re)started since: not expired after all
    if cause is not None and state is TxState.SIGNING:
        advance(rnd, cause, now_ms)
    if failed and failed not in rnd.failed_signers:
        rnd.failed_signers.append(failed)
    advance(rnd, Event.ATTEMPT_STARTED, now_ms)
    return rnd.attempt


def wait_for_nonces(rnd: RoundRecord, attempt: int, now_ms: int) -> bool:
    """Attempt ``attempt`` waits for nonces: restart its clock (it is alive). False when the round moved
    on (another attempt, or it ended)."""
    if round_state(rnd) is not TxState.SIGNING or rnd.attempt != attempt:
        return False
    advance(rnd, Event.ATTEMPT_WAITING, now_ms)
    return True


def mark_failed(rnd: RoundRecord, nodes: list[str]) -> bool:
    """Remember ``nodes`` as failed signers (passed over next time); False when nothing is new."""
    new = [n for n in nodes if n not in rnd.failed_signers]
    rnd.failed_signers.extend(new)
    return bool(new)


def attempt_expired(rnd: RoundRecord, now_ms: int, timeout_ms: int) -> bool:
    return now_ms - rnd.attempt_started_ms >= timeout_ms


def exhausted(attempt: int, max_attempts: int) -> bool:
    """Whether ``attempt`` is one more than a spend may have: it is given up instead."""
    return attempt > max_attempts


def nonce_wait_over(rnd: RoundRecord, now_ms: int, max_wait_ms: int) -> bool:
    """Whether the spend has waited for nonces ``max_wait_ms`` since it was approved."""
    return now_ms - (rnd.approved_ms or rnd.attempt_started_ms) >= max_wait_ms
