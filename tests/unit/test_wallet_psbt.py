"""PSBT: export an unsigned spend, import it signed, finalize, verify; malformed PSBTs named."""

from __future__ import annotations

import base64
import random

import pytest

from tests.unit.wallet_test_helpers import make_key, sign_input
from wallet.coin_selection import Utxo, build_spend
from wallet.psbt import InputKey, KeyOrigin, Psbt, finalize_psbt, parse_psbt, psbt_from_spend
from wallet.transaction import OutPoint, parse_transaction, vsize
from wallet.verify import TransactionInvalid, verify_transaction

RNG = random.Random(77)
TR, WPKH = make_key(RNG, "p2tr"), make_key(RNG, "p2wpkh")


def _psbt() -> tuple[Psbt, str]:
    utxos = [
        Utxo(OutPoint("aa" * 32, 0), 60_000, TR.script_pubkey),
        Utxo(OutPoint("bb" * 32, 1), 70_000, WPKH.script_pubkey),
    ]
    spend = build_spend(utxos, WPKH.script_pubkey, 100_000, TR.script_pubkey, 2.0, strategy="largest_first")
    keys = [
        InputKey(
            TR.pubkey if u.script_pubkey == TR.script_pubkey else WPKH.pubkey,
            KeyOrigin(b"\x01\x02\x03\x04", (0, i)),
        )
        for i, u in enumerate(spend.inputs)
    ]
    outs = [None] * len(spend.outputs)
    if spend.change_index is not None:
        outs[spend.change_index] = InputKey(TR.pubkey, KeyOrigin(b"\x01\x02\x03\x04", (1, 0)))
    return psbt_from_spend(spend, keys, outs), spend.unsigned_bytes().hex()


def test_round_trip_sign_finalize_verify() -> None:
    psbt, _ = _psbt()
    b64 = psbt.to_base64()
    imported = parse_psbt(b64)
    assert imported.serialize() == psbt.serialize()
    prevouts = imported.prevouts()
    for i, inp in enumerate(imported.inputs):
        if inp.tap_internal_key is not None:
            assert inp.tap_internal_key == TR.pubkey[1:]
            inp.tap_key_sig = sign_input(imported.tx, prevouts, i, TR, 0)[0]
        else:
            sig, pub = sign_input(imported.tx, prevouts, i, WPKH, 1)
            assert pub in inp.bip32_derivations
            inp.partial_sigs[pub] = sig
    signed = parse_psbt(imported.to_base64())
    raw = finalize_psbt(signed)
    verify_transaction(raw, prevouts)
    assert vsize(parse_transaction(raw)) <= build_spend_vsize(signed)
    # a flipped signature bit is caught at finalization
    bad = parse_psbt(signed.serialize())
    for inp in bad.inputs:
        if inp.tap_key_sig is not None:
            inp.tap_key_sig = bytes([inp.tap_key_sig[0] ^ 1]) + inp.tap_key_sig[1:]
    with pytest.raises(TransactionInvalid, match="Schnorr signature does not verify"):
        finalize_psbt(bad)


def build_spend_vsize(psbt: Psbt) -> int:
    from wallet.fees import estimate_vsize

    return estimate_vsize(
        [p.script_pubkey for p in psbt.prevouts()], [bytes(o.scriptPubKey) for o in psbt.tx.vout]
    )


def test_missing_signature_named() -> None:
    psbt, _ = _psbt()
    with pytest.raises(ValueError, match=r"has no (TAP_KEY_SIG|PARTIAL_SIG)"):
        finalize_psbt(psbt)


def _raw() -> bytes:
    return _psbt()[0].serialize()


def _dup_first_input_key(raw: bytes) -> bytes:
    p = parse_psbt(raw)
    body = p.serialize()
    # duplicate the global unsigned-tx entry
    start = 5
    klen = body[start]
    vlen_pos = start + 1 + klen
    vlen = body[vlen_pos]
    assert vlen < 0xFD
    entry = body[start : vlen_pos + 1 + vlen]
    return body[:start] + entry + body[start:]


def _bad_keylen(raw: bytes) -> bytes:
    p = parse_psbt(raw)
    p.inputs[0].unknown[b"\x01\x00"] = b"x"  # WITNESS_UTXO with a 2-byte key
    return p.serialize()


def _bad_tap_sig(raw: bytes) -> bytes:
    p = parse_psbt(raw)
    p.inputs[0].unknown[b"\x13"] = b"\x00" * 63
    return p.serialize()


MALFORMED = [
    (lambda r: b"psbu\xff" + r[5:], "bad magic"),
    (lambda r: r[:-7], "truncated"),
    (lambda r: r + b"\x00", "trailing"),
    (_dup_first_input_key, "duplicate key"),
    (_bad_keylen, "WITNESS_UTXO key in input 0 must be 1 bytes"),
    (_bad_tap_sig, "TAP_KEY_SIG in input 0 must be 64 or 65 bytes"),
    (lambda r: b"psbt\xff\x00", "no unsigned transaction"),
]


@pytest.mark.parametrize(
    ("mutate", "problem"), MALFORMED, ids=[m[1].split()[0] + str(i) for i, m in enumerate(MALFORMED)]
)
def test_malformed_named(mutate: object, problem: str) -> None:
    raw = mutate(_raw())  # type: ignore[operator]
    with pytest.raises(ValueError, match=problem):
        parse_psbt(raw)


def test_bad_base64() -> None:
    with pytest.raises(ValueError, match="base64"):
        parse_psbt("not base64!!")
    assert parse_psbt(base64.b64encode(_raw()).decode()).serialize() == _raw()
