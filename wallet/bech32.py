"""Bech32 (BIP-173) and bech32m (BIP-350) strings and segwit addresses, written from the BIP texts.

``decode`` reports which of the two checksums a string carries; ``decode_segwit_address`` enforces the
BIP-350 rule (witness version 0 uses bech32, versions 1..16 use bech32m) and says which rule failed.
"""

from __future__ import annotations

from enum import Enum

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
MAX_LENGTH = 90


class Encoding(Enum):
    BECH32 = 1  # BIP-173
    BECH32M = 0x2BC830A3  # BIP-350: the constant the polymod must equal


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _checksum(hrp: str, data: list[int], encoding: Encoding) -> list[int]:
    pm = _polymod([*_hrp_expand(hrp), *data, 0, 0, 0, 0, 0, 0]) ^ encoding.value
    return [(pm >> 5 * (5 - i)) & 31 for i in range(6)]


def encode(hrp: str, data: list[int], encoding: Encoding) -> str:
    """``hrp`` + ``1`` + the 5-bit ``data`` and its checksum, lower case."""
    return hrp + "1" + "".join(CHARSET[d] for d in [*data, *_checksum(hrp, data, encoding)])


def decode(s: str) -> tuple[str, list[int], Encoding]:
    """(hrp, 5-bit data without checksum, encoding); ValueError naming what is wrong."""
    if len(s) > MAX_LENGTH:
        raise ValueError(f"bech32 string too long ({len(s)} > {MAX_LENGTH} characters)")
    if any(ord(c) < 33 or ord(c) > 126 for c in s):
        raise ValueError("bech32 string has a character outside US-ASCII 33..126")
    if s.lower() != s and s.upper() != s:
        raise ValueError("bech32 string mixes upper and lower case")
    s = s.lower()
    pos = s.rfind("1")
    if pos < 1:
        raise ValueError("bech32 string has no human-readable part")
    if pos + 7 > len(s):
        raise ValueError("bech32 string too short for a checksum")
    hrp, rest = s[:pos], s[pos + 1 :]
    bad = [c for c in rest if c not in _CHARSET_REV]
    if bad:
        raise ValueError(f"bech32 data has invalid character {bad[0]!r}")
    data = [_CHARSET_REV[c] for c in rest]
    pm = _polymod(_hrp_expand(hrp) + data)
    for enc in Encoding:
        if pm == enc.value:
            return hrp, data[:-6], enc
    raise ValueError("bad bech32/bech32m checksum")


def convertbits(data: bytes | list[int], frombits: int, tobits: int, pad: bool) -> list[int]:
    """Regroup bits (BIP-173 reference behaviour); ValueError on invalid padding."""
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << tobits) - 1
    for value in data:
        if value < 0 or value >> frombits:
            raise ValueError("value out of range for bit conversion")
        acc = (acc << frombits) | value
        bits += frombits
        while bits >= tobits:
            bits -= tobits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (tobits - bits)) & maxv)
    elif bits >= frombits:
        raise ValueError("excess padding in bech32 data")
    elif (acc << (tobits - bits)) & maxv:
        raise ValueError("non-zero padding in bech32 data")
    return out


def encode_segwit_address(hrp: str, witver: int, program: bytes) -> str:
    """A segwit address: bech32 for version 0, bech32m for versions 1..16 (BIP-350)."""
    _check_program(witver, program)
    enc = Encoding.BECH32 if witver == 0 else Encoding.BECH32M
    return encode(hrp, [witver, *convertbits(program, 8, 5, True)], enc)


def decode_segwit_address(hrp: str, address: str) -> tuple[int, bytes]:
    """(witness version, program) of a segwit address for ``hrp``; ValueError naming the problem."""
    got_hrp, data, enc = decode(address)
    if got_hrp != hrp:
        raise ValueError(f"address is for hrp {got_hrp!r}, expected {hrp!r} (wrong network)")
    if not data:
        raise ValueError("segwit address has no witness version")
    witver = data[0]
    if witver > 16:
        raise ValueError(f"invalid witness version {witver}")
    if witver == 0 and enc is not Encoding.BECH32:
        raise ValueError("witness version 0 address must use bech32, not bech32m")
    if witver != 0 and enc is not Encoding.BECH32M:
        raise ValueError(f"witness version {witver} address must use bech32m, not bech32")
    program = bytes(convertbits(data[1:], 5, 8, False))
    _check_program(witver, program)
    return witver, program


def _check_program(witver: int, program: bytes) -> None:
    if not 0 <= witver <= 16:
        raise ValueError(f"invalid witness version {witver}")
    if not 2 <= len(program) <= 40:
        raise ValueError(f"witness program length {len(program)} not in 2..40")
    if witver == 0 and len(program) not in (20, 32):
        raise ValueError(f"witness v0 program must be 20 or 32 bytes, got {len(program)}")
