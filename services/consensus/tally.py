"""Vote counting for one voting round (pure), over the ``RoundRecord`` kept in KV ``rounds``.

A round decides as soon as the outcome is certain: approved at ``t`` approvals; rejected as soon as
approval is impossible (more than ``n - t`` rejections). A node's first vote counts; a different second
vote from the same node is equivocation (reported, not counted); an identical repeat is a replay and is
ignored. Signer sets for signing attempts are drawn from the approving nodes, skipping the ones that
failed before (rotating with the attempt number).
"""

from __future__ import annotations

from enum import StrEnum

from schemas.kv import RoundRecord


class Outcome(StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"


class VoteResult(StrEnum):
    COUNTED = "counted"
    REPLAY = "replay"
    EQUIVOCATION = "equivocation"
    UNKNOWN_NODE = "unknown-node"


def new_round(tx_id: str, n: int, t: int, nodes: list[str]) -> RoundRecord:
    if not 1 <= t <= n or 2 * t <= n:
        raise ValueError(f"threshold {t} of {n} must satisfy n/2 < t <= n")
    if len(nodes) != n or len(set(nodes)) != n:
        raise ValueError("nodes must be n distinct names")
    return RoundRecord(tx_id=tx_id, n=n, t=t, nodes=list(nodes))


def outcome(rnd: RoundRecord) -> Outcome:
    approvals = sum(1 for v in rnd.approve.values() if v)
    rejections = len(rnd.approve) - approvals
    if approvals >= rnd.t:
        return Outcome.APPROVED
    if rejections > rnd.n - rnd.t:
        return Outcome.REJECTED
    return Outcome.OPEN


def add_vote(rnd: RoundRecord, node: str, approve: bool, reasons: list[str], envelope: bytes) -> VoteResult:
    if node not in rnd.nodes:
        return VoteResult.UNKNOWN_NODE
    if node in rnd.approve:
        return VoteResult.REPLAY if rnd.approve[node] == approve else VoteResult.EQUIVOCATION
    rnd.approve[node] = approve
    rnd.votes[node] = envelope
    if not approve:
        rnd.reasons[node] = list(reasons)
    return VoteResult.COUNTED


def approvers(rnd: RoundRecord) -> list[str]:
    return [n for n in rnd.nodes if rnd.approve.get(n) is True]


def certificate(rnd: RoundRecord) -> list[bytes]:
    """The ``t`` approving envelopes that prove the quorum (in node order)."""
    if outcome(rnd) is not Outcome.APPROVED:
        raise ValueError("round is not approved")
    return [rnd.votes[n] for n in approvers(rnd)[: rnd.t]]


def rejection_reasons(rnd: RoundRecord) -> list[str]:
    out: list[str] = []
    for node in rnd.nodes:
        for reason in rnd.reasons.get(node, []):
            line = f"{node}: {reason}"
            if line not in out:
                out.append(line)
    return out


def choose_signers(candidates: list[str], t: int, exclude: set[str], attempt: int) -> list[str] | None:
    """``t`` signers among the candidates not excluded, rotated by the attempt number; None if too few."""
    usable = [c for c in candidates if c not in exclude]
    if len(usable) < t:
        return None
    start = (attempt - 1) % len(usable)
    rotated = usable[start:] + usable[:start]
    return sorted(rotated[:t], key=candidates.index)
