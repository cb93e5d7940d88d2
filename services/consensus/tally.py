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
is ignored. Signer sets for signing attempts are drawn from the quorum, skipping the nodes that failed
before (rotating with the attempt number).
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

import msgspec

from schemas import envelope as E
from schemas.kv import RoundRecord
from schemas.messages import Vote

# the sighash list an approval is for; a node name when it cannot be known (it then matches nobody)
GroupKey = tuple[bytes, ...] | str


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


def add_vote(
    rnd: RoundRecord,
    node: str,
    approve: bool,
    reasons: list[str],
    envelope: bytes,
    sighashes: Sequence[bytes] = (),
) -> VoteResult:
    if node not in rnd.nodes:
        return VoteResult.UNKNOWN_NODE
    if node in rnd.approve:
        if rnd.approve[node] != approve:
            return VoteResult.EQUIVOCATION
        if approve and node in rnd.sighashes and rnd.sighashes[node] != list(sighashes):
            return VoteResult.EQUIVOCATION  # approved twice, different transactions
        return VoteResult.REPLAY
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


def outcome(rnd: RoundRecord) -> Outcome:
    gs = groups(rnd)
    largest = len(gs[0]) if gs else 0
    if largest >= rnd.t:
        return Outcome.APPROVED
    outstanding = sum(1 for n in rnd.nodes if n not in rnd.approve)
    if largest + outstanding < rnd.t:
        return Outcome.REJECTED
    return Outcome.OPEN


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


def choose_signers(candidates: list[str], t: int, exclude: set[str], attempt: int) -> list[str] | None:
    """``t`` signers among the candidates not excluded, rotated by the attempt number; None if too few."""
    usable = [c for c in candidates if c not in exclude]
    if len(usable) < t:
        return None
    start = (attempt - 1) % len(usable)
    rotated = usable[start:] + usable[:start]
    return sorted(rotated[:t], key=candidates.index)


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
