"""ChillDKG through the services' own code (the nodes' :class:`DkgParticipant`, consensus's
:class:`DkgCoordinator`, both driving :mod:`tss.chilldkg_session`) over a bus that loses, replays,
reorders and corrupts messages. Whatever the network does, an honest session ends with every node
holding a share, its statement signed and every recovery acknowledgment in; a corrupted contribution ends
the session with its sender named."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import msgspec
import pytest

from schemas import kv as K
from schemas.messages import DkgMessage
from services.runtime.chilldkg_wire import parse_subject
from services.runtime.key_proof import check_key_proof
from services.signer.dkg_participant import MAX_RETRANSMITS, DkgParticipant
from services.signer.keystore import ShareRecord
from tests.unit.dkg_cluster import NODES, Cluster, Delivery, Entry, T, make_cluster, start_of
from tss import chilldkg, secp256k1


async def assert_done(cluster: Cluster, session: str = "s1") -> K.KeyRecord:
    """Every node announced success, holds its share, stated the result; the record is proven."""
    start = await start_of(cluster, session)
    record = await cluster.record(start)
    assert record is not None and record.session_id == session
    keys = await cluster.signed("intake")
    statements = {}
    for node in NODES:
        result = cluster.result(node, session)
        assert result is not None and result.ok, (node, result)
        assert (
            cluster.keystores[node].load_share(K.DEFAULT_KEY_ID).threshold_pubkey == record.threshold_pubkey
        )
        got = await keys.get(K.key_result_key("frost", K.DEFAULT_KEY_ID, node), K.KeyResultStatement)
        assert got is not None
        statements[node] = got.value
        assert session not in cluster.nodes[node].sessions
    check_key_proof(record, statements, NODES, T)
    # the recovery acknowledgments went round: every node sent one, consensus sent them all once
    assert all(cluster.sent(node, session, 7) for node in NODES)
    [racks] = cluster.bus("consensus").all(f"proto.chilldkg.{session}.8.consensus")
    assert len(racks.data) == 64 * len(NODES)
    return record


def published_by_consensus(cluster: Cluster, session: str = "s1") -> Counter[str]:
    return Counter(
        s for s, _, _, who in cluster.log if who == "consensus" and s.startswith(f"proto.chilldkg.{session}.")
    )


async def test_an_honest_session_runs_every_round_once(tmp_path: Path) -> None:
    cluster = await make_cluster(tmp_path)
    await cluster.run(await start_of(cluster))
    await assert_done(cluster)
    assert set(published_by_consensus(cluster).values()) == {1}
    assert all(cluster.bus(n).reports == [] for n in [*NODES, "consensus"])


async def test_every_delivery_replayed_now_and_later(tmp_path: Path) -> None:
    """Each delivery arrives twice, and with it one delivered earlier (JetStream redeliveries after a
    crash): nothing is sent twice, nobody is blamed."""
    cluster = await make_cluster(tmp_path)
    rng = random.Random(7)
    past: list[Delivery] = []

    def replay(d: Delivery) -> list[Delivery]:
        past.append(d)
        return [d, d, rng.choice(past)]

    await cluster.run(await start_of(cluster), deliveries=replay)
    await assert_done(cluster)
    assert set(published_by_consensus(cluster).values()) == {1}
    for node in NODES:
        sent = Counter(s for s, _, _, who in cluster.log if who == node)
        assert set(sent.values()) == {1}, (node, sent)
        assert cluster.bus(node).reports == []


@pytest.mark.parametrize("seed", range(4))
async def test_any_delivery_order(tmp_path: Path, seed: int) -> None:
    cluster = await make_cluster(tmp_path)
    await cluster.run(await start_of(cluster), rng=random.Random(seed))
    await assert_done(cluster)


class Outage:
    """A store hook that loses every publish of ``round_`` by ``sender`` while ``on``."""

    def __init__(self, round_: int, sender: str) -> None:
        self.round, self.sender, self.on = round_, sender, True
        self.lost: list[Entry] = []

    def __call__(self, entry: Entry) -> Entry | None:
        parts = parse_subject(entry[0])
        if self.on and parts is not None and (parts.round, entry[3]) == (self.round, self.sender):
            self.lost.append(entry)
            return None
        return entry


@pytest.mark.parametrize(
    ("round_", "sender"),
    [(1, "node-2"), (2, "consensus"), (3, "node-5"), (4, "consensus"), (7, "node-1"), (8, "consensus")],
)
async def test_a_lost_message_is_made_good_by_retransmission(
    tmp_path: Path, round_: int, sender: str
) -> None:
    """Publishes that never reached the stream stall the session until the nodes retransmit their last
    messages; the coordinator then publishes what it still owes."""
    cluster = await make_cluster(tmp_path)
    outage = Outage(round_, sender)
    cluster.store = outage
    await cluster.run(await start_of(cluster))
    assert outage.lost, "nothing was lost"
    assert not any((r := cluster.result(n, "s1")) is not None and r.ok for n in NODES)  # stalled
    outage.on = False
    await cluster.retransmit()
    await cluster.pump()
    await assert_done(cluster)


def corrupt(round_: int, sender: str, change: object) -> object:
    """A store hook: ``sender`` publishes its round ``round_`` message changed by ``change`` (once)."""
    done: list[bool] = []

    def store(entry: Entry) -> Entry | None:
        subject, payload, msg_id, who = entry
        parts = parse_subject(subject)
        if done or parts is None or (parts.round, who) != (round_, sender):
            return entry
        done.append(True)
        assert isinstance(payload, DkgMessage)
        data = change(payload.data)  # type: ignore[operator]
        return subject, msg_spec_replace(payload, data), msg_id, who

    return store


def msg_spec_replace(payload: DkgMessage, data: bytes) -> DkgMessage:
    return msgspec.structs.replace(payload, data=data)


def bad_share_for_node_1(data: bytes) -> bytes:
    pm = chilldkg.ParticipantMsg1.from_bytes(data, T, len(NODES))
    pm.enc_pmsg.enc_shares[0] = (pm.enc_pmsg.enc_shares[0] + 1) % secp256k1.N
    return pm.to_bytes()


async def test_a_bad_encrypted_share_is_investigated_and_its_sender_blamed(tmp_path: Path) -> None:
    """node-3 sends node-1 a wrong share: node-1 cannot tell whether node-3 or the coordinator cheated,
    asks for an investigation (round 5), gets its investigation data (round 6, to node-1 only) and names
    node-3; nobody holds a share."""
    cluster = await make_cluster(tmp_path)
    cluster.store = corrupt(1, "node-3", bad_share_for_node_1)  # type: ignore[assignment]
    await cluster.run(await start_of(cluster))
    assert cluster.sent("node-1", "s1", 5)  # the investigation request
    investigated = [s for s in published_by_consensus(cluster) if parse_subject(s).round == 6]  # type: ignore[union-attr]
    assert investigated == ["proto.chilldkg.s1.6.consensus.node-1"]
    result = cluster.result("node-1", "s1")
    assert result is not None and not result.ok and "blames node-3" in result.reason, result
    [report] = cluster.bus("node-1").reports
    assert (report.offender, report.kind) == ("node-3", "dkg-blamed")
    for node in NODES:
        assert not cluster.keystores[node].has_share(K.DEFAULT_KEY_ID)
    assert await cluster.record(await start_of(cluster)) is None


async def test_a_bad_proof_of_possession_is_reported_and_a_good_copy_still_taken(tmp_path: Path) -> None:
    """node-4's first message fails its proof of possession: consensus reports node-4 and waits; the copy
    node-4 sends again finishes the session."""
    cluster = await make_cluster(tmp_path)

    def flip_pop(data: bytes) -> bytes:
        k = 33 * T  # the commitment, then the 64-byte proof of possession
        return data[:k] + bytes([data[k] ^ 1]) + data[k + 1 :]

    cluster.store = corrupt(1, "node-4", flip_pop)  # type: ignore[assignment]
    await cluster.run(await start_of(cluster))
    violations = [p for s, p, _, who in cluster.log if who == "consensus" and s == "node.violation.node-4"]
    assert [(v.offender, v.kind) for v in violations] == [("node-4", "dkg-invalid-message")]
    assert "proof-of-knowledge" in violations[0].detail
    assert "proto.chilldkg.s1.2.consensus" not in published_by_consensus(cluster)
    await cluster.retransmit()
    await cluster.pump()
    await assert_done(cluster)


async def test_a_corrupted_certificate_is_blamed_on_the_coordinator(tmp_path: Path) -> None:
    """A certificate that does not verify: every node blames consensus, reports it, stores nothing."""
    cluster = await make_cluster(tmp_path)
    cluster.store = corrupt(4, "consensus", lambda d: bytes([d[0] ^ 1]) + d[1:])  # type: ignore[assignment]
    await cluster.run(await start_of(cluster))
    for node in NODES:
        result = cluster.result(node, "s1")
        assert result is not None and not result.ok and "blames consensus" in result.reason, (node, result)
        assert [(r.offender, r.kind) for r in cluster.bus(node).reports] == [("consensus", "dkg-blamed")]
        assert not cluster.keystores[node].has_share(K.DEFAULT_KEY_ID)
        assert cluster.sent(node, "s1", 7) == []  # no acknowledgment of recovery data it does not have


async def run_with_a_broken_disk(cluster: Cluster, node: str) -> Callable[[ShareRecord], None]:
    """Run a session in which ``node`` cannot write its share (the handler raises, as a full disk
    makes it); the keystore's own ``save_share``, to put back."""
    keystore = cluster.keystores[node]
    save = keystore.save_share

    def broken_disk(record: ShareRecord) -> None:
        raise OSError("disk full")

    keystore.save_share = broken_disk  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await cluster.run(await start_of(cluster))
    return save


async def test_the_share_and_statement_are_stored_before_the_acknowledgment(tmp_path: Path) -> None:
    """node-2 cannot write its share: it sends no recovery acknowledgment (so nobody's session confirms),
    and the certificate delivered again, once the disk works, finishes the session."""
    cluster = await make_cluster(tmp_path)
    keystore = cluster.keystores["node-2"]
    save = await run_with_a_broken_disk(cluster, "node-2")
    assert cluster.sent("node-2", "s1", 7) == []
    stated = await (await cluster.signed("intake")).get(
        K.key_result_key("frost", K.DEFAULT_KEY_ID, "node-2"), K.KeyResultStatement
    )
    assert stated is None
    keystore.save_share = save  # type: ignore[assignment,method-assign]
    certificate = await cluster.last("proto.chilldkg.s1.4.consensus")
    assert certificate is not None
    await cluster.nodes["node-2"].on_message(certificate)  # JetStream redelivers what was not acked
    await cluster.pump()
    await assert_done(cluster)


async def test_a_session_that_lost_the_race_for_the_key_is_not_finished(tmp_path: Path) -> None:
    """Another session's record holds the key: consensus does not send this session's certificate, so no
    node of it finalizes (nobody holds a share of a key nobody uses)."""
    cluster = await make_cluster(tmp_path)
    other = K.KeyRecord(
        key_id=K.DEFAULT_KEY_ID,
        scheme="frost",
        threshold_pubkey=bytes([2]) + bytes(32),
        pubshares=[bytes([2]) + bytes(32)] * len(NODES),
        chain_code=bytes(32),
        nodes=list(NODES),
        n=len(NODES),
        t=T,
        session_id="s0",
        hostpubkeys=await cluster.hostpubkeys(),
    )
    await (await cluster.signed("consensus")).create(K.key_record_key("frost", K.DEFAULT_KEY_ID), other)
    await cluster.run(await start_of(cluster))
    assert cluster.sent("node-1", "s1", 3)  # the session got as far as the certificate
    assert "proto.chilldkg.s1.4.consensus" not in published_by_consensus(cluster)
    assert await cluster.record(await start_of(cluster)) == other
    assert not any(cluster.keystores[node].has_share(K.DEFAULT_KEY_ID) for node in NODES)


async def test_a_node_that_lost_its_share_recovers_it_from_the_recovery_data(tmp_path: Path) -> None:
    """node-3 could not store its share (and so acknowledged nothing): the record is not proven. Restarted,
    it recovers the share from the record's recovery data with its host key, and states the result; a
    record that differs from what the recovery data gives is not taken."""
    cluster = await make_cluster(tmp_path)
    keystore = cluster.keystores["node-3"]
    save = await run_with_a_broken_disk(cluster, "node-3")
    await cluster.pump()  # the others finish their part
    keystore.save_share = save  # type: ignore[assignment,method-assign]
    record = await cluster.record(await start_of(cluster))
    assert record is not None and not keystore.has_share(K.DEFAULT_KEY_ID)
    consensus = await cluster.signed("consensus")
    restarted = DkgParticipant(cluster.nodes["node-3"].cfg, cluster.bus("node-3"), keystore, lambda: None)  # type: ignore[arg-type]

    await consensus.put(
        K.key_record_key("frost", K.DEFAULT_KEY_ID), msgspec.structs.replace(record, chain_code=bytes(32))
    )
    await restarted.restate_results()
    assert not keystore.has_share(K.DEFAULT_KEY_ID)

    await consensus.put(K.key_record_key("frost", K.DEFAULT_KEY_ID), record)
    await restarted.restate_results()
    share = keystore.load_share(K.DEFAULT_KEY_ID)
    assert share.threshold_pubkey == record.threshold_pubkey and share.recovery_data == record.recovery_data
    keys = await cluster.signed("intake")
    statements = {}
    for node in NODES:
        got = await keys.get(K.key_result_key("frost", K.DEFAULT_KEY_ID, node), K.KeyResultStatement)
        assert got is not None, node
        statements[node] = got.value
    check_key_proof(record, statements, NODES, T)


async def test_a_session_without_progress_is_given_up(tmp_path: Path) -> None:
    """Nobody answers (the coordinator is gone): each node retransmits a bounded number of times, then
    announces that it gave the session up."""
    cluster = await make_cluster(tmp_path)
    cluster.store = Outage(1, "node-5")
    await cluster.run(await start_of(cluster))
    for _ in range(MAX_RETRANSMITS + 1):
        await cluster.retransmit()
        await cluster.pump()
    for node in NODES:
        assert len(cluster.sent(node, "s1", 1)) == (MAX_RETRANSMITS + 1 if node != "node-5" else 0)
        result = cluster.result(node, "s1")
        assert result is not None and not result.ok and "given up" in result.reason, (node, result)
        assert "s1" not in cluster.nodes[node].sessions
    await cluster.retransmit()
    assert len(cluster.sent("node-1", "s1", 1)) == MAX_RETRANSMITS + 1
