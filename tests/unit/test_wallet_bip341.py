"""BIP-341 wallet test vectors: every scriptPubKey case and every key-path spending input."""

from __future__ import annotations

from typing import Any

import pytest
from coincurve import PrivateKey

from tests.vectors import load_json
from tss.secp256k1 import xbytes
from wallet.address import address_to_script, p2tr_address, script_to_address
from wallet.sighash import SighashCache, bip341_sighash, bip341_sigmsg
from wallet.taproot import (
    key_path_output,
    script_tree_merkle_root,
    tap_leaf_hash,
    taproot_output_key,
    taproot_tweak,
    taproot_tweak_seckey,
)
from wallet.transaction import Prevout, parse_transaction, with_witnesses
from wallet.verify import verify_transaction

V = load_json("bip341/wallet-test-vectors.json")


def _leaves(tree: Any) -> list[dict[str, Any]]:
    if tree is None:
        return []
    if isinstance(tree, dict):
        return [tree]
    return [leaf for sub in tree for leaf in _leaves(sub)]


@pytest.mark.parametrize("case", V["scriptPubKey"], ids=lambda c: f"spk-{V['scriptPubKey'].index(c)}")
def test_script_pubkey(case: dict[str, Any]) -> None:
    given, inter, exp = case["given"], case["intermediary"], case["expected"]
    internal = bytes.fromhex(given["internalPubkey"])
    tree = given["scriptTree"]
    root = script_tree_merkle_root(tree) if tree is not None else None
    if tree is not None:
        leaves = sorted(_leaves(tree), key=lambda leaf: leaf["id"])
        got_leaves = [tap_leaf_hash(bytes.fromhex(x["script"]), x["leafVersion"]).hex() for x in leaves]
        assert got_leaves == inter["leafHashes"]
    assert (root.hex() if root else None) == inter["merkleRoot"]
    assert taproot_tweak(internal, root).hex() == inter["tweak"]
    q, _parity = taproot_output_key(internal, root)
    assert q.hex() == inter["tweakedPubkey"]
    spk = bytes.fromhex(exp["scriptPubKey"])
    assert spk == b"\x51\x20" + q
    assert p2tr_address(q, "mainnet") == exp["bip350Address"]
    assert address_to_script(exp["bip350Address"], "mainnet") == spk
    assert script_to_address(spk, "mainnet") == exp["bip350Address"]
    if tree is None:
        out = key_path_output(internal)
        assert out.output_xonly == q and out.tweak.hex() == inter["tweak"]
        assert out.script_pubkey == spk


KPS = V["keyPathSpending"][0]
TX = parse_transaction(bytes.fromhex(KPS["given"]["rawUnsignedTx"]))
PREVOUTS = [Prevout(u["amountSats"], bytes.fromhex(u["scriptPubKey"])) for u in KPS["given"]["utxosSpent"]]


def test_key_path_intermediary_hashes() -> None:
    c = SighashCache(TX, PREVOUTS)
    inter = KPS["intermediary"]
    assert c.sha_amounts.hex() == inter["hashAmounts"]
    assert c.sha_outputs.hex() == inter["hashOutputs"]
    assert c.sha_prevouts.hex() == inter["hashPrevouts"]
    assert c.sha_scriptpubkeys.hex() == inter["hashScriptPubkeys"]
    assert c.sha_sequences.hex() == inter["hashSequences"]


@pytest.mark.parametrize("case", KPS["inputSpending"], ids=lambda c: f"input-{c['given']['txinIndex']}")
def test_key_path_spending(case: dict[str, Any]) -> None:
    given, inter, exp = case["given"], case["intermediary"], case["expected"]
    i, hash_type = given["txinIndex"], given["hashType"]
    root = bytes.fromhex(given["merkleRoot"]) if given["merkleRoot"] else None
    seckey = bytes.fromhex(given["internalPrivkey"])
    internal = xbytes(PrivateKey(seckey).public_key)
    assert internal.hex() == inter["internalPubkey"]
    assert taproot_tweak(internal, root).hex() == inter["tweak"]
    tweaked = taproot_tweak_seckey(seckey, root)
    assert tweaked.hex() == inter["tweakedPrivkey"]
    assert (b"\x00" + bip341_sigmsg(TX, PREVOUTS, i, hash_type)).hex() == inter["sigMsg"]
    sighash = bip341_sighash(TX, PREVOUTS, i, hash_type)
    assert sighash.hex() == inter["sigHash"]
    sig = PrivateKey(tweaked).sign_schnorr(sighash, b"\x00" * 32)
    witness = sig + (bytes([hash_type]) if hash_type else b"")
    assert [witness.hex()] == exp["witness"]
    # the output key of this input is the one the vector's prevout names
    q, _ = taproot_output_key(internal, root)
    assert PREVOUTS[i].script_pubkey == b"\x51\x20" + q


def test_key_path_spending_whole_transaction_verifies_taproot_inputs() -> None:
    """Signing every P2TR input of the vector transaction with the vector keys gives witnesses that
    verify; the vector's other inputs (P2PKH, P2WPKH without keys) are rejected by name."""
    witnesses: list[list[bytes]] = [[] for _ in TX.vin]
    for case in KPS["inputSpending"]:
        witnesses[case["given"]["txinIndex"]] = [bytes.fromhex(case["expected"]["witness"][0])]
    signed = with_witnesses(TX, witnesses)
    from wallet.verify import TransactionInvalid, verify_input

    for case in KPS["inputSpending"]:
        verify_input(signed, PREVOUTS, case["given"]["txinIndex"])
    with pytest.raises(TransactionInvalid, match="input 2: unsupported prevout type p2pkh"):
        verify_transaction(signed, PREVOUTS)
