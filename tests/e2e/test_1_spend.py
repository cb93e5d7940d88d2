"""DKG -> fund -> a Taproot spend to an external address, checked by independent verifiers.

The signed transaction is taken from the API and from the chain, and must pass three checks: the wallet's
own ``verify_transaction``, coincurve's BIP-340 verifier over our BIP-341 sighash (per input), and
btclib's script engine. The prevouts come from the funding transactions themselves, not from what the
spender claims. The audit chain verifies, and the timeline holds every state exactly once, in order.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from btclib.script.engine import verify_transaction as btclib_verify
from btclib.script.engine.flags import ALL_FLAGS
from btclib.tx import Tx as BTx
from btclib.tx import TxOut as BTxOut
from coincurve import PublicKeyXOnly

from services.recorder import verify_audit
from services.runtime.db import verify_audit_chain
from tests.e2e.conftest import LIFECYCLE, Cluster
from wallet.address import address_to_script
from wallet.sighash import bip341_sighash
from wallet.transaction import Prevout, input_witness, parse_transaction
from wallet.verify import TransactionInvalid, verify_transaction

pytestmark = pytest.mark.e2e


def prevouts_from_funding(cluster: Cluster, tx_json: dict[str, Any]) -> list[Prevout]:
    """Each input's prevout read from the transaction that created it (and compared with the chain's
    ``vin[].prevout`` rendering of the spend)."""
    out = []
    with cluster.devchain() as chain:
        for vin in tx_json["vin"]:
            funding = chain.get(f"/tx/{vin['txid']}")
            funding.raise_for_status()
            spent = funding.json()["vout"][vin["vout"]]
            assert spent == {k: v for k, v in vin["prevout"].items() if k in spent}
            out.append(Prevout(int(spent["value"]), bytes.fromhex(spent["scriptpubkey"])))
    return out


def schnorr_ok(raw: bytes, prevouts: list[Prevout]) -> list[bool]:
    tx = parse_transaction(raw)
    results = []
    for i, p in enumerate(prevouts):
        assert p.script_pubkey[:2] == b"\x51\x20" and len(p.script_pubkey) == 34, "not a P2TR prevout"
        (sig,) = input_witness(tx, i)  # key-path spend: exactly one witness element
        assert len(sig) == 64, "SIGHASH_DEFAULT signature expected"
        msg = bip341_sighash(tx, prevouts, i)
        results.append(PublicKeyXOnly(p.script_pubkey[2:]).verify(sig, msg))
    return results


def btclib_ok(raw: bytes, prevouts: list[Prevout]) -> bool:
    try:
        btclib_verify([BTxOut(p.amount, p.script_pubkey) for p in prevouts], BTx.parse(raw), ALL_FLAGS)
    except Exception:
        return False
    return True


def test_spend_to_external_address_is_confirmed_and_verifies(
    cluster: Cluster, confirmed_spend: dict[str, Any], wallet_address: str
) -> None:
    t = confirmed_spend
    assert t["state"] == "confirmed", t
    recipient = t["_recipient"]
    assert t["recipient"] == recipient and t["amount_sats"] == 10_000_000

    # the transaction as the chain has it, and as the API has it: the same bytes
    with cluster.devchain() as chain:
        tx_json = chain.get(f"/tx/{t['txid']}").json()
        chain_hex = chain.get(f"/tx/{t['txid']}/hex").text.strip()
    assert tx_json["status"]["confirmed"] is True
    assert t["signed_tx_hex"] == chain_hex
    raw = bytes.fromhex(chain_hex)

    # it pays the recipient the amount, and the rest (minus the fee) back to the wallet
    paid = [o for o in tx_json["vout"] if o["scriptpubkey_address"] == recipient]
    assert [o["value"] for o in paid] == [10_000_000]
    prevouts = prevouts_from_funding(cluster, tx_json)
    assert sum(p.amount for p in prevouts) - sum(o["value"] for o in tx_json["vout"]) == t["fee_sats"]
    # inputs and change belong to the threshold key the DKG produced (receive 0/0 or change 1/i)
    account = cluster.account()
    assert account.address((0, 0)) == wallet_address
    ours = {account.receive(0).script_pubkey} | {account.change(i).script_pubkey for i in range(200)}
    assert all(p.script_pubkey in ours for p in prevouts), "an input not from the wallet's key"
    others = [o for o in tx_json["vout"] if o["scriptpubkey_address"] != recipient]
    assert all(bytes.fromhex(o["scriptpubkey"]) in ours for o in others), "change not to the wallet"
    assert address_to_script(recipient, "regtest") not in ours

    # three independent verifiers accept it
    verify_transaction(raw, prevouts)
    assert schnorr_ok(raw, prevouts) == [True] * len(prevouts)
    assert btclib_ok(raw, prevouts)

    # ... and every one of them refuses it with one bit of one signature flipped (the checks can fail)
    tx = parse_transaction(raw)
    sig = input_witness(tx, 0)[0]
    bad_sig = bytes([sig[0] ^ 1]) + sig[1:]
    bad_raw = raw.replace(sig, bad_sig)
    assert bad_raw != raw
    with pytest.raises(TransactionInvalid):
        verify_transaction(bad_raw, prevouts)
    assert schnorr_ok(bad_raw, prevouts)[0] is False
    assert not btclib_ok(bad_raw, prevouts)

    # the timeline: every state once, in order, in time order
    states = [s["state"] for s in t["timeline"]]
    assert states == LIFECYCLE, states
    times = [s["at_ms"] for s in t["timeline"]]
    assert times == sorted(times)
    assert len(t["votes"]) >= cluster.info["t"] and all(v["approve"] for v in t["votes"])

    # the same transitions in the database, each once
    rows = cluster.fetch(
        "SELECT from_state, to_state FROM transaction_transitions WHERE tx_id = $1 ORDER BY id", t["id"]
    )
    assert [r["to_state"] for r in rows] == LIFECYCLE
    assert [r["from_state"] for r in rows] == [None, *LIFECYCLE[:-1]]


def test_audit_chain_verifies_and_covers_the_spend(cluster: Cluster, confirmed_spend: dict[str, Any]) -> None:
    ok, first_bad = asyncio.run(verify_audit(cluster.info["database_url"]))
    assert (ok, first_bad) == (True, None)
    problems = cluster.with_db(verify_audit_chain)
    assert problems == []
    rows = cluster.fetch(
        "SELECT action, details::text AS details FROM audit_log WHERE entity_id = $1 ORDER BY id",
        confirmed_spend["id"],
    )
    assert len(rows) >= len(LIFECYCLE), [dict(r) for r in rows]
    text = " ".join(f"{r['action']} {r['details']}" for r in rows)
    for state in LIFECYCLE:
        assert state in text, f"no audit entry mentions {state}: {text[:2000]}"
