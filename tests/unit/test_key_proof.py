"""The wallet's key record is believed only with its proof (``services.runtime.key_proof``): signed by
consensus, the configured nodes and threshold, and equal to the signed statement of every node. A record
whose threshold key, chain code or threshold was swapped is refused and its writer reported; a record
still missing statements is simply not proven yet."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from schemas import envelope as E
from schemas import kv as K
from schemas.names import kv_subject, kv_writer_allowed, publish_rights, subject_matches
from services.runtime.key_proof import VIOLATION_KIND, KeyNotProven, ProvenKeys, check_key_proof
from services.runtime.signed_kv import seal_value
from tests.unit.dkg_cluster import IDENTITIES, NODES, Cluster, T, make_cluster, start_of
from tests.unit.service_fakes import identity_keys
from tss.secp256k1 import cbytes, point_mul_base

RECORD_KEY = K.key_record_key("frost", K.DEFAULT_KEY_ID)


async def dkg(tmp_path: Path) -> tuple[Cluster, K.KeyRecord]:
    """A finished DKG: every node's statement is in KV, the record not (the test writes it)."""
    cluster = await make_cluster(tmp_path)
    record = await cluster.run(await start_of(cluster))
    assert record is not None
    del (await cluster.bus("consensus").kv("keys")).data[RECORD_KEY]
    return cluster, record


async def reader(cluster: Cluster, identity: str = "intake") -> ProvenKeys:
    return ProvenKeys(cluster.bus(identity), await cluster.signed(identity), NODES, T)  # type: ignore[arg-type]


async def write_record(cluster: Cluster, record: K.KeyRecord, writer: str = "consensus") -> None:
    await (await cluster.signed(writer)).put(RECORD_KEY, record)


async def test_a_record_all_nodes_stated_is_the_key(tmp_path: Path) -> None:
    cluster, record = await dkg(tmp_path)
    await write_record(cluster, record)
    keys = await reader(cluster)
    assert await keys.get("frost", K.DEFAULT_KEY_ID) == record
    assert cluster.bus("intake").reports == []


async def test_no_record_is_none(tmp_path: Path) -> None:
    cluster, _ = await dkg(tmp_path)
    assert await (await reader(cluster)).get("frost", K.DEFAULT_KEY_ID) is None


OTHER_KEY = cbytes(point_mul_base(12345))


@pytest.mark.parametrize(
    "swap",
    [
        {"threshold_pubkey": OTHER_KEY},
        {"chain_code": bytes(range(32))},
        {"pubshares": [OTHER_KEY] * 5},
        {"recovery_data": b"other"},
        {"session_id": "other"},
    ],
    ids=["threshold-key", "chain-code", "pubshares", "recovery-data", "session"],
)
async def test_a_record_consensus_swapped_is_refused_and_reported(
    tmp_path: Path, swap: dict[str, object]
) -> None:
    cluster, record = await dkg(tmp_path)
    swapped = msgspec.structs.replace(record, **swap)
    await write_record(cluster, swapped)
    keys = await reader(cluster)
    with pytest.raises(KeyNotProven) as exc:
        await keys.get("frost", K.DEFAULT_KEY_ID)
    assert exc.value.offenders == ["consensus"]
    reports = cluster.bus("intake").reports
    assert [(r.offender, r.kind) for r in reports] == [("consensus", VIOLATION_KIND)]
    assert msgspec.msgpack.decode(_payload(reports[0].raw), type=K.KeyRecord) == swapped
    with pytest.raises(KeyNotProven):  # asked again: still refused, reported once
        await keys.get("frost", K.DEFAULT_KEY_ID)
    assert len(cluster.bus("intake").reports) == 1


def _payload(raw: bytes) -> bytes:
    return E.decode(raw).payload


@pytest.mark.parametrize("t", [1, T - 1, T + 1])
async def test_a_record_with_another_threshold_is_refused(tmp_path: Path, t: int) -> None:
    """Even when every node stated that threshold (nodes configured otherwise when the DKG ran): the
    reader wants its own configured ``t``."""
    cluster, record = await dkg(tmp_path)
    other = msgspec.structs.replace(record, t=t)
    await write_record(cluster, other)
    for node in NODES:
        name = K.key_result_key("frost", K.DEFAULT_KEY_ID, node)
        await (await cluster.signed(node)).put(name, other.statement())
    with pytest.raises(KeyNotProven, match=f"its threshold {t} is not the cluster's {T}"):
        await (await reader(cluster)).get("frost", K.DEFAULT_KEY_ID)


async def test_a_record_not_signed_by_consensus_is_refused(tmp_path: Path) -> None:
    """Any other writer (admin here, or raw bytes): the record does not verify, whatever it says."""
    cluster, record = await dkg(tmp_path)
    await write_record(cluster, record, writer="admin")
    with pytest.raises(KeyNotProven, match="does not verify"):
        await (await reader(cluster)).get("frost", K.DEFAULT_KEY_ID)
    kv = await cluster.bus("admin").kv("keys")
    await kv.put(RECORD_KEY, msgspec.msgpack.encode(record))
    with pytest.raises(KeyNotProven, match="does not verify"):
        await (await reader(cluster, "admin")).get("frost", K.DEFAULT_KEY_ID)


async def test_a_missing_statement_is_not_proven_yet_and_blames_nobody(tmp_path: Path) -> None:
    cluster, record = await dkg(tmp_path)
    await write_record(cluster, record)
    kv = await cluster.bus("intake").kv("keys")
    del kv.data[K.key_result_key("frost", K.DEFAULT_KEY_ID, "node-4")]
    keys = await reader(cluster)
    with pytest.raises(KeyNotProven, match="not proven yet: no statement from node-4") as exc:
        await keys.get("frost", K.DEFAULT_KEY_ID)
    assert exc.value.offenders == [] and cluster.bus("intake").reports == []


async def test_a_statement_signed_by_another_node_does_not_count(tmp_path: Path) -> None:
    """node-1 writes node-4's statement: it does not verify as node-4's, so node-4 has stated nothing."""
    cluster, record = await dkg(tmp_path)
    await write_record(cluster, record)
    kv = await cluster.bus("intake").kv("keys")
    name = K.key_result_key("frost", K.DEFAULT_KEY_ID, "node-4")
    kv.data[name] = (99, seal_value(identity_keys("node-1"), IDENTITIES, "keys", name, record.statement(), 1))
    with pytest.raises(KeyNotProven, match="no statement from node-4"):
        await (await reader(cluster)).get("frost", K.DEFAULT_KEY_ID)


async def test_a_node_contradicting_the_others_is_the_one_reported(tmp_path: Path) -> None:
    cluster, record = await dkg(tmp_path)
    await write_record(cluster, record)
    lie = msgspec.structs.replace(record.statement(), threshold_pubkey=OTHER_KEY)
    await (await cluster.signed("node-5")).put(K.key_result_key("frost", K.DEFAULT_KEY_ID, "node-5"), lie)
    with pytest.raises(KeyNotProven) as exc:
        await (await reader(cluster)).get("frost", K.DEFAULT_KEY_ID)
    assert exc.value.offenders == ["node-5"]


async def test_a_proven_record_stays_in_force(tmp_path: Path) -> None:
    cluster, record = await dkg(tmp_path)
    await write_record(cluster, record)
    keys = await reader(cluster)
    assert await keys.get("frost", K.DEFAULT_KEY_ID) == record
    await write_record(cluster, msgspec.structs.replace(record, chain_code=bytes(32)))
    assert await keys.get("frost", K.DEFAULT_KEY_ID) == record


def test_check_key_proof_wants_the_configured_nodes() -> None:
    record = K.KeyRecord(
        key_id="k",
        scheme="frost",
        threshold_pubkey=OTHER_KEY,
        pubshares=[OTHER_KEY] * 5,
        chain_code=bytes(32),
        nodes=list(NODES),
        n=5,
        t=T,
        session_id="s",
        hostpubkeys=[OTHER_KEY] * 5,
    )
    stated = dict.fromkeys(NODES, record.statement())
    check_key_proof(record, stated, NODES, T)
    with pytest.raises(KeyNotProven, match="nodes"):
        check_key_proof(record, stated, list(reversed(NODES)), T)
    with pytest.raises(KeyNotProven, match="nodes"):
        check_key_proof(record, stated, NODES[:4], T)
    with pytest.raises(KeyNotProven, match="one public share"):
        short = msgspec.structs.replace(record, pubshares=[OTHER_KEY] * 4)
        check_key_proof(short, dict.fromkeys(NODES, short.statement()), NODES, T)


def test_who_may_write_the_record_and_the_statements() -> None:
    """A node writes (broker) and signs (readers) only its own statement; consensus only the record."""
    mine = K.key_result_key("frost", K.DEFAULT_KEY_ID, "node-3")
    assert kv_writer_allowed("node-3", "keys", mine)
    assert not kv_writer_allowed("node-2", "keys", mine)
    assert not kv_writer_allowed("consensus", "keys", mine)
    assert kv_writer_allowed("consensus", "keys", RECORD_KEY)
    assert not kv_writer_allowed("node-3", "keys", RECORD_KEY)
    assert not kv_writer_allowed("admin", "keys", RECORD_KEY)

    def may_put(identity: str, key: str) -> bool:
        return any(subject_matches(p, kv_subject("keys", key)) for p in publish_rights(identity))

    assert may_put("node-3", mine) and not may_put("node-2", mine) and not may_put("consensus", mine)
    assert may_put("consensus", RECORD_KEY) and not may_put("node-3", RECORD_KEY)
