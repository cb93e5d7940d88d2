"""Vote counting for one voting round (pure).

A round decides as soon as the outcome is certain: approved at ``t`` approvals; rejected as soon as
approval is impossible (more than ``n - t`` rejections). A node's first vote counts; a different second
vote from the same node is equivocation (reported, not counted); an identical repeat is a replay and is
ignored. Signer sets for signing attempts are drawn from the approving nodes, skipping banned or
unavailable ones and, on retries, the ones that failed before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"


@dataclass
class Round:
    tx_id: str
    n: int
    t: int
    nodes: list[str]
    approvals: dict[str, bytes] = field(default_factory=dict)  # node -> raw signed vote envelope
    rejections: dict[str, bytes] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.t <= self.n or 2 * self.t <= self.n:
            raise ValueError(f"threshold {self.t} of {self.n} must satisfy n/2 < t <= n")
        if len(self.nodes) != self.n or len(set(self.nodes)) != self.n:
            raise ValueError("nodes must be n distinct names")

    @property
    def outcome(self) -> Outcome:
        if len(self.approvals) >= self.t:
            return Outcome.APPROVED
        if len(self.rejections) > self.n - self.t:
            return Outcome.REJECTED
        return Outcome.OPEN


class VoteResult(StrEnum):
    COUNTED = "counted"
    REPLAY = "replay"
    EQUIVOCATION = "equivocation"
    UNKNOWN_NODE = "unknown-node"


def add_vote(rnd: Round, node: str, approve: bool, reasons: list[str], envelope: bytes) -> VoteResult:
    if node not in rnd.nodes:
        return VoteResult.UNKNOWN_NODE
    previous = rnd.approvals.get(node) if node in rnd.approvals else rnd.rejections.get(node)
    if previous is not None:
        same_side = (node in rnd.approvals) == approve
        return VoteResult.REPLAY if same_side else VoteResult.EQUIVOCATION
    (rnd.approvals if approve else rnd.rejections)[node] = envelope
    if not approve:
        rnd.reasons[node] = list(reasons)
    return VoteResult.COUNTED


def certificate(rnd: Round) -> list[bytes]:
    """The ``t`` approving envelopes that prove the quorum (in node order)."""
    if rnd.outcome is not Outcome.APPROVED:
        raise ValueError("round is not approved")
    chosen = [n for n in rnd.nodes if n in rnd.approvals][: rnd.t]
    return [rnd.approvals[n] for n in chosen]


def rejection_reasons(rnd: Round) -> list[str]:
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
