"""The ChillDKG participant refuses a session the coordinator shaped: a threshold other than the configured
one, other participants, or a host key that is not the one its node published. Every honest node
refuses, reports the coordinator with its signed start as evidence, sends nothing more for the session,
and never holds a share of it. An honest session ends with every node holding a share and having signed
its statement of the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import kv as K
from schemas.messages import DkgMessage, DkgStart
from schemas.names import proto_subject
from services.signer.dkg_participant import DkgParticipant, DkgRefused, check_session
from tests.unit.dkg_cluster import NODES, Cluster, T, make_cluster, start_of
from tss import chilldkg


def assert_refused_by_all(cluster: Cluster, session: str, kind: str, refusers: list[str] = NODES) -> None:
    start_subject = proto_subject("chilldkg", session, 0, "consensus")
    for node in refusers:
        result = cluster.result(node, session)
        assert result is not None and not result.ok and "refused" in result.reason, (node, result)
        assert cluster.sent(node, session, 1) == [], node  # nothing of the protocol was sent
        assert not cluster.keystores[node].has_share(K.DEFAULT_KEY_ID), node
        assert session not in cluster.nodes[node].sessions
        reports = [r for r in cluster.bus(node).reports if r.kind == kind]
        assert len(reports) == 1, (node, cluster.bus(node).reports)
        assert reports[0].offender == "consensus" and reports[0].subject == start_subject
        assert reports[0].raw  # the start as consensus signed it


@pytest.mark.parametrize("threshold", [1, 2, T - 1, T + 1, len(NODES), len(NODES) + 1])
async def test_a_threshold_other_than_the_configured_one_is_refused_by_every_node(
    tmp_path: Path, threshold: int
) -> None:
    cluster = await make_cluster(tmp_path)
    start = await start_of(cluster, threshold=threshold)
    record = await cluster.run(start)
    assert record is None  # the coordinator never got a first message
    assert_refused_by_all(cluster, "s1", "dkg-bad-threshold")


async def test_a_substituted_host_key_is_refused_by_every_node(tmp_path: Path) -> None:
    cluster = await make_cluster(tmp_path)
    held_by_coordinator = chilldkg.hostpubkey_gen(bytes(range(1, 33)))
    hostpubkeys = await cluster.hostpubkeys()
    hostpubkeys[1] = held_by_coordinator  # node-2's
    start = await start_of(cluster, hostpubkeys=hostpubkeys)
    assert await cluster.run(start) is None
    assert_refused_by_all(cluster, "s1", "dkg-bad-hostpubkey")


async def test_later_messages_of_a_refused_session_leave_no_share(tmp_path: Path) -> None:
    """The coordinator goes on as if the nodes had taken part: they ignore it (and never hold a share)."""
    cluster = await make_cluster(tmp_path)
    start = await start_of(cluster, threshold=1)
    await cluster.deliver(start, "s1", 0)
    # a real session's messages, under the refused session's id
    good = await start_of(cluster, session="s2")
    record = await cluster.run(good)
    assert record is not None
    for round_ in (2, 4):
        data = cluster.sent("node-1", "s2", round_ - 1)[-1].data
        await cluster.deliver(DkgMessage(session_id="s1", round=round_, data=data), "s1", round_)
    for node in NODES:
        assert cluster.sent(node, "s1", 1) == [] and cluster.sent(node, "s1", 3) == []
        assert "s1" not in cluster.nodes[node].sessions


async def test_other_participants_are_refused(tmp_path: Path) -> None:
    cluster = await make_cluster(tmp_path)
    keys = await cluster.hostpubkeys()
    order = [NODES[1], NODES[0], *NODES[2:]]
    start = await start_of(cluster, nodes=order, hostpubkeys=[keys[1], keys[0], *keys[2:]])
    assert await cluster.run(start) is None
    assert_refused_by_all(cluster, "s1", "dkg-bad-participants")


async def test_a_host_key_nobody_published_signed_is_not_taken(tmp_path: Path) -> None:
    """The coordinator writes node-2's host key entry itself: the value does not verify as node-2's, so no
    node can check node-2's key and none takes part."""
    cluster = await make_cluster(tmp_path)
    forged = chilldkg.hostpubkey_gen(bytes(range(1, 33)))
    hostpubkeys = await cluster.hostpubkeys()
    hostpubkeys[1] = forged
    kv = await cluster.bus("consensus").kv("keys")
    del kv.data[K.hostpubkey_key("node-2")]
    consensus_keys = await cluster.signed("consensus")
    await consensus_keys.put(K.hostpubkey_key("node-2"), K.HostPubkey(node="node-2", hostpubkey=forged))
    start = await start_of(cluster, hostpubkeys=hostpubkeys)
    assert await cluster.run(start) is None
    for node in NODES:
        result = cluster.result(node, "s1")
        assert result is not None and not result.ok, node
        assert not cluster.keystores[node].has_share(K.DEFAULT_KEY_ID)
        assert cluster.sent(node, "s1", 1) == []


async def test_an_honest_session_gives_every_node_a_share_and_a_signed_statement(tmp_path: Path) -> None:
    cluster = await make_cluster(tmp_path)
    start = await start_of(cluster)
    record = await cluster.run(start)
    assert record is not None
    keys = await cluster.signed("intake")
    for node in NODES:
        result = cluster.result(node, "s1")
        assert result is not None and result.ok and result.threshold_pubkey == record.threshold_pubkey
        share = cluster.keystores[node].load_share(K.DEFAULT_KEY_ID)
        assert share.t == T and share.threshold_pubkey == record.threshold_pubkey
        stated = await keys.get(K.key_result_key("frost", K.DEFAULT_KEY_ID, node), K.KeyResultStatement)
        assert stated is not None and stated.sender == node
        assert stated.value == record.statement()
        assert cluster.bus(node).reports == []


async def test_a_node_restates_a_result_it_holds_a_share_of(tmp_path: Path) -> None:
    """A node that stopped between storing its share and its statement states it at its next start, after
    checking the record against its own share; a record that differs from its share gets no statement."""
    cluster = await make_cluster(tmp_path)
    record = await cluster.run(await start_of(cluster))
    assert record is not None
    kv = await cluster.bus("node-3").kv("keys")
    statement_key = K.key_result_key("frost", K.DEFAULT_KEY_ID, "node-3")
    del kv.data[statement_key]
    consensus = await cluster.signed("consensus")
    swapped = msgspec.structs.replace(record, chain_code=bytes(32))
    await consensus.put(K.key_record_key("frost", K.DEFAULT_KEY_ID), swapped)
    restarted = DkgParticipant(
        cluster.nodes["node-3"].cfg,
        cluster.bus("node-3"),  # type: ignore[arg-type]
        cluster.keystores["node-3"],
        lambda: None,
    )
    await restarted.restate_results()
    assert statement_key not in kv.data  # the swapped record is not stated
    await consensus.put(K.key_record_key("frost", K.DEFAULT_KEY_ID), record)
    await restarted.restate_results()
    stated = await (await cluster.signed("intake")).get(statement_key, K.KeyResultStatement)
    assert stated is not None and stated.sender == "node-3" and stated.value == record.statement()


def test_check_session_names_each_refusal() -> None:
    """The pure check: which refusal each contradiction gets (and that an unknown key blames nobody)."""
    pubs: list[bytes | None] = [bytes([2]) + bytes([i]) * 32 for i in range(1, 6)]
    good = DkgStart(
        session_id="s", scheme="frost", nodes=list(NODES), threshold=T, hostpubkeys=[p or b"" for p in pubs]
    )
    check_session(good, NODES, T, pubs)
    cases: list[tuple[dict[str, Any], list[bytes | None], str]] = [
        (dict(threshold=1), pubs, "dkg-bad-threshold"),
        (dict(nodes=NODES[:4]), pubs, "dkg-bad-participants"),
        (dict(hostpubkeys=pubs[:4]), pubs, "dkg-bad-hostpubkey"),
        (dict(hostpubkeys=[*pubs[:4], pubs[0]]), pubs, "dkg-bad-hostpubkey"),
        ({}, [*pubs[:4], None], ""),
    ]
    for change, published, kind in cases:
        start = msgspec.structs.replace(good, **change)
        with pytest.raises(DkgRefused) as exc:
            check_session(start, NODES, T, published)
        assert exc.value.kind == kind, (change, exc.value)
