"""Signature hashes: BIP-341 (taproot, every hash type, annex, optional script-path extension) and
BIP-143 (segwit v0, used for P2WPKH).

Both take the unsigned (or signed: witnesses are ignored) ``CTransaction`` and, for BIP-341, the
prevouts of *every* input. Per-transaction hashes are computed once in :class:`SighashCache` so that
hashing every input of an n-input transaction is O(n), not O(n^2).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from functools import cached_property

from bitcoin.core import CTransaction

from tss.secp256k1 import tagged_hash
from wallet.transaction import Prevout

SIGHASH_DEFAULT = 0x00  # BIP-341 only: ALL, with a 64-byte signature
SIGHASH_ALL = 0x01
SIGHASH_NONE = 0x02
SIGHASH_SINGLE = 0x03
SIGHASH_ANYONECANPAY = 0x80
TAPROOT_HASH_TYPES = frozenset({0x00, 0x01, 0x02, 0x03, 0x81, 0x82, 0x83})


def _sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def _dsha256(b: bytes) -> bytes:
    return _sha256(_sha256(b))


def compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


def ser_string(b: bytes) -> bytes:
    return compact_size(len(b)) + b


def _ser_outpoint(tx: CTransaction, i: int) -> bytes:
    op = tx.vin[i].prevout
    return bytes(op.hash) + struct.pack("<I", op.n)


def _ser_output(tx: CTransaction, i: int) -> bytes:
    out = tx.vout[i]
    return struct.pack("<q", out.nValue) + ser_string(bytes(out.scriptPubKey))


class SighashCache:
    """The per-transaction parts of BIP-341 / BIP-143 messages, computed on first use."""

    def __init__(self, tx: CTransaction, prevouts: Sequence[Prevout] | None = None) -> None:
        self.tx = tx
        self.prevouts = list(prevouts) if prevouts is not None else None

    # single SHA256 (BIP-341); BIP-143 hashes are SHA256 of these
    @cached_property
    def sha_prevouts(self) -> bytes:
        return _sha256(b"".join(_ser_outpoint(self.tx, i) for i in range(len(self.tx.vin))))

    @cached_property
    def sha_sequences(self) -> bytes:
        return _sha256(b"".join(struct.pack("<I", t.nSequence) for t in self.tx.vin))

    @cached_property
    def sha_outputs(self) -> bytes:
        return _sha256(b"".join(_ser_output(self.tx, i) for i in range(len(self.tx.vout))))

    @cached_property
    def sha_amounts(self) -> bytes:
        return _sha256(b"".join(struct.pack("<q", p.amount) for p in self._prevouts()))

    @cached_property
    def sha_scriptpubkeys(self) -> bytes:
        return _sha256(b"".join(ser_string(p.script_pubkey) for p in self._prevouts()))

    def _prevouts(self) -> list[Prevout]:
        if self.prevouts is None:
            raise ValueError("BIP-341 sighash needs the prevouts of every input")
        if len(self.prevouts) != len(self.tx.vin):
            raise ValueError(f"{len(self.prevouts)} prevouts for {len(self.tx.vin)} inputs")
        return self.prevouts


def bip341_sigmsg(
    tx: CTransaction,
    prevouts: Sequence[Prevout],
    input_index: int,
    hash_type: int = SIGHASH_DEFAULT,
    *,
    annex: bytes | None = None,
    leaf_hash: bytes | None = None,
    codesep_pos: int = 0xFFFFFFFF,
    cache: SighashCache | None = None,
) -> bytes:
    """BIP-341 ``SigMsg(hash_type, ext_flag)`` (without the epoch byte); with ``leaf_hash`` the
    BIP-342 script-path extension is appended (ext_flag = 1)."""
    if hash_type not in TAPROOT_HASH_TYPES:
        raise ValueError(f"invalid taproot hash type 0x{hash_type:02x}")
    if not 0 <= input_index < len(tx.vin):
        raise ValueError(f"input index {input_index} out of range ({len(tx.vin)} inputs)")
    if annex is not None and (not annex or annex[0] != 0x50):
        raise ValueError("annex must start with 0x50")
    c = cache if cache is not None and cache.tx is tx else SighashCache(tx, prevouts)
    pv = c._prevouts()
    base = hash_type & 0x03
    anyone_can_pay = bool(hash_type & SIGHASH_ANYONECANPAY)
    parts = [bytes([hash_type]), struct.pack("<i", tx.nVersion), struct.pack("<I", tx.nLockTime)]
    if not anyone_can_pay:
        parts += [c.sha_prevouts, c.sha_amounts, c.sha_scriptpubkeys, c.sha_sequences]
    if base not in (SIGHASH_NONE, SIGHASH_SINGLE):
        parts.append(c.sha_outputs)
    ext_flag = 1 if leaf_hash is not None else 0
    parts.append(bytes([ext_flag * 2 + (annex is not None)]))
    if anyone_can_pay:
        p = pv[input_index]
        parts += [
            _ser_outpoint(tx, input_index),
            struct.pack("<q", p.amount),
            ser_string(p.script_pubkey),
            struct.pack("<I", tx.vin[input_index].nSequence),
        ]
    else:
        parts.append(struct.pack("<I", input_index))
    if annex is not None:
        parts.append(_sha256(ser_string(annex)))
    if base == SIGHASH_SINGLE:
        if input_index >= len(tx.vout):
            raise ValueError(f"SIGHASH_SINGLE input {input_index} has no matching output")
        parts.append(_sha256(_ser_output(tx, input_index)))
    if leaf_hash is not None:
        if len(leaf_hash) != 32:
            raise ValueError("tapleaf hash must be 32 bytes")
        parts += [leaf_hash, b"\x00", struct.pack("<I", codesep_pos)]
    return b"".join(parts)


def bip341_sighash(
    tx: CTransaction,
    prevouts: Sequence[Prevout],
    input_index: int,
    hash_type: int = SIGHASH_DEFAULT,
    *,
    annex: bytes | None = None,
    leaf_hash: bytes | None = None,
    codesep_pos: int = 0xFFFFFFFF,
    cache: SighashCache | None = None,
) -> bytes:
    """The 32-byte message a taproot key-path (or script-path) signature signs:
    ``hash_TapSighash(0x00 || SigMsg)``."""
    msg = bip341_sigmsg(
        tx, prevouts, input_index, hash_type, annex=annex, leaf_hash=leaf_hash,
        codesep_pos=codesep_pos, cache=cache,
    )
    return tagged_hash("TapSighash", b"\x00" + msg)


def p2wpkh_script_code(pubkey_hash: bytes) -> bytes:
    """BIP-143 scriptCode of a P2WPKH input: the P2PKH script of the key hash."""
    if len(pubkey_hash) != 20:
        raise ValueError("P2WPKH key hash must be 20 bytes")
    return b"\x76\xa9\x14" + pubkey_hash + b"\x88\xac"


def bip143_sighash(
    tx: CTransaction,
    input_index: int,
    script_code: bytes,
    amount: int,
    hash_type: int = SIGHASH_ALL,
    *,
    cache: SighashCache | None = None,
) -> bytes:
    """BIP-143 double-SHA256 digest for segwit v0 input ``input_index`` (``script_code`` without its
    length prefix; for P2WPKH use :func:`p2wpkh_script_code`). ``hash_type`` is the full 32-bit value
    serialized in the message; its low byte selects the mode as in Bitcoin Core."""
    if not 0 <= input_index < len(tx.vin):
        raise ValueError(f"input index {input_index} out of range ({len(tx.vin)} inputs)")
    c = cache if cache is not None and cache.tx is tx else SighashCache(tx)
    zero = b"\x00" * 32
    base = hash_type & 0x1F
    anyone_can_pay = bool(hash_type & SIGHASH_ANYONECANPAY)
    hash_prevouts = zero if anyone_can_pay else _sha256(c.sha_prevouts)
    if anyone_can_pay or base in (SIGHASH_SINGLE, SIGHASH_NONE):
        hash_sequence = zero
    else:
        hash_sequence = _sha256(c.sha_sequences)
    if base not in (SIGHASH_SINGLE, SIGHASH_NONE):
        hash_outputs = _sha256(c.sha_outputs)
    elif base == SIGHASH_SINGLE and input_index < len(tx.vout):
        hash_outputs = _dsha256(_ser_output(tx, input_index))
    else:
        hash_outputs = zero
    msg = b"".join(
        [
            struct.pack("<i", tx.nVersion),
            hash_prevouts,
            hash_sequence,
            _ser_outpoint(tx, input_index),
            ser_string(script_code),
            struct.pack("<q", amount),
            struct.pack("<I", tx.vin[input_index].nSequence),
            hash_outputs,
            struct.pack("<I", tx.nLockTime),
            struct.pack("<I", hash_type & 0xFFFFFFFF),
        ]
    )
    return _dsha256(msg)
