"""PSBT version 0 (BIP-174) with the BIP-371 taproot fields, for the wallet's P2TR and P2WPKH spends.

Export an :class:`~wallet.coin_selection.UnsignedSpend` (:func:`psbt_from_spend`), parse a signed one
(:func:`parse_psbt`, base64 or raw), and finalize it into a verified network transaction
(:func:`finalize_psbt`). A malformed PSBT raises ValueError naming the problem. Unknown keys are kept
and written back unchanged.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from bitcoin.core import CTransaction

from wallet.coin_selection import UnsignedSpend
from wallet.script import classify, hash160
from wallet.sighash import compact_size, ser_string
from wallet.transaction import Prevout, serialize, with_witnesses
from wallet.verify import verify_transaction

MAGIC = b"psbt\xff"

# global
PSBT_GLOBAL_UNSIGNED_TX = 0x00
PSBT_GLOBAL_VERSION = 0xFB
# input
PSBT_IN_NON_WITNESS_UTXO = 0x00
PSBT_IN_WITNESS_UTXO = 0x01
PSBT_IN_PARTIAL_SIG = 0x02
PSBT_IN_SIGHASH_TYPE = 0x03
PSBT_IN_BIP32_DERIVATION = 0x06
PSBT_IN_FINAL_SCRIPTSIG = 0x07
PSBT_IN_FINAL_SCRIPTWITNESS = 0x08
PSBT_IN_TAP_KEY_SIG = 0x13
PSBT_IN_TAP_BIP32_DERIVATION = 0x16
PSBT_IN_TAP_INTERNAL_KEY = 0x17
PSBT_IN_TAP_MERKLE_ROOT = 0x18
# output
PSBT_OUT_BIP32_DERIVATION = 0x02
PSBT_OUT_TAP_INTERNAL_KEY = 0x05
PSBT_OUT_TAP_BIP32_DERIVATION = 0x07


@dataclass(frozen=True)
class KeyOrigin:
    """Master key fingerprint and derivation path of a key."""

    fingerprint: bytes
    path: tuple[int, ...]

    def serialize(self) -> bytes:
        return self.fingerprint + b"".join(struct.pack("<I", i) for i in self.path)

    @classmethod
    def parse(cls, b: bytes) -> KeyOrigin:
        if len(b) < 4 or len(b) % 4:
            raise ValueError(f"malformed PSBT: key origin of {len(b)} bytes (must be 4 + 4*n)")
        return cls(b[:4], tuple(struct.unpack_from("<I", b, o)[0] for o in range(4, len(b), 4)))


@dataclass
class PsbtInput:
    witness_utxo: Prevout | None = None
    non_witness_utxo: bytes | None = None
    partial_sigs: dict[bytes, bytes] = field(default_factory=dict)  # pubkey33 -> DER sig + hash type
    sighash_type: int | None = None
    bip32_derivations: dict[bytes, KeyOrigin] = field(default_factory=dict)
    final_script_sig: bytes | None = None
    final_script_witness: list[bytes] | None = None
    tap_key_sig: bytes | None = None
    tap_bip32_derivations: dict[bytes, tuple[tuple[bytes, ...], KeyOrigin]] = field(default_factory=dict)
    tap_internal_key: bytes | None = None
    tap_merkle_root: bytes | None = None
    unknown: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class PsbtOutput:
    bip32_derivations: dict[bytes, KeyOrigin] = field(default_factory=dict)
    tap_internal_key: bytes | None = None
    tap_bip32_derivations: dict[bytes, tuple[tuple[bytes, ...], KeyOrigin]] = field(default_factory=dict)
    unknown: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class Psbt:
    tx: CTransaction  # unsigned: empty scriptSigs, no witnesses
    inputs: list[PsbtInput]
    outputs: list[PsbtOutput]
    unknown: dict[bytes, bytes] = field(default_factory=dict)

    def prevouts(self) -> list[Prevout]:
        out = []
        for i, inp in enumerate(self.inputs):
            if inp.witness_utxo is None:
                raise ValueError(f"PSBT input {i} has no witness UTXO")
            out.append(inp.witness_utxo)
        return out

    def serialize(self) -> bytes:
        parts = [MAGIC, _kv(bytes([PSBT_GLOBAL_UNSIGNED_TX]), serialize(self.tx, False))]
        parts += [_kv(k, v) for k, v in sorted(self.unknown.items())]
        parts.append(b"\x00")
        for inp in self.inputs:
            parts.append(_ser_input(inp))
        for out in self.outputs:
            parts.append(_ser_output(out))
        return b"".join(parts)

    def to_base64(self) -> str:
        return base64.b64encode(self.serialize()).decode()


def _kv(key: bytes, value: bytes) -> bytes:
    return ser_string(key) + ser_string(value)


def _ser_witness(stack: Sequence[bytes]) -> bytes:
    return compact_size(len(stack)) + b"".join(ser_string(x) for x in stack)


def _ser_tap_deriv(leaves: tuple[bytes, ...], origin: KeyOrigin) -> bytes:
    return compact_size(len(leaves)) + b"".join(leaves) + origin.serialize()


def _ser_input(inp: PsbtInput) -> bytes:
    kv: list[tuple[bytes, bytes]] = []
    if inp.non_witness_utxo is not None:
        kv.append((bytes([PSBT_IN_NON_WITNESS_UTXO]), inp.non_witness_utxo))
    if inp.witness_utxo is not None:
        w = inp.witness_utxo
        kv.append((bytes([PSBT_IN_WITNESS_UTXO]), struct.pack("<q", w.amount) + ser_string(w.script_pubkey)))
    kv += [(bytes([PSBT_IN_PARTIAL_SIG]) + pk, sig) for pk, sig in inp.partial_sigs.items()]
    if inp.sighash_type is not None:
        kv.append((bytes([PSBT_IN_SIGHASH_TYPE]), struct.pack("<I", inp.sighash_type)))
    kv += [(bytes([PSBT_IN_BIP32_DERIVATION]) + pk, o.serialize()) for pk, o in inp.bip32_derivations.items()]
    if inp.final_script_sig is not None:
        kv.append((bytes([PSBT_IN_FINAL_SCRIPTSIG]), inp.final_script_sig))
    if inp.final_script_witness is not None:
        kv.append((bytes([PSBT_IN_FINAL_SCRIPTWITNESS]), _ser_witness(inp.final_script_witness)))
    if inp.tap_key_sig is not None:
        kv.append((bytes([PSBT_IN_TAP_KEY_SIG]), inp.tap_key_sig))
    kv += [
        (bytes([PSBT_IN_TAP_BIP32_DERIVATION]) + xk, _ser_tap_deriv(*d))
        for xk, d in inp.tap_bip32_derivations.items()
    ]
    if inp.tap_internal_key is not None:
        kv.append((bytes([PSBT_IN_TAP_INTERNAL_KEY]), inp.tap_internal_key))
    if inp.tap_merkle_root is not None:
        kv.append((bytes([PSBT_IN_TAP_MERKLE_ROOT]), inp.tap_merkle_root))
    kv += list(inp.unknown.items())
    return b"".join(_kv(k, v) for k, v in sorted(kv)) + b"\x00"


def _ser_output(out: PsbtOutput) -> bytes:
    kv = [(bytes([PSBT_OUT_BIP32_DERIVATION]) + pk, o.serialize()) for pk, o in out.bip32_derivations.items()]
    if out.tap_internal_key is not None:
        kv.append((bytes([PSBT_OUT_TAP_INTERNAL_KEY]), out.tap_internal_key))
    kv += [
        (bytes([PSBT_OUT_TAP_BIP32_DERIVATION]) + xk, _ser_tap_deriv(*d))
        for xk, d in out.tap_bip32_derivations.items()
    ]
    kv += list(out.unknown.items())
    return b"".join(_kv(k, v) for k, v in sorted(kv)) + b"\x00"


# ---------------------------------------------------------------------------------------------
# parsing


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"malformed PSBT: truncated in {what}")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def compact(self, what: str) -> int:
        first = self.read(1, what)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.read(size, what), "little")

    def map(self, what: str) -> list[tuple[bytes, bytes]]:
        """Key-value pairs up to the 0x00 separator; duplicate keys refused."""
        pairs: list[tuple[bytes, bytes]] = []
        seen: set[bytes] = set()
        while True:
            klen = self.compact(f"{what} key length")
            if klen == 0:
                return pairs
            key = self.read(klen, f"{what} key")
            value = self.read(self.compact(f"{what} value length"), f"{what} value")
            if key in seen:
                raise ValueError(f"malformed PSBT: duplicate key {key.hex()} in {what}")
            seen.add(key)
            pairs.append((key, value))


def _expect_keylen(key: bytes, n: int, name: str, where: str) -> None:
    if len(key) != n:
        raise ValueError(f"malformed PSBT: {name} key in {where} must be {n} bytes, got {len(key)}")


def _expect_32(value: bytes, name: str, where: str) -> bytes:
    if len(value) != 32:
        raise ValueError(f"malformed PSBT: {name} in {where} must be 32 bytes, got {len(value)}")
    return value


def _parse_witness(b: bytes, where: str) -> list[bytes]:
    r = _Reader(b)
    stack = [
        r.read(r.compact(f"{where} witness item length"), f"{where} witness item")
        for _ in range(r.compact(f"{where} witness count"))
    ]
    if r.pos != len(b):
        raise ValueError(f"malformed PSBT: trailing bytes in {where} final script witness")
    return stack


def _parse_tap_deriv(b: bytes, where: str) -> tuple[tuple[bytes, ...], KeyOrigin]:
    r = _Reader(b)
    n = r.compact(f"{where} tap leaf count")
    leaves = tuple(r.read(32, f"{where} tap leaf hash") for _ in range(n))
    return leaves, KeyOrigin.parse(b[r.pos :])


def _parse_input(pairs: list[tuple[bytes, bytes]], where: str) -> PsbtInput:
    inp = PsbtInput()
    for key, value in pairs:
        t = key[0]
        if t == PSBT_IN_NON_WITNESS_UTXO:
            _expect_keylen(key, 1, "NON_WITNESS_UTXO", where)
            inp.non_witness_utxo = value
        elif t == PSBT_IN_WITNESS_UTXO:
            _expect_keylen(key, 1, "WITNESS_UTXO", where)
            r = _Reader(value)
            amount = struct.unpack("<q", r.read(8, f"{where} witness UTXO amount"))[0]
            spk = r.read(r.compact(f"{where} witness UTXO script length"), f"{where} witness UTXO script")
            if r.pos != len(value):
                raise ValueError(f"malformed PSBT: trailing bytes in {where} witness UTXO")
            inp.witness_utxo = Prevout(amount, spk)
        elif t == PSBT_IN_PARTIAL_SIG:
            if len(key) != 34 or key[1] not in (2, 3):
                raise ValueError(f"malformed PSBT: PARTIAL_SIG key in {where} must be 0x02 + 33-byte pubkey")
            inp.partial_sigs[key[1:]] = value
        elif t == PSBT_IN_SIGHASH_TYPE:
            _expect_keylen(key, 1, "SIGHASH_TYPE", where)
            if len(value) != 4:
                raise ValueError(f"malformed PSBT: SIGHASH_TYPE in {where} must be 4 bytes")
            inp.sighash_type = struct.unpack("<I", value)[0]
        elif t == PSBT_IN_BIP32_DERIVATION:
            if len(key) != 34:
                raise ValueError(
                    f"malformed PSBT: BIP32_DERIVATION key in {where} must be 0x06 + 33-byte pubkey"
                )
            inp.bip32_derivations[key[1:]] = KeyOrigin.parse(value)
        elif t == PSBT_IN_FINAL_SCRIPTSIG:
            _expect_keylen(key, 1, "FINAL_SCRIPTSIG", where)
            inp.final_script_sig = value
        elif t == PSBT_IN_FINAL_SCRIPTWITNESS:
            _expect_keylen(key, 1, "FINAL_SCRIPTWITNESS", where)
            inp.final_script_witness = _parse_witness(value, where)
        elif t == PSBT_IN_TAP_KEY_SIG:
            _expect_keylen(key, 1, "TAP_KEY_SIG", where)
            if len(value) not in (64, 65):
                raise ValueError(
                    f"malformed PSBT: TAP_KEY_SIG in {where} must be 64 or 65 bytes, got {len(value)}"
                )
            inp.tap_key_sig = value
        elif t == PSBT_IN_TAP_BIP32_DERIVATION:
            _expect_keylen(key, 33, "TAP_BIP32_DERIVATION", where)
            inp.tap_bip32_derivations[key[1:]] = _parse_tap_deriv(value, where)
        elif t == PSBT_IN_TAP_INTERNAL_KEY:
            _expect_keylen(key, 1, "TAP_INTERNAL_KEY", where)
            inp.tap_internal_key = _expect_32(value, "TAP_INTERNAL_KEY", where)
        elif t == PSBT_IN_TAP_MERKLE_ROOT:
            _expect_keylen(key, 1, "TAP_MERKLE_ROOT", where)
            inp.tap_merkle_root = _expect_32(value, "TAP_MERKLE_ROOT", where)
        else:
            inp.unknown[key] = value
    return inp


def _parse_output(pairs: list[tuple[bytes, bytes]], where: str) -> PsbtOutput:
    out = PsbtOutput()
    for key, value in pairs:
        t = key[0]
        if t == PSBT_OUT_BIP32_DERIVATION:
            if len(key) != 34:
                raise ValueError(
                    f"malformed PSBT: BIP32_DERIVATION key in {where} must be 0x02 + 33-byte pubkey"
                )
            out.bip32_derivations[key[1:]] = KeyOrigin.parse(value)
        elif t == PSBT_OUT_TAP_INTERNAL_KEY:
            _expect_keylen(key, 1, "TAP_INTERNAL_KEY", where)
            out.tap_internal_key = _expect_32(value, "TAP_INTERNAL_KEY", where)
        elif t == PSBT_OUT_TAP_BIP32_DERIVATION:
            _expect_keylen(key, 33, "TAP_BIP32_DERIVATION", where)
            out.tap_bip32_derivations[key[1:]] = _parse_tap_deriv(value, where)
        else:
            out.unknown[key] = value
    return out


def parse_psbt(data: bytes | str) -> Psbt:
    """Parse a version-0 PSBT from raw bytes or base64; ValueError naming what is malformed."""
    if isinstance(data, str):
        try:
            data = base64.b64decode(data.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"malformed PSBT: invalid base64 ({exc})") from exc
    if not data.startswith(MAGIC):
        raise ValueError("malformed PSBT: bad magic (expected 'psbt' 0xff)")
    r = _Reader(data)
    r.pos = len(MAGIC)
    glob = r.map("global map")
    tx: CTransaction | None = None
    unknown: dict[bytes, bytes] = {}
    for key, value in glob:
        if key[0] == PSBT_GLOBAL_UNSIGNED_TX:
            _expect_keylen(key, 1, "UNSIGNED_TX", "global map")
            try:
                tx = CTransaction.deserialize(value)
            except Exception as exc:
                raise ValueError(f"malformed PSBT: unsigned transaction does not parse ({exc})") from exc
        elif key[0] == PSBT_GLOBAL_VERSION:
            if value != b"\x00\x00\x00\x00":
                raise ValueError(f"unsupported PSBT version {int.from_bytes(value, 'little')} (only 0)")
            unknown[key] = value
        else:
            unknown[key] = value
    if tx is None:
        raise ValueError("malformed PSBT: no unsigned transaction in the global map")
    if tx.has_witness() or any(len(bytes(i.scriptSig)) for i in tx.vin):
        raise ValueError("malformed PSBT: unsigned transaction has scriptSigs or witnesses")
    inputs = [_parse_input(r.map(f"input {i}"), f"input {i}") for i in range(len(tx.vin))]
    outputs = [_parse_output(r.map(f"output {i}"), f"output {i}") for i in range(len(tx.vout))]
    if r.pos != len(data):
        raise ValueError(f"malformed PSBT: {len(data) - r.pos} trailing bytes after the last map")
    return Psbt(tx, inputs, outputs, unknown)


# ---------------------------------------------------------------------------------------------
# from a spend, and finalizing


@dataclass(frozen=True)
class InputKey:
    """Who signs an input: the (internal, untweaked) public key and its derivation origin."""

    pubkey: bytes  # 33-byte compressed
    origin: KeyOrigin


def psbt_from_spend(
    spend: UnsignedSpend,
    input_keys: Sequence[InputKey | None] | None = None,
    output_keys: Sequence[InputKey | None] | None = None,
) -> Psbt:
    """An unsigned PSBT for ``spend`` with witness UTXOs and, where given, the key origins
    (BIP32_DERIVATION for P2WPKH, TAP_INTERNAL_KEY + TAP_BIP32_DERIVATION for P2TR)."""
    keys = list(input_keys) if input_keys is not None else [None] * len(spend.inputs)
    okeys = list(output_keys) if output_keys is not None else [None] * len(spend.outputs)
    if len(keys) != len(spend.inputs) or len(okeys) != len(spend.outputs):
        raise ValueError("one key entry per input and per output (or None)")
    inputs = []
    for u, k in zip(spend.inputs, keys, strict=True):
        inp = PsbtInput(witness_utxo=u.prevout)
        if k is not None:
            kind = classify(u.script_pubkey).type
            if kind == "p2tr":
                inp.tap_internal_key = k.pubkey[1:]
                inp.tap_bip32_derivations[k.pubkey[1:]] = ((), k.origin)
            else:
                inp.bip32_derivations[k.pubkey] = k.origin
        inputs.append(inp)
    outputs = []
    for o, k in zip(spend.outputs, okeys, strict=True):
        out = PsbtOutput()
        if k is not None:
            if classify(o.script_pubkey).type == "p2tr":
                out.tap_internal_key = k.pubkey[1:]
                out.tap_bip32_derivations[k.pubkey[1:]] = ((), k.origin)
            else:
                out.bip32_derivations[k.pubkey] = k.origin
        outputs.append(out)
    return Psbt(spend.tx(), inputs, outputs)


def finalize_psbt(psbt: Psbt) -> bytes:
    """The signed network transaction: each input's final witness (given, or built from TAP_KEY_SIG /
    the matching PARTIAL_SIG), verified with :func:`verify_transaction`. ValueError if an input lacks
    a signature, :class:`~wallet.verify.TransactionInvalid` if a signature is wrong."""
    prevouts = psbt.prevouts()
    witnesses: list[list[bytes]] = []
    for i, (inp, p) in enumerate(zip(psbt.inputs, prevouts, strict=True)):
        if inp.final_script_witness is not None:
            witnesses.append(inp.final_script_witness)
            continue
        info = classify(p.script_pubkey)
        if info.type == "p2tr":
            if inp.tap_key_sig is None:
                raise ValueError(f"PSBT input {i} (P2TR) has no TAP_KEY_SIG")
            witnesses.append([inp.tap_key_sig])
        elif info.type == "p2wpkh":
            match = [(pk, s) for pk, s in inp.partial_sigs.items() if hash160(pk) == info.program]
            if not match:
                raise ValueError(f"PSBT input {i} (P2WPKH) has no PARTIAL_SIG for its key")
            pk, sig = match[0]
            witnesses.append([sig, pk])
        else:
            raise ValueError(f"PSBT input {i} spends {info.type}, which the wallet cannot finalize")
    tx = with_witnesses(psbt.tx, witnesses)
    verify_transaction(tx, prevouts)
    return serialize(tx)
