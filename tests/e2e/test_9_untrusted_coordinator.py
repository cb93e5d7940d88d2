"""The ChillDKG coordinator (``consensus``) cannot choose the key, on the running cluster: a session with
another threshold or a substituted host key is refused by every node (each reports consensus, with the
signed start as evidence, and none sends a protocol message or keeps a share), and a key record
consensus swapped is refused by the CLI while the services keep the proven one."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec
import pytest

from schemas import kv as K
from schemas.messages import DkgResult, DkgStart
from schemas.names import BUCKET_KEYS, proto_subject
from services.runtime.bus import Bus
from services.runtime.lookup import last_message
from services.runtime.signed_kv import SignedKV
from tests.e2e.conftest import Cluster
from tss import chilldkg

pytestmark = pytest.mark.e2e

T = TypeVar("T")


def as_consensus(cluster: Cluster, fn: Callable[[Bus], Awaitable[T]]) -> T:
    """``fn(bus)`` on a bus of the ``consensus`` identity (what a compromised coordinator holds)."""
    return cluster.with_bus(fn, identity="consensus")


def run_lying_session(cluster: Cluster, key_id: str, **lie: Any) -> dict[str, DkgResult]:
    """Start a DKG for ``key_id`` as consensus, with ``lie`` applied to the honest start; the nodes'
    round-9 answers."""
    session = f"e2e{secrets.token_hex(5)}"
    nodes: list[str] = list(cluster.info["nodes"])

    async def go(bus: Bus) -> dict[str, DkgResult]:
        keys = await SignedKV.open(bus, BUCKET_KEYS)
        hostpubkeys = []
        for node in nodes:
            got = await keys.get(K.hostpubkey_key(node), K.HostPubkey)
            assert got is not None
            hostpubkeys.append(got.value.hostpubkey)
        start = DkgStart(
            session_id=session,
            scheme="frost",
            nodes=nodes,
            threshold=cluster.info["t"],
            hostpubkeys=hostpubkeys,
            key_id=key_id,
        )
        start = msgspec.structs.replace(start, **lie)
        await bus.publish(proto_subject("chilldkg", session, 0, "consensus"), start, f"dkg.{session}.0")
        answers: dict[str, DkgResult] = {}
        deadline = time.monotonic() + 30
        while len(answers) < len(nodes) and time.monotonic() < deadline:
            for node in nodes:
                m = await last_message(bus, proto_subject("chilldkg", session, 9, node))
                if m is not None and m.sender == node and isinstance(m.payload, DkgResult):
                    answers[node] = m.payload
            await asyncio.sleep(0.2)
        return answers

    answers: dict[str, DkgResult] = as_consensus(cluster, go)
    assert set(answers) == set(nodes), answers
    for node, result in answers.items():
        assert not result.ok and "refused" in result.reason, (node, result)
    # nothing of the protocol was sent, no node holds a share of that key
    assert cluster.subject_counts("PROTO", f"proto.chilldkg.{session}.1.>") == {}
    assert cluster.subject_counts("PROTO", f"proto.chilldkg.{session}.3.>") == {}
    for node in nodes:
        assert not (cluster.data_dir / "nodes" / node / "shares" / f"{key_id}.enc").exists()
    return answers


def reports_against_consensus(cluster: Cluster, kind: str) -> set[str]:
    """The reporters of ``kind`` violations against consensus, as the monitor recorded them."""
    deadline = time.monotonic() + 20
    reporters: set[str] = set()
    while time.monotonic() < deadline:
        rows = cluster.fetch(
            "SELECT reporter, evidence FROM byzantine_violations WHERE node_id = 'consensus' AND kind = $1",
            kind,
        )
        reporters = {r["reporter"] for r in rows if r["evidence"]}
        if reporters >= set(cluster.info["nodes"]):
            break
        time.sleep(0.2)
    return reporters


def test_a_threshold_other_than_the_configured_one_is_refused_by_every_node(cluster: Cluster) -> None:
    run_lying_session(cluster, "e2e-threshold", threshold=1)
    assert reports_against_consensus(cluster, "dkg-bad-threshold") == set(cluster.info["nodes"])


def test_a_substituted_host_key_is_refused_by_every_node(cluster: Cluster) -> None:
    held_by_coordinator = chilldkg.hostpubkey_gen(secrets.token_bytes(32))

    async def keys_now(bus: Bus) -> list[bytes]:
        keys = await SignedKV.open(bus, BUCKET_KEYS)
        out = []
        for node in cluster.info["nodes"]:
            got = await keys.get(K.hostpubkey_key(node), K.HostPubkey)
            assert got is not None
            out.append(got.value.hostpubkey)
        return out

    hostpubkeys = cluster.with_bus(keys_now)
    hostpubkeys[1] = held_by_coordinator  # node-2's
    run_lying_session(cluster, "e2e-hostkey", hostpubkeys=hostpubkeys)
    assert reports_against_consensus(cluster, "dkg-bad-hostpubkey") == set(cluster.info["nodes"])


def test_a_swapped_key_record_is_refused_by_the_cli_and_not_taken_by_intake(cluster: Cluster) -> None:
    record = cluster.key_record()
    address = cluster.mpcw("wallet", "address").stdout.strip()
    swapped = msgspec.structs.replace(record, chain_code=secrets.token_bytes(32))
    name = K.key_record_key("frost", K.DEFAULT_KEY_ID)

    async def put(bus: Bus, value: K.KeyRecord) -> None:
        await (await SignedKV.open(bus, BUCKET_KEYS)).put(name, value)

    as_consensus(cluster, lambda bus: put(bus, swapped))
    try:
        status = cluster.mpcw("dkg", "status", check=False)
        assert status.returncode != 0, status.stdout
        assert "not usable" in status.stderr and "contradict" in status.stderr, status.stderr
        # the intake proved the record before: it keeps deriving from that one
        assert cluster.mpcw("wallet", "address").stdout.strip() == address
    finally:
        as_consensus(cluster, lambda bus: put(bus, record))
    out = cluster.mpcw("dkg", "status").stdout
    assert record.threshold_pubkey.hex() in out and f"{record.t}-of-{record.n}" in out
