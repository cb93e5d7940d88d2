"""``sender_may_publish`` (one compiled expression per identity) agrees with the authorization table read
pattern by pattern with ``subject_matches``, on every identity and on subjects made to sit at the edges of
the patterns (other nodes, extra and missing tokens, KV subjects, wildcard characters)."""

from __future__ import annotations

import itertools

import pytest

from schemas.names import (
    all_identities,
    check_token,
    heartbeat_subject,
    is_node,
    publish_rights,
    sender_may_publish,
    subject_matches,
)


def by_table(identity: str, subject: str) -> bool:
    if identity == "admin":
        return subject.startswith("node.violation.") or subject == heartbeat_subject("admin")
    return any(subject_matches(p, subject) for p in publish_rights(identity) if not p.startswith("$"))


TOKENS = ["tx", "vote", "proto", "node", "requested", "approved", "t1", "frost", "s", "2", "refused",
          "heartbeat", "violation", "node-1", "node-2", "node-12", "intake", "consensus", "admin", "*", ">",
          "$KV", "presig"]  # fmt: skip


def subjects() -> list[str]:
    out = []
    for n in range(1, 7):
        for combo in itertools.islice(itertools.product(TOKENS, repeat=n), 0, 40_000, 7 if n > 3 else 1):
            out.append(".".join(combo))
    # every identity's own subjects, and another's
    for ident in all_identities(12):
        out += [f"vote.t1.{ident}", f"proto.frost.s.2.{ident}", f"proto.frost.s.2.{ident}.node-1",
                f"node.heartbeat.{ident}", f"node.violation.{ident}", f"tx.requested.{ident}",
                f"vote.t1.{ident}.x", f"proto.frost.s.{ident}"]  # fmt: skip
    return out


def test_the_compiled_rights_match_the_table() -> None:
    subs = subjects()
    assert len(subs) > 10_000
    for ident in [*all_identities(12), "node-99", "nobody", "node-1.x"]:
        for subject in subs:
            assert sender_may_publish(ident, subject) == by_table(ident, subject), (ident, subject)


def test_some_rights_by_name() -> None:
    assert sender_may_publish("node-12", "vote.t1.node-12")
    assert not sender_may_publish("node-1", "vote.t1.node-12")
    assert not sender_may_publish("node-12", "vote.t1.node-1")
    assert sender_may_publish("recorder", "node.violation.node-3")
    assert not sender_may_publish("recorder", "node.violation")
    assert not sender_may_publish("nobody", "node.violation.node-3")


@pytest.mark.parametrize("bad", ["node-3\n", "node-3\n.", "tx\n", "a b", "", "a.b", "*", ">"])
def test_a_token_or_identity_with_a_trailing_newline_or_separator_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_token(bad)
    assert not is_node(bad)
