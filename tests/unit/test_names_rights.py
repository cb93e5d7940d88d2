"""``sender_may_publish`` (one compiled expression per identity) agrees with the authorization table read
pattern by pattern with ``subject_matches``, on every identity and on subjects made to sit at the edges of
the patterns (other nodes, extra and missing tokens, KV subjects, wildcard characters)."""

from __future__ import annotations

import itertools
import re

import pytest

from schemas.names import (
    BUCKET_CONFIG,
    BUCKET_KEYS,
    BUCKET_NODES,
    BUCKET_PRESIG,
    BUCKETS,
    KV_READERS,
    SERVICE_IDENTITIES,
    all_identities,
    check_token,
    consumers_of,
    heartbeat_subject,
    is_node,
    kv_reads_of,
    kv_writes_of,
    node_names,
    publish_rights,
    sender_may_publish,
    stream_reads_of,
    subject_matches,
)
from services.runtime.natsconf import js_api_rights_of


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


def test_kv_readers_table() -> None:
    for role, reads in KV_READERS.items():
        assert role == "node" or role in SERVICE_IDENTITIES
        assert set(reads) <= set(BUCKETS) and set(reads.values()) <= {"get", "watch"}
    for node in node_names(5):  # a node makes consumers on these three buckets only
        watched = {b for b, mode in kv_reads_of(node).items() if mode == "watch"}
        assert watched == {BUCKET_CONFIG, BUCKET_KEYS, BUCKET_PRESIG}, node
    assert kv_writes_of("node-3") == [BUCKET_NODES, BUCKET_PRESIG, BUCKET_KEYS]
    assert kv_reads_of("recorder") == {} and kv_reads_of("nobody") == {}


CONSUMER_RIGHT = re.compile(
    r"^\$JS\.(?:API\.CONSUMER\.(?P<op>MSG\.NEXT|[A-Z]+)|ACK)\.(?P<stream>[^.]+)(?:\.(?P<name>[^.]+))?(?:\..+)?$"
)


def test_production_js_api_rights() -> None:
    """No identity but admin lists or inspects consumers it does not own, makes consumers but its own
    durables (with the table's filter) and watches on the buckets it watches, or uses direct get."""
    for ident in all_identities(5):
        if ident == "admin":
            continue
        rights = js_api_rights_of(ident, "own")
        own = consumers_of(ident)
        watched = [b for b, mode in kv_reads_of(ident).items() if mode == "watch"]
        for r in rights:
            assert not r.startswith(("$JS.API.CONSUMER.NAMES", "$JS.API.CONSUMER.LIST", "$JS.API.DIRECT")), r
            assert r not in ("$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST", "$JS.API.INFO", "$JS.FC.>"), r
            if r.startswith("$JS.API.STREAM.MSG.GET."):
                stream = r.rsplit(".", 1)[1]
                bucket = stream[3:] if stream.startswith("KV_") else None
                assert stream in stream_reads_of(ident) or bucket in [
                    *kv_reads_of(ident),
                    *kv_writes_of(ident),
                ], r
                continue
            m = CONSUMER_RIGHT.match(r)
            if m is None:
                assert not r.startswith(("$JS.API.CONSUMER.", "$JS.ACK.")), r
                continue
            op, stream, name = m["op"] or "ACK", m["stream"], m["name"]
            if stream.startswith("KV_"):  # a watch: server-named, on a bucket it watches; never pulled
                assert stream[3:] in watched and (op, name) in (("CREATE", None), ("INFO", "*")), r
            else:
                assert name in own, r
                if op == "CREATE":
                    assert r == f"$JS.API.CONSUMER.CREATE.{stream}.{name}.{own[name]}", r
    assert "$JS.API.CONSUMER.CREATE.KV_config" in js_api_rights_of("node-3")
    assert "$JS.API.CONSUMER.CREATE.KV_bans" not in js_api_rights_of("node-3")
    assert "$JS.API.CONSUMER.CREATE.KV_bans" in js_api_rights_of("consensus")
    assert "$JS.API.STREAM.MSG.GET.TX" in js_api_rights_of("node-3")
    assert not [
        r for r in js_api_rights_of("recorder") if r.startswith("$JS.API.STREAM.MSG.GET.") and "KV_" not in r
    ]


@pytest.mark.parametrize("bad", ["node-3\n", "node-3\n.", "tx\n", "a b", "", "a.b", "*", ">"])
def test_a_token_or_identity_with_a_trailing_newline_or_separator_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        check_token(bad)
    assert not is_node(bad)
