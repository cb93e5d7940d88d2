"""The read-only ``mpcw`` commands against the running cluster: exit 0, and what they print matches the
cluster (names, counts, keys, amounts), not just "some output"."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Cluster, wait_for

pytestmark = pytest.mark.e2e


def test_status(cluster: Cluster) -> None:
    out = cluster.mpcw("status").stdout
    assert "cluster ready" in out
    for name in cluster.info["services"]:
        assert re.search(rf"^\s+{re.escape(name)}\s+ready\s+pid=\d+", out, re.M), (name, out)
    as_json = json.loads(cluster.mpcw("status", "--json").stdout)
    assert as_json["running"] and as_json["ready"]
    assert {p["name"] for p in as_json["processes"]} == set(cluster.info["services"])


def test_cluster_status(cluster: Cluster) -> None:
    body = json.loads(cluster.mpcw("cluster", "status").stdout)
    text = json.dumps(body)
    assert body.get("n") == cluster.info["n"] and body.get("t") == cluster.info["t"], body
    assert "node" in text


def test_cluster_nodes(cluster: Cluster) -> None:
    lines = [ln for ln in cluster.mpcw("cluster", "nodes").stdout.splitlines() if ln.strip()]
    for node in cluster.info["nodes"]:
        assert any(f"={node}" in ln for ln in lines), (node, lines)


def test_policy_show(cluster: Cluster) -> None:
    out = cluster.mpcw("policy", "show").stdout
    for label in ("version", "max per spend", "daily limit", "max fee rate", "allow list", "deny list"):
        assert label in out, out
    assert re.search(r"max per spend\s+\d+\.\d{8} BTC", out), out


def test_presig_pool_status(cluster: Cluster) -> None:
    out = cluster.mpcw("presig", "pool-status").stdout
    levels = dict(re.findall(r"^(node-\d+)\s+(\d+) free$", out, re.M))
    assert set(levels) == set(cluster.info["nodes"]), out
    assert all(int(v) > 0 for v in levels.values()), out
    # the REST status shows the nonces each node holds, from its heartbeat
    with cluster.api() as api:
        status = api.get("/api/v1/cluster/status").json()
    assert set(status["nonce_pool"]) == set(cluster.info["nodes"]), status
    assert all(isinstance(v, int) and v > 0 for v in status["nonce_pool"].values()), status


def test_dkg_start_printed_the_proven_key(cluster: Cluster) -> None:
    """The threshold ``mpcw dkg start`` printed is the one every node stated (the record is proven)."""
    rec = cluster.key_record()
    t, n = cluster.info["t"], cluster.info["n"]
    assert rec.t == t and rec.n == n
    line = f"threshold key {rec.threshold_pubkey.hex()} ({t}-of-{n}, stated by all {n} nodes)"
    assert line in cluster.dkg_output, cluster.dkg_output


def test_dkg_status(cluster: Cluster) -> None:
    out = cluster.mpcw("dkg", "status").stdout
    rec = cluster.key_record()
    assert rec.threshold_pubkey.hex() in out
    assert f"{rec.t}-of-{rec.n}" in out
    for node, share in zip(rec.nodes, rec.pubshares, strict=True):
        assert f"{node}: public share {share.hex()}" in out


def test_tx_list_and_status(cluster: Cluster, confirmed_spend: dict[str, Any]) -> None:
    tx_id = confirmed_spend["id"]
    out = cluster.mpcw("tx", "list", "--limit", "500").stdout
    line = next((ln for ln in out.splitlines() if ln.startswith(tx_id)), None)
    assert line is not None, out
    assert "confirmed" in line and "0.10000000 BTC" in line and confirmed_spend["_recipient"] in line
    status = cluster.mpcw("tx", "status", tx_id).stdout
    assert confirmed_spend["txid"] in status
    for state in ("pending", "voting", "approved", "signing", "signed", "broadcast", "confirmed"):
        assert re.search(rf"\d\d:\d\d:\d\d\.\d{{3}}\s+{state}\b", status), (state, status)


def test_wallet_balance(cluster: Cluster) -> None:
    out = cluster.mpcw("wallet", "balance").stdout
    shown = Decimal(re.search(r"^confirmed\s+(\d+\.\d{8}) BTC", out, re.M).group(1))  # type: ignore[union-attr]
    with cluster.api() as api:
        body = api.get("/api/v1/wallet/balance").json()
    assert shown == Decimal(body["confirmed_sats"]) / 100_000_000
    assert shown > 0
    assert re.search(r"^unconfirmed\s+\d+\.\d{8} BTC", out, re.M), out


def test_apikey_create_list_revoke(cluster: Cluster) -> None:
    """A viewer key made by the CLI reads and may not spend; an operator key is refused once revoked."""
    out = cluster.mpcw("apikey", "create", "--name", "dashboard", "--role", "viewer").stdout
    viewer = re.search(r"^key\s+(mpcw_\w+_\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    viewer_id = re.search(r"^key id\s+(\w+)$", out, re.M).group(1)  # type: ignore[union-attr]
    out = cluster.mpcw("apikey", "create", "--name", "treasury bot", "--role", "operator").stdout
    operator = re.search(r"^key\s+(mpcw_\w+_\S+)$", out, re.M).group(1)  # type: ignore[union-attr]
    operator_id = re.search(r"^key id\s+(\w+)$", out, re.M).group(1)  # type: ignore[union-attr]

    url = cluster.info["intake_url"]
    with httpx.Client(base_url=url, timeout=30.0) as http:
        assert http.get("/api/v1/wallet/balance").status_code == 401  # no key: no reading
        assert http.get("/api/v1/wallet/balance", headers={"X-API-Key": viewer}).status_code == 200
        r = http.post("/api/v1/transactions", content=b"{}", headers={"X-API-Key": viewer})
        assert r.status_code == 403 and "viewer" in r.json()["detail"], r.text
        # the operator key gets past authentication (to the body check: nothing is spent)
        r = http.post("/api/v1/transactions", content=b"{}", headers={"Authorization": f"Bearer {operator}"})
        assert r.status_code == 422, r.text

        listed = cluster.mpcw("apikey", "list").stdout
        assert re.search(rf"^{viewer_id}\s+viewer\s+.*active\s+dashboard$", listed, re.M), listed
        assert re.search(rf"^{operator_id}\s+operator\s+.*active\s+treasury bot$", listed, re.M), listed
        assert viewer not in listed and operator not in listed  # never the keys themselves

        assert f"{operator_id} revoked" in cluster.mpcw("apikey", "revoke", operator_id).stdout
        r = http.post("/api/v1/transactions", content=b"{}", headers={"Authorization": f"Bearer {operator}"})
        assert r.status_code == 401 and "revoked" in r.json()["detail"], r.text
        assert "already revoked" in cluster.mpcw("apikey", "revoke", operator_id).stdout
        listed = cluster.mpcw("apikey", "list").stdout
        assert re.search(rf"^{operator_id}\s+operator\s+.*revoked \d", listed, re.M), listed

    # key management is audited (ids, roles, names; never a key), in the verified chain
    rows = cluster.fetch(
        "SELECT action, entity_id, details::text AS d FROM audit_log"
        " WHERE entity_type = 'api_key' ORDER BY id"
    )
    mine = [(r["action"], r["entity_id"]) for r in rows if r["entity_id"] in (viewer_id, operator_id)]
    assert mine == [
        ("apikey.create", viewer_id),
        ("apikey.create", operator_id),
        ("apikey.revoke", operator_id),  # once: the second revoke changed nothing
    ], rows
    assert not any(viewer in r["d"] or operator in r["d"] for r in rows)
    assert "audit chain verifies" in cluster.mpcw("audit", "verify").stdout

    bad = cluster.mpcw("apikey", "revoke", "nosuchkey", check=False)
    assert bad.returncode == 1 and "no API key 'nosuchkey'" in bad.stderr, bad
    bad = cluster.mpcw("apikey", "create", "--name", "x", "--role", "root", check=False)
    assert bad.returncode == 2 and "root" in bad.stderr, bad


def test_node_unban(cluster: Cluster) -> None:
    """``mpcw node unban``: the monitor lifts the ban (a signed record that ended, in KV), the recorder audits
    it with the reason; a name that is not a node is refused before anything is sent."""
    node = cluster.info["nodes"][-1]
    out = cluster.mpcw("node", "unban", node, "--reason", "reviewed: false positive").stdout
    assert f"{node}: ban lifted" in out, out
    query = (
        "SELECT actor, details->>'reason' AS reason FROM audit_log"
        " WHERE action = 'node.unban' AND entity_id = $1 ORDER BY id"
    )
    wait_for("the unban audit entry", lambda: bool(cluster.fetch(query, node)))
    rows = cluster.fetch(query, node)
    assert [(r["actor"], r["reason"]) for r in rows][-1:] == [("admin", "reviewed: false positive")], rows
    bad = cluster.mpcw("node", "unban", "node-99", "--reason", "x", check=False)
    assert bad.returncode == 2 and "not a node of this cluster" in bad.stderr, bad
