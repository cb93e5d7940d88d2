"""verify_transaction against an independent oracle (btclib's script engine), on valid transactions and
on every kind of corruption; plus the whole-transaction rules."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from bitcoin.core import CTransaction
from btclib.script.engine import verify_transaction as btclib_verify
from btclib.script.engine.flags import ALL_FLAGS, ScriptFlag
from btclib.tx import Tx as BTx
from btclib.tx import TxOut as BTxOut

from tests.unit.wallet_test_helpers import make_key, random_signed_tx, sign_input
from wallet.sighash import SighashCache
from wallet.transaction import (
    OutPoint,
    Prevout,
    TxOutput,
    build_transaction,
    input_witness,
    parse_transaction,
    serialize,
    with_witnesses,
)
from wallet.verify import TransactionInvalid, verify_transaction

# consensus plus the standardness rules verify_transaction applies to ECDSA (strict encoding, low S,
# compressed keys in segwit v0)
ORACLE_FLAGS = ALL_FLAGS | ScriptFlag.STRICTENC | ScriptFlag.LOW_S | ScriptFlag.WITNESS_PUBKEYTYPE
ALL_TYPES = (0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83)


def oracle_ok(raw: bytes, prevouts: list[Prevout]) -> bool:
    try:
        btclib_verify([BTxOut(p.amount, p.script_pubkey) for p in prevouts], BTx.parse(raw), ORACLE_FLAGS)
    except Exception:
        return False
    return True


def ours_ok(raw: bytes, prevouts: list[Prevout]) -> bool:
    try:
        verify_transaction(raw, prevouts)
    except TransactionInvalid:
        return False
    return True


def agree(raw: bytes, prevouts: list[Prevout]) -> bool:
    ours = ours_ok(raw, prevouts)
    assert ours == oracle_ok(raw, prevouts), f"disagreement (ours={ours}) on {raw.hex()}"
    return ours


def _flip(b: bytes, bit: int) -> bytes:
    a = bytearray(b)
    a[bit // 8] ^= 1 << (bit % 8)
    return bytes(a)


def _tx_cases() -> list[tuple[int, tuple[int, ...]]]:
    return [(seed, (0x00, 0x01) if seed % 2 else ALL_TYPES) for seed in range(12)]


@pytest.mark.parametrize(("seed", "hash_types"), _tx_cases(), ids=[f"seed-{s}" for s, _ in _tx_cases()])
def test_oracle_agrees_valid_and_corrupted(seed: int, hash_types: tuple[int, ...]) -> None:
    rng = random.Random(seed)
    tx, prevouts, _keys = random_signed_tx(rng, rng.randint(1, 4), rng.randint(1, 3), hash_types=hash_types)
    raw = serialize(tx)
    assert agree(raw, prevouts)
    strict = hash_types == (0x00, 0x01)  # every signature commits to everything
    for i in range(len(tx.vin)):
        # a flipped bit anywhere in the signature
        wit = [input_witness(tx, j) for j in range(len(tx.vin))]
        sig = wit[i][0]
        wit[i] = [_flip(sig, rng.randrange(len(sig) * 8)), *wit[i][1:]]
        assert not agree(serialize(with_witnesses(tx, wit)), prevouts)
        # the prevout amount or script
        bad = list(prevouts)
        bad[i] = replace(prevouts[i], amount=prevouts[i].amount ^ (1 << rng.randrange(20)))
        ok = agree(raw, bad)
        assert not (strict and ok)
    # an output's amount or script
    outs = list(tx.vout)
    k = rng.randrange(len(outs))
    from bitcoin.core import CScript, CTxOut

    outs[k] = CTxOut(outs[k].nValue - 1 - rng.randrange(100), outs[k].scriptPubKey)
    t2 = CTransaction(tx.vin, outs, tx.nLockTime, tx.nVersion, tx.wit)
    assert not (agree(serialize(t2), prevouts) and strict)
    spk = bytes(outs[k].scriptPubKey)
    outs[k] = CTxOut(tx.vout[k].nValue, CScript(_flip(spk, 8 * 2 + rng.randrange(8))))
    t3 = CTransaction(tx.vin, outs, tx.nLockTime, tx.nVersion, tx.wit)
    assert not (agree(serialize(t3), prevouts) and strict)


def test_annex_and_65_byte_signatures() -> None:
    rng = random.Random(99)
    key = make_key(rng, "p2tr")
    prevouts = [Prevout(50_000, key.script_pubkey)]
    tx = build_transaction([(OutPoint("11" * 32, 0), 0xFFFFFFFD)], [TxOutput(40_000, key.script_pubkey)])
    for ht in ALL_TYPES:
        for annex in (None, b"\x50", b"\x50hello"):
            w = sign_input(tx, prevouts, 0, key, ht, SighashCache(tx, prevouts), annex=annex)
            assert agree(serialize(with_witnesses(tx, [w])), prevouts)
            if annex is not None:  # dropping the annex breaks the signature
                assert not agree(serialize(with_witnesses(tx, [w[:-1]])), prevouts)
    w = sign_input(tx, prevouts, 0, key, 0x00, SighashCache(tx, prevouts))
    # a 65-byte signature with an explicit 0x00 type is invalid even though the 64 bytes verify
    assert not agree(serialize(with_witnesses(tx, [[w[0] + b"\x00"]])), prevouts)
    with pytest.raises(TransactionInvalid, match="input 0: P2TR: 65-byte signature with explicit hash type"):
        verify_transaction(with_witnesses(tx, [[w[0] + b"\x00"]]), prevouts)


def test_high_s_and_non_der_rejected_like_oracle() -> None:
    from tss.secp256k1 import N
    from wallet.der import der_decode, der_encode

    rng = random.Random(5)
    tx, prevouts, _ = random_signed_tx(rng, 1, 1, kinds=("p2wpkh",))
    sig, pub = input_witness(tx, 0)
    r, s = der_decode(sig[:-1])
    high = der_encode(r, N - s) + sig[-1:]
    raw = serialize(with_witnesses(tx, [[high, pub]]))
    assert not agree(raw, prevouts)
    with pytest.raises(TransactionInvalid, match="input 0: P2WPKH: signature S is not low"):
        verify_transaction(raw, prevouts)
    padded = b"\x30" + bytes([sig[1] + 1]) + sig[2:3] + bytes([sig[3] + 1]) + b"\x00" + sig[4:]
    raw = serialize(with_witnesses(tx, [[padded, pub]]))
    assert not agree(raw, prevouts)
    with pytest.raises(TransactionInvalid, match="strict DER"):
        verify_transaction(raw, prevouts)
    for ht in (0x00, 0x04, 0x84):
        raw = serialize(with_witnesses(tx, [[sig[:-1] + bytes([ht]), pub]]))
        assert not agree(raw, prevouts)


def test_whole_transaction_rules() -> None:
    rng = random.Random(7)
    tx, prevouts, _ = random_signed_tx(rng, 2, 2)
    with pytest.raises(TransactionInvalid, match="1 prevouts given for 2 inputs") as e:
        verify_transaction(tx, prevouts[:1])
    assert e.value.input_index is None
    small = [replace(p, amount=1) for p in prevouts]
    with pytest.raises(TransactionInvalid, match="exceed inputs total"):
        verify_transaction(tx, small)
    assert not oracle_ok(serialize(tx), small)
    legacy = [prevouts[0], Prevout(prevouts[1].amount, bytes.fromhex("76a914" + "00" * 20 + "88ac"))]
    with pytest.raises(TransactionInvalid, match="input 1: unsupported prevout type p2pkh") as e:
        verify_transaction(tx, legacy)
    assert e.value.input_index == 1 and "unsupported" in e.value.reason
    with pytest.raises(TransactionInvalid, match="malformed"):
        verify_transaction(serialize(tx)[:-3], prevouts)
    with pytest.raises(ValueError, match=r"trailing|Extra|malformed"):
        parse_transaction(serialize(tx) + b"\x00")
    unsigned = serialize(with_witnesses(tx, [[], []]))
    with pytest.raises(TransactionInvalid, match=r"input 0: .*witness"):
        verify_transaction(unsigned, prevouts)
