"""Vote counting for one voting round (pure), over the ``RoundRecord`` kept in KV ``rounds``.

A signer signs only if every vote of the quorum certificate approves exactly the sighashes it computed
itself, so approvals count per *sighash list*: the approving votes are grouped by the exact list of
sighashes they approve, and the round is approved as soon as one group reaches ``t`` (at most one can,
as ``2t > n``). That group is the quorum: the certificate and the signer sets are drawn from it only; an
approver outside it (it approved something else) is reported, never put in a certificate. The round is
rejected as soon as approval is impossible: no group, not even the largest, can reach ``t`` with the
votes still outstanding (with one sighash list, that is more than ``n - t`` rejections).

A node's first vote counts; a different second vote from the same node (the other verdict, or an
approval of other sighashes) is equivocation (reported, not counted); an identical repeat is a replay and
is ignored. The votes of a round that no longer takes them (it ended) are late: not counted.

:func:`add_votes` and :func:`open_round` are the round changes consensus writes by compare-and-set: they
count, and move the round along the lifecycle (:func:`core.round.advance`) when the count decides it,
returning what the step announces and reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import msgspec

from core.lifecycle import Event, TxState, Violation, allows
from core.round import advance, round_state
from schemas import envelope as E
from schemas.kv import RoundOutcome, RoundRecord
from schemas.messages import Vote

# the sighash list an approval is for; a node name when it cannot be known (it then matches nobody)
GroupKey = tuple[bytes, ...] | str


class VoteResult(StrEnum):
    COUNTED = "counted"
    REPLAY = "replay"
    EQUIVOCATION = "equivocation"
    UNKNOWN_NODE = "unknown-node"
    LATE = "late"  # the round ended: not counted


def new_round(tx_id: str, n: int, t: int, nodes: list[str]) -> RoundRecord:
    if not 1 <= t <= n or 2 * t <= n:
        raise ValueError(f"threshold {t} of {n} must satisfy n/2 < t <= n")
    if len(nodes) != n or len(set(nodes)) != n:
        raise ValueError("nodes must be n distinct names")
    return RoundRecord(tx_id=tx_id, n=n, t=t, nodes=list(nodes))


def add_vote(
    rnd: RoundRecord,
    node: str,
    approve: bool,
    reasons: list[str],
    envelope: bytes,
    sighashes: Sequence[bytes] = (),
    *,
    late: bool = False,
) -> VoteResult:
    """Count a node's vote in the round. ``late``: the round takes no more votes (a repeat is still
    recognised as a replay or an equivocation, a first vote is not counted)."""
    if node not in rnd.nodes:
        return VoteResult.UNKNOWN_NODE
    if node in rnd.approve:
        if rnd.approve[node] != approve:
            return VoteResult.EQUIVOCATION
        if approve and node in rnd.sighashes and rnd.sighashes[node] != list(sighashes):
            return VoteResult.EQUIVOCATION  # approved twice, different transactions
        return VoteResult.REPLAY
    if late:
        return VoteResult.LATE
    rnd.approve[node] = approve
    rnd.votes[node] = envelope
    if approve:
        rnd.sighashes[node] = list(sighashes)
    else:
        rnd.reasons[node] = list(reasons)
    return VoteResult.COUNTED


def approvers(rnd: RoundRecord) -> list[str]:
    """Every approving node, whatever it approved (in node order)."""
    return [n for n in rnd.nodes if rnd.approve.get(n) is True]


def groups(rnd: RoundRecord) -> list[list[str]]:
    """The approvers grouped by the exact sighash list they approve: largest group first (ties: the one
    whose first node comes first), each in node order."""
    by_key: dict[GroupKey, list[str]] = {}
    for node in approvers(rnd):
        by_key.setdefault(_approved_sighashes(rnd, node), []).append(node)
    return sorted(by_key.values(), key=lambda g: (-len(g), rnd.nodes.index(g[0])))


def quorum(rnd: RoundRecord) -> list[str] | None:
    """The group of at least ``t`` approvers of one sighash list (node order), None while there is none."""
    gs = groups(rnd)
    return gs[0] if gs and len(gs[0]) >= rnd.t else None


def outcome(rnd: RoundRecord) -> RoundOutcome:
    gs = groups(rnd)
    largest = len(gs[0]) if gs else 0
    if largest >= rnd.t:
        return RoundOutcome.APPROVED
    outstanding = sum(1 for n in rnd.nodes if n not in rnd.approve)
    if largest + outstanding < rnd.t:
        return RoundOutcome.REJECTED
    return RoundOutcome.OPEN


def certificate(rnd: RoundRecord) -> list[bytes]:
    """The ``t`` approving envelopes of the quorum that prove it (in node order)."""
    q = quorum(rnd)
    if q is None:
        raise ValueError("round is not approved")
    return [rnd.votes[n] for n in q[: rnd.t]]


def signing_certificate(rnd: RoundRecord, signers: list[str]) -> list[bytes]:
    """The certificate of a signing attempt: :func:`certificate` plus the approving vote of every signer
    it leaves out (in node order), so each signer sees that the whole signer set approved these
    sighashes."""
    q = quorum(rnd)
    if q is None:
        raise ValueError("round is not approved")
    outside = [s for s in signers if s not in q]
    if outside:
        raise ValueError(f"signers outside the quorum: {outside}")
    chosen = set(q[: rnd.t]) | set(signers)
    return [rnd.votes[n] for n in q if n in chosen]


def mismatched(rnd: RoundRecord) -> list[str]:
    """Approvers outside the quorum (they approved other sighashes); empty while there is no quorum."""
    q = quorum(rnd)
    if q is None:
        return []
    return [n for n in approvers(rnd) if n not in q]


def rejection_reasons(rnd: RoundRecord) -> list[str]:
    out: list[str] = []
    for node in rnd.nodes:
        for reason in rnd.reasons.get(node, []):
            line = f"{node}: {reason}"
            if line not in out:
                out.append(line)
    gs = groups(rnd)
    if len(gs) > 1:
        split = " / ".join(", ".join(g) for g in gs)
        out.append(f"approving nodes disagree on the sighashes: {split}")
    return out


# the detail of each violation a vote can cause
VIOLATION_DETAIL: dict[Violation, str] = {
    Violation.EQUIVOCATION: "voted both ways",
    Violation.SIGHASH_MISMATCH: "approved other sighashes than the quorum",
}


@dataclass(slots=True)
class RoundChange:
    """What one change of a round did, for the caller to act on once the write succeeded."""

    counted: list[str] = field(default_factory=list)  # nodes whose vote this change counted
    reports: list[tuple[str, Violation]] = field(default_factory=list)  # (offender, kind)
    opened: bool = False  # this change opened the round
    approved: bool = False  # this change approved the round and started attempt 1

    @property
    def changed(self) -> bool:
        return self.opened or self.approved or bool(self.counted)


@dataclass(frozen=True, slots=True)
class CastVote:
    """One verified vote, as :func:`add_votes` takes it."""

    node: str
    approve: bool
    reasons: Sequence[str]
    envelope: bytes
    sighashes: Sequence[bytes]


def open_round(rnd: RoundRecord, amount: int, inputs: int, now_ms: int) -> RoundChange:
    """``tx.voting`` went out: open the round (once) and, if every vote is in already, decide it."""
    change = RoundChange()
    if round_state(rnd) is not TxState.PENDING:
        return change  # opened before (a replayed request), or ended
    advance(rnd, Event.VOTING_OPENED, now_ms)
    rnd.amount = amount
    rnd.inputs = inputs
    change.opened = True
    _approve_if_decided(rnd, change, now_ms)
    return change


def add_votes(rnd: RoundRecord, votes: Sequence[CastVote], now_ms: int) -> RoundChange:
    """Count ``votes`` (first vote counts) and, when they complete the quorum of an open round, approve
    it and start attempt 1 in the same change. Equivocations and approvals of other sighashes than the
    quorum's are reported; the votes of a round that ended are late and not counted."""
    change = RoundChange()
    # counting a vote changes no lifecycle field: the table is asked whether the round takes votes
    late = not allows(round_state(rnd), Event.VOTE_COUNTED)
    for v in votes:
        result = add_vote(rnd, v.node, v.approve, list(v.reasons), v.envelope, v.sighashes, late=late)
        if result is VoteResult.COUNTED:
            change.counted.append(v.node)
        elif result is VoteResult.EQUIVOCATION:
            _report(rnd, change, v.node, Event.VOTE_EQUIVOCATED, now_ms)
    if not change.counted:
        return change
    if not _approve_if_decided(rnd, change, now_ms) and rnd.outcome == RoundOutcome.APPROVED:
        outside = set(mismatched(rnd))  # a late approver of other sighashes
        for node in change.counted:
            if node in outside:
                _report(rnd, change, node, Event.VOTE_MISMATCHED, now_ms)
    return change


def approve_if_decided(rnd: RoundRecord, now_ms: int) -> RoundChange:
    """Approve a voting round whose votes already hold a quorum (and start attempt 1), if it does."""
    change = RoundChange()
    _approve_if_decided(rnd, change, now_ms)
    return change


def reject_if_decided(rnd: RoundRecord, now_ms: int) -> bool:
    """End a voting round whose votes can no longer reach a quorum; False when there is nothing to do
    (already rejected, or not decided that way)."""
    if round_state(rnd) is not TxState.VOTING or outcome(rnd) is not RoundOutcome.REJECTED:
        return False
    advance(rnd, Event.REJECTED, now_ms)
    return True


def _approve_if_decided(rnd: RoundRecord, change: RoundChange, now_ms: int) -> bool:
    """If the round is voting and now has a quorum: approve it and start attempt 1 (one write); the
    approvers of other sighashes are reported."""
    if round_state(rnd) is not TxState.VOTING or outcome(rnd) is not RoundOutcome.APPROVED:
        return False
    advance(rnd, Event.QUORUM_REACHED, now_ms)
    advance(rnd, Event.ATTEMPT_STARTED, now_ms)
    change.approved = True
    for node in mismatched(rnd):
        _report(rnd, change, node, Event.VOTE_MISMATCHED, now_ms)
    return True


def _report(rnd: RoundRecord, change: RoundChange, node: str, event: Event, now_ms: int) -> None:
    report = advance(rnd, event, now_ms).report
    if report is not None:
        change.reports.append((node, report))


def _approved_sighashes(rnd: RoundRecord, node: str) -> GroupKey:
    stored = rnd.sighashes.get(node)
    if stored is not None:
        return tuple(stored)
    # a vote counted before the round kept sighashes: read them from the stored (verified) envelope
    try:
        env = E.decode(rnd.votes[node])
        vote = msgspec.msgpack.decode(env.payload, type=Vote)
    except (KeyError, msgspec.DecodeError, msgspec.ValidationError):
        return node
    return tuple(vote.sighashes)
