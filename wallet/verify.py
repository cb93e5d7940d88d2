"""Full check of a finished transaction against the outputs it spends.

Supported spends are exactly the wallet's own: P2WPKH (BIP-143 ECDSA) and P2TR key path (BIP-341 /
BIP-340 Schnorr). Anything else as an input is rejected. ECDSA follows Bitcoin Core's standard rules:
strict DER (BIP-66), low S, a defined hash type, a compressed public key. Signature checks run in
libsecp256k1 through coincurve.
"""

from __future__ import annotations

from collections.abc import Sequence

from bitcoin.core import CTransaction
from coincurve import PublicKey

from tss.secp256k1 import N, schnorr_verify
from wallet.der import der_decode, is_strict_der
from wallet.script import classify, hash160
from wallet.sighash import (
    TAPROOT_HASH_TYPES,
    SighashCache,
    bip143_sighash,
    bip341_sighash,
    p2wpkh_script_code,
)
from wallet.transaction import MAX_MONEY, Prevout, as_transaction, input_witness

ECDSA_HASH_TYPES = frozenset({0x01, 0x02, 0x03, 0x81, 0x82, 0x83})
ANNEX_TAG = 0x50


class TransactionInvalid(ValueError):
    """A transaction that does not validate; ``input_index`` is None for whole-transaction faults."""

    def __init__(self, input_index: int | None, reason: str) -> None:
        self.input_index = input_index
        self.reason = reason
        where = "transaction" if input_index is None else f"input {input_index}"
        super().__init__(f"{where}: {reason}")


def verify_transaction(tx: bytes | CTransaction, prevouts: Sequence[Prevout]) -> None:
    """Check every input's witness against ``prevouts`` (one per input, in order) and that the outputs
    do not spend more than the inputs; :class:`TransactionInvalid` names the first fault."""
    try:
        t = as_transaction(tx)
    except ValueError as exc:
        raise TransactionInvalid(None, str(exc)) from exc
    if len(prevouts) != len(t.vin):
        raise TransactionInvalid(None, f"{len(prevouts)} prevouts given for {len(t.vin)} inputs")
    total_in = 0
    for i, p in enumerate(prevouts):
        if not 0 <= p.amount <= MAX_MONEY:
            raise TransactionInvalid(i, f"prevout amount {p.amount} out of range")
        total_in += p.amount
    total_out = sum(int(o.nValue) for o in t.vout)
    if total_out > total_in:
        raise TransactionInvalid(None, f"outputs total {total_out} sat exceed inputs total {total_in} sat")
    cache = SighashCache(t, prevouts)
    for i in range(len(t.vin)):
        verify_input(t, prevouts, i, cache=cache)


def verify_input(
    tx: CTransaction, prevouts: Sequence[Prevout], index: int, *, cache: SighashCache | None = None
) -> None:
    """Check input ``index`` alone; :class:`TransactionInvalid`."""
    if len(bytes(tx.vin[index].scriptSig)) != 0:
        raise TransactionInvalid(index, "native segwit input must have an empty scriptSig")
    info = classify(prevouts[index].script_pubkey)
    witness = input_witness(tx, index)
    if info.type == "p2wpkh":
        _verify_p2wpkh(tx, prevouts, index, info.program, witness, cache)
    elif info.type == "p2tr":
        _verify_p2tr(tx, prevouts, index, info.program, witness, cache)
    else:
        raise TransactionInvalid(index, f"unsupported prevout type {info.type} (only P2WPKH and P2TR)")


def _verify_p2wpkh(
    tx: CTransaction,
    prevouts: Sequence[Prevout],
    index: int,
    program: bytes,
    witness: list[bytes],
    cache: SighashCache | None,
) -> None:
    def fail(reason: str) -> TransactionInvalid:
        return TransactionInvalid(index, f"P2WPKH: {reason}")

    if len(witness) != 2:
        raise fail(f"witness must be [signature, pubkey], got {len(witness)} items")
    sig, pubkey = witness
    if hash160(pubkey) != program:
        raise fail("HASH160(pubkey) does not match the witness program")
    if len(pubkey) != 33 or pubkey[0] not in (2, 3):
        raise fail("public key is not compressed")
    if not sig:
        raise fail("empty signature")
    der, hash_type = sig[:-1], sig[-1]
    if not is_strict_der(der):
        raise fail("signature is not strict DER (BIP-66)")
    if hash_type not in ECDSA_HASH_TYPES:
        raise fail(f"undefined hash type 0x{hash_type:02x}")
    r, s = der_decode(der)
    if not (0 < r < N and 0 < s < N):
        raise fail("signature r or s out of range")
    if s > N // 2:
        raise fail("signature S is not low (BIP-62/BIP-146)")
    try:
        key = PublicKey(pubkey)
    except Exception as exc:
        raise fail("public key is not on the curve") from exc
    digest = bip143_sighash(
        tx, index, p2wpkh_script_code(program), prevouts[index].amount, hash_type, cache=cache
    )
    if not key.verify(der, digest, hasher=None):
        raise fail("ECDSA signature does not verify")


def _verify_p2tr(
    tx: CTransaction,
    prevouts: Sequence[Prevout],
    index: int,
    output_key: bytes,
    witness: list[bytes],
    cache: SighashCache | None,
) -> None:
    def fail(reason: str) -> TransactionInvalid:
        return TransactionInvalid(index, f"P2TR: {reason}")

    annex = None
    if len(witness) >= 2 and witness[-1] and witness[-1][0] == ANNEX_TAG:
        annex = witness[-1]
        witness = witness[:-1]
    if not witness:
        raise fail("empty witness")
    if len(witness) != 1:
        raise fail("script-path spends are not supported (key path only)")
    sig = witness[0]
    if len(sig) == 64:
        hash_type = 0
    elif len(sig) == 65:
        hash_type = sig[64]
        if hash_type == 0:
            raise fail("65-byte signature with explicit hash type 0x00")
        sig = sig[:64]
    else:
        raise fail(f"signature must be 64 or 65 bytes, got {len(sig)}")
    if hash_type not in TAPROOT_HASH_TYPES:
        raise fail(f"invalid hash type 0x{hash_type:02x}")
    if hash_type & 3 == 3 and index >= len(tx.vout):
        raise fail("SIGHASH_SINGLE without a matching output")
    msg = bip341_sighash(tx, prevouts, index, hash_type, annex=annex, cache=cache)
    if not schnorr_verify(msg, output_key, sig):
        raise fail("Schnorr signature does not verify")
