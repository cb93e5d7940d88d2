"""Esplora's JSON shapes (Blockstream esplora ``API.md``, electrs ``rest.rs``) for the devchain's
transactions, outputs and blocks, plus the script disassembly Esplora prints in ``*_asm`` fields
(rust-bitcoin's format: ``OP_0 OP_PUSHBYTES_20 <hex>``, ``OP_PUSHNUM_1``, ...)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bitcoin.core import CTransaction, b2lx
from bitcoin.core.script import OPCODE_NAMES

from wallet.address import script_to_address
from wallet.script import classify
from wallet.transaction import input_witness, serialize, weight

_ESPLORA_TYPES = {
    "p2pkh": "p2pkh",
    "p2sh": "p2sh",
    "p2wpkh": "v0_p2wpkh",
    "p2wsh": "v0_p2wsh",
    "p2tr": "v1_p2tr",
}


@dataclass(frozen=True)
class BlockRef:
    """Where a transaction is confirmed."""

    height: int
    hash: str
    time: int


def status_json(block: BlockRef | None) -> dict[str, Any]:
    """Esplora ``status``: only ``confirmed`` for a mempool transaction."""
    if block is None:
        return {"confirmed": False}
    return {
        "confirmed": True,
        "block_height": block.height,
        "block_hash": block.hash,
        "block_time": block.time,
    }


def script_asm(script: bytes) -> str:
    """Disassembly in rust-bitcoin's (and so Esplora's) notation; a truncated push ends the listing."""
    out: list[str] = []
    i = 0
    while i < len(script):
        op = script[i]
        i += 1
        if 0x01 <= op <= 0x4B:
            size, name = op, f"OP_PUSHBYTES_{op}"
        elif op in (0x4C, 0x4D, 0x4E):
            width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
            if i + width > len(script):
                out.append("<unexpected end>")
                break
            size = int.from_bytes(script[i : i + width], "little")
            i += width
            name = {0x4C: "OP_PUSHDATA1", 0x4D: "OP_PUSHDATA2", 0x4E: "OP_PUSHDATA4"}[op]
        else:
            if op == 0x00:
                out.append("OP_0")
            elif 0x51 <= op <= 0x60:
                out.append(f"OP_PUSHNUM_{op - 0x50}")
            elif op == 0x4F:
                out.append("OP_PUSHNUM_NEG1")
            else:
                out.append(OPCODE_NAMES.get(op, f"OP_RETURN_{op}"))
            continue
        if i + size > len(script):
            out.append("<unexpected end>")
            break
        out.append(f"{name} {script[i : i + size].hex()}")
        i += size
    return " ".join(str(x) for x in out)


def script_type(script: bytes) -> str:
    """Esplora ``scriptpubkey_type``."""
    if not script:
        return "empty"
    if script[0] == 0x6A:
        return "op_return"
    if len(script) in (35, 67) and script[-1] == 0xAC and script[0] == len(script) - 2:
        return "p2pk"
    return _ESPLORA_TYPES.get(classify(script).type, "unknown")


def output_json(value: int, script: bytes, network: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scriptpubkey": script.hex(),
        "scriptpubkey_asm": script_asm(script),
        "scriptpubkey_type": script_type(script),
    }
    try:
        out["scriptpubkey_address"] = script_to_address(script, network)
    except ValueError:
        pass  # Esplora omits the field for scripts without an address
    out["value"] = value
    return out


def is_coinbase(tx: CTransaction) -> bool:
    return len(tx.vin) == 1 and tx.vin[0].prevout.is_null()


def tx_json(
    tx: CTransaction,
    prevouts: list[tuple[int, bytes] | None],
    fee: int,
    block: BlockRef | None,
    network: str,
) -> dict[str, Any]:
    """Esplora's transaction format; ``prevouts[i]`` is (value, scriptPubKey) of input i, None for
    the coinbase input."""
    vin = []
    for i, txin in enumerate(tx.vin):
        prev = prevouts[i]
        coinbase = txin.prevout.is_null()
        entry: dict[str, Any] = {
            "txid": b2lx(txin.prevout.hash),
            "vout": int(txin.prevout.n),
            "prevout": None if prev is None else output_json(prev[0], prev[1], network),
            "scriptsig": bytes(txin.scriptSig).hex(),
            "scriptsig_asm": script_asm(bytes(txin.scriptSig)),
        }
        witness = input_witness(tx, i)
        if witness:
            entry["witness"] = [w.hex() for w in witness]
        entry["is_coinbase"] = coinbase
        entry["sequence"] = int(txin.nSequence)
        vin.append(entry)
    return {
        "txid": b2lx(tx.GetTxid()),
        "version": int(tx.nVersion) & 0xFFFFFFFF,
        "locktime": int(tx.nLockTime),
        "vin": vin,
        "vout": [output_json(int(o.nValue), bytes(o.scriptPubKey), network) for o in tx.vout],
        "size": len(serialize(tx)),
        "weight": weight(tx),
        "fee": fee,
        "status": status_json(block),
    }
