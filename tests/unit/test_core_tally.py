from __future__ import annotations

import msgspec
import pytest

from core.signer_set import choose_signers
from core.tally import (
    VoteResult,
    add_vote,
    certificate,
    groups,
    mismatched,
    new_round,
    outcome,
    quorum,
    rejection_reasons,
    signing_certificate,
)
from schemas import envelope as E
from schemas.kv import RoundOutcome
from schemas.messages import Vote

NODES = [f"node-{i}" for i in range(1, 6)]


def test_approves_at_t_and_certificate_has_t_envelopes() -> None:
    r = new_round("tx", 5, 4, NODES)
    for i, node in enumerate(NODES[:3]):
        assert add_vote(r, node, True, [], f"env{i}".encode()) is VoteResult.COUNTED
        assert outcome(r) is RoundOutcome.OPEN
    add_vote(r, "node-5", True, [], b"env5")
    assert outcome(r) is RoundOutcome.APPROVED
    assert certificate(r) == [b"env0", b"env1", b"env2", b"env5"]


def test_a_signing_certificate_holds_every_signers_approval() -> None:
    r = new_round("tx", 5, 4, NODES)
    for i, node in enumerate(NODES):
        add_vote(r, node, True, [], f"env{i}".encode())
    assert certificate(r) == [b"env0", b"env1", b"env2", b"env3"]
    # a retry's signer set rotated to node-5, whose vote the t-vote certificate leaves out
    signers = ["node-2", "node-3", "node-4", "node-5"]
    assert signing_certificate(r, signers) == [b"env0", b"env1", b"env2", b"env3", b"env4"]
    assert signing_certificate(r, NODES[:4]) == certificate(r)
    with pytest.raises(ValueError, match="outside the quorum"):
        signing_certificate(r, ["node-1", "node-2", "node-3", "node-9"])


def test_rejects_once_approval_is_impossible() -> None:
    r = new_round("tx", 5, 4, NODES)
    add_vote(r, "node-1", False, ["too big"], b"a")
    assert outcome(r) is RoundOutcome.OPEN  # 4 approvals still possible
    add_vote(r, "node-2", False, ["too big"], b"b")
    assert outcome(r) is RoundOutcome.REJECTED
    assert rejection_reasons(r) == ["node-1: too big", "node-2: too big"]
    with pytest.raises(ValueError):
        certificate(r)


def test_replay_equivocation_and_strangers() -> None:
    r = new_round("tx", 5, 4, NODES)
    assert add_vote(r, "node-1", True, [], b"a") is VoteResult.COUNTED
    assert add_vote(r, "node-1", True, [], b"a") is VoteResult.REPLAY
    assert add_vote(r, "node-1", False, ["x"], b"b") is VoteResult.EQUIVOCATION
    assert add_vote(r, "node-9", True, [], b"c") is VoteResult.UNKNOWN_NODE
    assert r.approve == {"node-1": True} and r.votes == {"node-1": b"a"}


@pytest.mark.parametrize(("n", "t"), [(5, 2), (4, 2), (5, 6), (5, 0)])
def test_threshold_must_be_a_majority(n: int, t: int) -> None:
    with pytest.raises(ValueError):
        new_round("tx", n, t, [f"node-{i}" for i in range(1, n + 1)])


def test_choose_signers_rotates_and_excludes() -> None:
    first = choose_signers(NODES, 4, set(), 1)
    second = choose_signers(NODES, 4, set(), 2)
    assert first == NODES[:4] and second is not None and first != second
    assert choose_signers(NODES, 4, {"node-2"}, 1) == ["node-1", "node-3", "node-4", "node-5"]
    assert choose_signers(NODES, 4, {"node-1", "node-2"}, 1) is None


H = [b"\x01" * 32, b"\x02" * 32]  # what the honest nodes compute (two inputs)
ODD = [b"\x01" * 32, b"\xee" * 32]  # one input's sighash differs


def test_odd_approver_is_left_out_of_the_certificate() -> None:
    r = new_round("tx", 5, 4, NODES)
    add_vote(r, "node-1", True, [], b"odd", ODD)
    for i, node in enumerate(NODES[1:4]):
        add_vote(r, node, True, [], f"env{i}".encode(), H)
        assert outcome(r) is RoundOutcome.OPEN  # node-1's approval does not count with theirs
    add_vote(r, "node-5", True, [], b"env5", H)
    assert outcome(r) is RoundOutcome.APPROVED
    assert quorum(r) == NODES[1:]
    assert certificate(r) == [b"env0", b"env1", b"env2", b"env5"]
    assert mismatched(r) == ["node-1"]


def test_two_groups_the_one_reaching_t_wins() -> None:
    r = new_round("tx", 7, 4, [f"node-{i}" for i in range(1, 8)])
    for node in ("node-1", "node-2", "node-3"):
        add_vote(r, node, True, [], node.encode(), ODD)
    for node in ("node-4", "node-5", "node-6"):
        add_vote(r, node, True, [], node.encode(), H)
    assert outcome(r) is RoundOutcome.OPEN and quorum(r) is None and mismatched(r) == []
    assert groups(r) == [["node-1", "node-2", "node-3"], ["node-4", "node-5", "node-6"]]
    add_vote(r, "node-7", True, [], b"node-7", H)
    assert outcome(r) is RoundOutcome.APPROVED
    assert quorum(r) == ["node-4", "node-5", "node-6", "node-7"]
    assert certificate(r) == [b"node-4", b"node-5", b"node-6", b"node-7"]
    assert mismatched(r) == ["node-1", "node-2", "node-3"]


def test_rejected_once_no_group_can_reach_t() -> None:
    r = new_round("tx", 5, 4, NODES)
    add_vote(r, "node-1", True, [], b"a", ODD)
    add_vote(r, "node-2", True, [], b"b", H)
    assert outcome(r) is RoundOutcome.OPEN  # 1 + 3 outstanding: H can still get 4
    add_vote(r, "node-3", True, [], b"c", H)
    assert outcome(r) is RoundOutcome.OPEN  # 2 + 2 outstanding
    add_vote(r, "node-4", False, ["too big"], b"d")
    # no rejection majority (1 of 5), but the largest group has 2 and only node-5 is left
    assert outcome(r) is RoundOutcome.REJECTED
    assert rejection_reasons(r) == [
        "node-4: too big",
        "approving nodes disagree on the sighashes: node-2, node-3 / node-1",
    ]
    with pytest.raises(ValueError):
        certificate(r)


def test_split_approvals_alone_make_approval_impossible() -> None:
    r = new_round("tx", 5, 3, NODES)
    add_vote(r, "node-1", True, [], b"a", ODD)
    add_vote(r, "node-2", True, [], b"b", ODD)
    add_vote(r, "node-3", True, [], b"c", H)
    assert outcome(r) is RoundOutcome.OPEN  # ODD: 2 + 2 outstanding
    add_vote(r, "node-4", True, [], b"d", [H[0]])  # a third list
    assert outcome(r) is RoundOutcome.OPEN  # ODD can still reach 3 with node-5
    add_vote(r, "node-5", True, [], b"e", H)
    assert outcome(r) is RoundOutcome.REJECTED  # 2 + 2 + 1, nobody left


def test_approving_other_sighashes_twice_is_equivocation() -> None:
    r = new_round("tx", 5, 4, NODES)
    assert add_vote(r, "node-1", True, [], b"a", H) is VoteResult.COUNTED
    assert add_vote(r, "node-1", True, [], b"a", H) is VoteResult.REPLAY
    assert add_vote(r, "node-1", True, [], b"b", ODD) is VoteResult.EQUIVOCATION
    assert r.sighashes == {"node-1": H} and r.votes == {"node-1": b"a"}


def _vote_envelope(node: str, sighashes: list[bytes]) -> bytes:
    vote = Vote(tx_id="tx", node=node, approve=True, sighashes=sighashes)
    env = E.Envelope(
        v=1,
        sender=node,
        type="Vote",
        msg_id=f"vote.tx.{node}",
        ts_ms=0,
        subject=f"vote.tx.{node}",
        payload=msgspec.msgpack.encode(vote),
    )
    return E.encode(env)


def test_votes_counted_before_sighashes_were_kept_are_read_from_their_envelopes() -> None:
    r = new_round("tx", 5, 4, NODES)
    for node in NODES[:2]:  # as an earlier version stored them: envelope only
        r.approve[node] = True
        r.votes[node] = _vote_envelope(node, H)
    r.approve["node-3"] = True
    r.votes["node-3"] = _vote_envelope("node-3", ODD)
    add_vote(r, "node-4", True, [], _vote_envelope("node-4", H), H)
    assert outcome(r) is RoundOutcome.OPEN
    add_vote(r, "node-5", True, [], _vote_envelope("node-5", H), H)
    assert quorum(r) == ["node-1", "node-2", "node-4", "node-5"] and mismatched(r) == ["node-3"]
