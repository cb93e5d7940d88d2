"""Strict DER (BIP-66) ECDSA signature encoding, as Bitcoin consensus and policy read it."""

from __future__ import annotations

from tss.secp256k1 import N


def is_strict_der(sig: bytes) -> bool:
    """BIP-66 ``IsValidSignatureEncoding`` applied to a DER signature *without* the hash-type byte."""
    if len(sig) < 8 or len(sig) > 72:
        return False
    if sig[0] != 0x30 or sig[1] != len(sig) - 2:
        return False
    len_r = sig[3]
    if sig[2] != 0x02 or len_r == 0 or 5 + len_r >= len(sig):
        return False
    len_s = sig[5 + len_r]
    if len_r + len_s + 6 != len(sig):
        return False
    if sig[4 + len_r] != 0x02 or len_s == 0:
        return False
    r = sig[4 : 4 + len_r]
    s = sig[6 + len_r :]
    for v in (r, s):
        if v[0] & 0x80:
            return False  # negative
        if len(v) > 1 and v[0] == 0 and not v[1] & 0x80:
            return False  # needless leading zero
    return True


def der_decode(sig: bytes) -> tuple[int, int]:
    """(r, s) of a strict-DER signature; ValueError if not strict DER."""
    if not is_strict_der(sig):
        raise ValueError("signature is not strict DER")
    len_r = sig[3]
    return int.from_bytes(sig[4 : 4 + len_r], "big"), int.from_bytes(sig[6 + len_r :], "big")


def der_encode(r: int, s: int) -> bytes:
    """Strict-DER encoding of (r, s)."""
    if not (0 < r < N and 0 < s < N):
        raise ValueError("r and s must be in 1..n-1")

    def integer(v: int) -> bytes:
        b = v.to_bytes((v.bit_length() + 8) // 8, "big")  # one spare bit keeps it positive
        return b"\x02" + bytes([len(b)]) + b

    body = integer(r) + integer(s)
    return b"\x30" + bytes([len(body)]) + body


def normalize_s(r: int, s: int) -> tuple[int, int]:
    """(r, min(s, n - s)): the low-S form Bitcoin policy requires (BIP-62 / BIP-146)."""
    return r, (N - s if s > N // 2 else s)
