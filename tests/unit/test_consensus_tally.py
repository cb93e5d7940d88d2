from __future__ import annotations

import pytest

from services.consensus.tally import (
    Outcome,
    VoteResult,
    add_vote,
    certificate,
    choose_signers,
    new_round,
    outcome,
    rejection_reasons,
)

NODES = [f"node-{i}" for i in range(1, 6)]


def test_approves_at_t_and_certificate_has_t_envelopes() -> None:
    r = new_round("tx", 5, 4, NODES)
    for i, node in enumerate(NODES[:3]):
        assert add_vote(r, node, True, [], f"env{i}".encode()) is VoteResult.COUNTED
        assert outcome(r) is Outcome.OPEN
    add_vote(r, "node-5", True, [], b"env5")
    assert outcome(r) is Outcome.APPROVED
    assert certificate(r) == [b"env0", b"env1", b"env2", b"env5"]


def test_rejects_once_approval_is_impossible() -> None:
    r = new_round("tx", 5, 4, NODES)
    add_vote(r, "node-1", False, ["too big"], b"a")
    assert outcome(r) is Outcome.OPEN  # 4 approvals still possible
    add_vote(r, "node-2", False, ["too big"], b"b")
    assert outcome(r) is Outcome.REJECTED
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
