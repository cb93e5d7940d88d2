"""A spend that breaks the policy ends ``rejected``, with the nodes' reasons, and nothing is signed.

The policy is changed with ``mpcw policy set`` as an operator would; every node enforces it on its own,
so the rejection must come from the votes (each carrying the new policy version), and no signing may
start: no ``tx.signing`` / ``tx.signed`` event for the spend, no FROST round for any of its attempts, no
nonce used for it. The previous policy is written back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest

from schemas import kv as K
from schemas.messages import Vote
from schemas.names import BUCKET_CONFIG
from schemas.rest import Policy
from services.runtime.bus import Bus
from services.runtime.lookup import last_message
from services.runtime.seal import Identities, IdentityKeys
from services.runtime.signed_kv import SignedKV, seal_value
from tests.e2e.conftest import Cluster, external_address
from tests.integration.test_nats_security import connect, ctx
from tests.integration.test_signed_kv_attacks import Attacker

pytestmark = pytest.mark.e2e


def _policy(cluster: Cluster) -> tuple[Policy, int | None]:
    async def go(bus: Bus) -> tuple[Policy, int | None]:
        signed = await (await SignedKV.open(bus, BUCKET_CONFIG)).get(K.POLICY_KEY, Policy)
        if signed is None:
            return Policy(), None
        return signed.value, signed.revision

    return cluster.with_bus(go)


@pytest.fixture
def restore_policy(cluster: Cluster) -> Iterator[Policy]:
    """Yield the policy in force; afterwards write it back (as a new version: versions only grow)."""
    before, _ = _policy(cluster)
    yield before

    async def go(bus: Bus) -> None:
        config = await SignedKV.open(bus, BUCKET_CONFIG)
        signed = await config.get(K.POLICY_KEY, Policy)
        current = signed.value if signed is not None else Policy()
        restored = msgspec.structs.replace(before, version=current.version + 1)
        await config.write(K.POLICY_KEY, restored, signed.revision if signed is not None else None)

    cluster.with_bus(go)


def _assert_nothing_signed(cluster: Cluster, tx_id: str) -> None:
    events = cluster.tx_events(tx_id)
    assert events.get("requested") == 1 and events.get("rejected") == 1, events
    for e in ("approved", "signing", "signed", "broadcast", "confirmed"):
        assert e not in events, f"{e} published for a rejected spend: {events}"
    frost = cluster.subject_counts("PROTO", "proto.frost.>")
    assert not [s for s in frost if s.split(".")[2].startswith(f"{tx_id}-a")], "a signing round ran"

    used = cluster.fetch("SELECT presig_id FROM presignature_usage WHERE tx_id = $1", tx_id)
    assert used == [], "nonces were used for a rejected spend"
    rows = cluster.fetch("SELECT state, txid FROM transactions WHERE id = $1", tx_id)
    assert [(r["state"], r["txid"]) for r in rows] == [("rejected", None)]


def _votes(cluster: Cluster, tx_id: str) -> dict[str, Vote]:
    async def go(bus: Bus) -> dict[str, Vote]:
        out = {}
        for node in cluster.info["nodes"]:
            m = await last_message(bus, f"vote.{tx_id}.{node}")
            if m is not None:
                assert m.sender == node
                out[node] = m.payload
        return out

    return cluster.with_bus(go)


@pytest.mark.parametrize("rule", ["max-tx", "deny-list"])
def test_policy_violation_is_rejected_with_reasons_and_never_signed(
    cluster: Cluster, confirmed_spend: dict[str, Any], restore_policy: Policy, rule: str
) -> None:
    recipient = external_address(f"policy-{rule}".encode())
    if rule == "max-tx":
        out = cluster.mpcw("policy", "set", "--max-tx-btc", "0.05").stdout
        assert "0.05000000 BTC" in out
        sats, word = 6_000_000, "limit"
    else:
        out = cluster.mpcw("policy", "set", "--deny", recipient).stdout
        assert recipient in out
        sats, word = 1_000_000, "den"
    new_version = restore_policy.version + 1
    assert _policy(cluster)[0].version == new_version
    assert f"version          {new_version}" in cluster.mpcw("policy", "show").stdout

    tx_id = cluster.request_spend(recipient, sats)
    t = cluster.wait_terminal(tx_id)
    assert t["state"] == "rejected", t
    assert [s["state"] for s in t["timeline"]] == ["pending", "voting", "rejected"], t["timeline"]
    assert t["reasons"], "rejected without a reason"
    assert any(word in r.lower() for r in t["reasons"]), t["reasons"]
    # enough nodes refused on their own to make approval impossible, none approved, each said why; in
    # the same view as the rejection (the recorder projects a decision after the votes it counted)
    n, threshold = cluster.info["n"], cluster.info["t"]
    assert len(t["votes"]) >= n - threshold + 1, t["votes"]
    assert all(not v["approve"] and v["reasons"] for v in t["votes"]), t["votes"]
    # every vote on the bus was cast under the new policy
    votes = _votes(cluster, tx_id)
    assert len(votes) >= 2
    assert {v.policy_version for v in votes.values()} == {new_version}, votes
    _assert_nothing_signed(cluster, tx_id)

    # positive control: the same checks do see the signing of an ordinary, confirmed spend
    with pytest.raises(AssertionError):
        _assert_nothing_signed(cluster, confirmed_spend["id"])


def test_policy_restored_between_tests(cluster: Cluster) -> None:
    p, _ = _policy(cluster)
    assert p.max_tx_sats == Policy().max_tx_sats and p.denylist == [], p


def test_over_limit_spend_is_rejected_while_node3_forges_policy_and_bans(
    cluster: Cluster, confirmed_spend: dict[str, Any], restore_policy: Policy
) -> None:
    """node-3, with its own certificate, delivers a 10 BTC policy of its own making into every other
    signer's policy watcher and bans of node-1 and node-2 into consensus's ban watcher (the ways of the
    outside test report); the 0.05 BTC policy the operator set stays in force everywhere."""
    out = cluster.mpcw("policy", "set", "--max-tx-btc", "0.05").stdout
    assert "applied on 5/5 nodes" in out, out
    d, url = cluster.data_dir, cluster.info["nats_url"]

    async def attack(_: Bus) -> tuple[int, int]:
        attacker = Attacker(
            None, IdentityKeys.load(d, "node-3"), Identities.load(d / "pki" / "identities.json")
        )
        attacker.nc = await connect(url, ctx(d, "node-3"), attacker.errors, inbox_prefix="_INBOX.node-3")
        try:
            loose = Policy(version=10**6, max_tx_sats=10 * 100_000_000)
            forged = seal_value(attacker.keys, attacker.identities, BUCKET_CONFIG, K.POLICY_KEY, loose, 2**50)
            policies = 0
            for victim in ("node-1", "node-2", "node-4", "node-5"):
                attacker.victim_prefix = f"_INBOX.{victim}."
                seq = await attacker.write_own(forged)
                watch = ("KV_config", "$KV.config.policy")
                policies += await attacker.inject("KV_nodes", "$KV.nodes.node-3", watch, seq)
            bans = 0
            attacker.victim_prefix = "_INBOX.consensus."
            for node in ("node-1", "node-2"):
                ban = K.BanRecord(node=node, until_ms=2**50, banned_at_ms=0, violations=5)
                seq = await attacker.write_own(
                    seal_value(attacker.keys, attacker.identities, "bans", node, ban, 2**50)
                )
                bans += await attacker.inject("KV_nodes", "$KV.nodes.node-3", ("KV_bans", "$KV.bans.>"), seq)
            return policies, bans
        finally:
            await attacker.nc.close()

    policies, bans = cluster.with_bus(attack)
    print(f"forged policy delivered into {policies} signer watchers, forged bans into consensus: {bans}")

    recipient = external_address(b"policy-forged-by-node-3")
    tx_id = cluster.request_spend(recipient, 6_000_000)
    t = cluster.wait_terminal(tx_id)
    assert t["state"] == "rejected", t
    assert any("limit" in r.lower() for r in t["reasons"]), t["reasons"]
    _assert_nothing_signed(cluster, tx_id)
    # every signer still runs exactly the operator's policy (and says so) ...
    assert "applied on 5/5 nodes" in cluster.mpcw("policy", "set", "--max-tx-btc", "0.05").stdout
    # ... and consensus banned nobody: a spend within the limit is signed by a quorum that needs node-1
    # or node-2 (t = n - 1) and confirmed
    ok = cluster.wait_terminal(cluster.request_spend(external_address(b"within-the-limit"), 1_000_000))
    assert ok["state"] == "confirmed", ok
