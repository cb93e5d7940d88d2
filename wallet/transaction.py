"""Transactions: python-bitcoinlib's ``CTransaction`` is the type, plus the small value types the rest
of the wallet (and the services) pass around.

``parse_transaction`` is stricter than ``CTransaction.deserialize``: it refuses trailing bytes, a witness
marker with only empty witnesses (Bitcoin Core's "superfluous witness record"), negative or too large
amounts, and transactions without inputs or outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from bitcoin.core import (
    COutPoint,
    CScript,
    CTransaction,
    CTxIn,
    CTxInWitness,
    CTxOut,
    CTxWitness,
    b2lx,
    lx,
)
from bitcoin.core.script import CScriptWitness
from bitcoin.core.serialize import SerializationError

MAX_MONEY = 21_000_000 * 100_000_000
SEQUENCE_RBF = 0xFFFFFFFD  # BIP-125 opt-in replace-by-fee, locktime still enforced
SEQUENCE_FINAL = 0xFFFFFFFF

Tx = CTransaction


@dataclass(frozen=True)
class Prevout:
    """What an input spends: the amount and scriptPubKey of the output it consumes."""

    amount: int
    script_pubkey: bytes


@dataclass(frozen=True)
class OutPoint:
    """An output reference; ``txid`` in hex, display (reversed) byte order."""

    txid: str
    vout: int

    def __post_init__(self) -> None:
        if len(self.txid) != 64:
            raise ValueError("txid must be 64 hex characters")
        bytes.fromhex(self.txid)
        if not 0 <= self.vout <= 0xFFFFFFFF:
            raise ValueError("vout out of range")

    def to_coutpoint(self) -> COutPoint:
        return COutPoint(lx(self.txid), self.vout)

    @classmethod
    def from_coutpoint(cls, op: COutPoint) -> OutPoint:
        return cls(b2lx(op.hash), int(op.n))


@dataclass(frozen=True)
class TxOutput:
    amount: int
    script_pubkey: bytes


def parse_transaction(raw: bytes) -> CTransaction:
    """Deserialize a network transaction; ValueError naming the problem if it is malformed."""
    if not isinstance(raw, (bytes, bytearray)):
        raise ValueError("transaction must be bytes")
    raw = bytes(raw)
    try:
        tx = CTransaction.deserialize(raw)
    except SerializationError as exc:
        raise ValueError(f"malformed transaction: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # struct.error, ValueError from constructors
        raise ValueError(f"malformed transaction: {exc}") from exc
    if len(raw) > 6 and raw[4] == 0 and raw[5] == 1 and not tx.has_witness():
        raise ValueError("malformed transaction: witness flag set but every witness is empty")
    check_transaction(tx)
    return cast(CTransaction, tx)


def check_transaction(tx: CTransaction) -> None:
    """Context-free checks (Bitcoin Core's CheckTransaction subset); ValueError."""
    if not tx.vin:
        raise ValueError("transaction has no inputs")
    if not tx.vout:
        raise ValueError("transaction has no outputs")
    total = 0
    for i, out in enumerate(tx.vout):
        if not 0 <= out.nValue <= MAX_MONEY:
            raise ValueError(f"output {i} amount {out.nValue} out of range")
        total += out.nValue
    if total > MAX_MONEY:
        raise ValueError(f"outputs total {total} exceeds MAX_MONEY")
    seen = set()
    for txin in tx.vin:
        key = (txin.prevout.hash, txin.prevout.n)
        if key in seen:
            raise ValueError(f"duplicate input {b2lx(txin.prevout.hash)}:{txin.prevout.n}")
        seen.add(key)


def as_transaction(tx: bytes | CTransaction) -> CTransaction:
    return parse_transaction(bytes(tx)) if isinstance(tx, (bytes, bytearray)) else tx


def serialize(tx: CTransaction, include_witness: bool = True) -> bytes:
    if include_witness:
        return cast(bytes, tx.serialize())
    return cast(bytes, CTransaction(tx.vin, tx.vout, tx.nLockTime, tx.nVersion).serialize())


def txid(raw: bytes | CTransaction) -> str:
    """Transaction id (hex, display order) of a raw or parsed transaction."""
    tx = as_transaction(raw)
    return cast(str, b2lx(tx.GetTxid()))


def wtxid(raw: bytes | CTransaction) -> str:
    import hashlib

    data = serialize(as_transaction(raw))
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()[::-1].hex()


def weight(tx: CTransaction) -> int:
    """BIP-141 weight: 3 x stripped size + total size."""
    return 3 * len(serialize(tx, False)) + len(serialize(tx, True))


def vsize(tx: CTransaction) -> int:
    """Virtual size: weight / 4 rounded up."""
    return (weight(tx) + 3) // 4


def build_transaction(
    inputs: Sequence[tuple[OutPoint, int]],
    outputs: Sequence[TxOutput],
    *,
    version: int = 2,
    locktime: int = 0,
    witnesses: Sequence[Sequence[bytes]] | None = None,
) -> CTransaction:
    """A transaction from (outpoint, nSequence) inputs, outputs and optional per-input witnesses."""
    vin = [CTxIn(op.to_coutpoint(), CScript(), seq) for op, seq in inputs]
    vout = [CTxOut(o.amount, CScript(o.script_pubkey)) for o in outputs]
    if witnesses is None:
        return CTransaction(vin, vout, locktime, version)
    if len(witnesses) != len(vin):
        raise ValueError(f"{len(witnesses)} witnesses for {len(vin)} inputs")
    wit = CTxWitness([CTxInWitness(CScriptWitness(list(w))) for w in witnesses])
    return CTransaction(vin, vout, locktime, version, wit)


def with_witnesses(tx: CTransaction, witnesses: Sequence[Sequence[bytes]]) -> CTransaction:
    """``tx`` with its input witnesses replaced."""
    if len(witnesses) != len(tx.vin):
        raise ValueError(f"{len(witnesses)} witnesses for {len(tx.vin)} inputs")
    wit = CTxWitness([CTxInWitness(CScriptWitness(list(w))) for w in witnesses])
    return CTransaction(tx.vin, tx.vout, tx.nLockTime, tx.nVersion, wit)


def input_witness(tx: CTransaction, index: int) -> list[bytes]:
    """The witness stack of input ``index`` (empty list if none)."""
    vtxinwit = tx.wit.vtxinwit
    if index >= len(vtxinwit):
        return []
    return [bytes(item) for item in vtxinwit[index].scriptWitness.stack]


def outputs_of(tx: CTransaction) -> list[TxOutput]:
    return [TxOutput(int(o.nValue), bytes(o.scriptPubKey)) for o in tx.vout]


def outpoints_of(tx: CTransaction) -> list[OutPoint]:
    return [OutPoint.from_coutpoint(i.prevout) for i in tx.vin]
