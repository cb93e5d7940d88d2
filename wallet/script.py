"""scriptPubKey templates: build and recognise P2WPKH, P2TR (and, as payment destinations only,
P2PKH, P2SH, P2WSH and future witness versions)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

ScriptType = Literal["p2pkh", "p2sh", "p2wpkh", "p2wsh", "p2tr", "witness_unknown", "nonstandard"]


def hash160(data: bytes) -> bytes:
    """RIPEMD160(SHA256(data))."""
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def p2wpkh_script(pubkey33: bytes) -> bytes:
    """OP_0 <HASH160(pubkey)>; the key must be compressed (BIP-143 standardness)."""
    if len(pubkey33) != 33 or pubkey33[0] not in (2, 3):
        raise ValueError("P2WPKH needs a 33-byte compressed public key")
    return b"\x00\x14" + hash160(pubkey33)


def p2tr_script(output_xonly: bytes) -> bytes:
    """OP_1 <32-byte x-only output key>."""
    if len(output_xonly) != 32:
        raise ValueError("P2TR output key must be 32 bytes (x-only)")
    return b"\x51\x20" + output_xonly


def witness_script(version: int, program: bytes) -> bytes:
    """OP_n <program> for witness version n."""
    if not 0 <= version <= 16 or not 2 <= len(program) <= 40:
        raise ValueError("invalid witness version or program length")
    return bytes([0x50 + version if version else 0, len(program)]) + program


def p2pkh_script(h160: bytes) -> bytes:
    return b"\x76\xa9\x14" + h160 + b"\x88\xac"


def p2sh_script(h160: bytes) -> bytes:
    return b"\xa9\x14" + h160 + b"\x87"


@dataclass(frozen=True)
class ScriptInfo:
    type: ScriptType
    witness_version: int | None = None
    program: bytes = b""  # witness program, or the hash of P2PKH / P2SH


def classify(script_pubkey: bytes) -> ScriptInfo:
    s = script_pubkey
    if len(s) == 25 and s[:3] == b"\x76\xa9\x14" and s[23:] == b"\x88\xac":
        return ScriptInfo("p2pkh", None, s[3:23])
    if len(s) == 23 and s[:2] == b"\xa9\x14" and s[22] == 0x87:
        return ScriptInfo("p2sh", None, s[2:22])
    if 4 <= len(s) <= 42 and (s[0] == 0 or 0x51 <= s[0] <= 0x60) and s[1] == len(s) - 2:
        version = 0 if s[0] == 0 else s[0] - 0x50
        program = s[2:]
        if version == 0 and len(program) == 20:
            return ScriptInfo("p2wpkh", 0, program)
        if version == 0 and len(program) == 32:
            return ScriptInfo("p2wsh", 0, program)
        if version == 0:
            return ScriptInfo("nonstandard")
        if version == 1 and len(program) == 32:
            return ScriptInfo("p2tr", 1, program)
        return ScriptInfo("witness_unknown", version, program)
    return ScriptInfo("nonstandard")
