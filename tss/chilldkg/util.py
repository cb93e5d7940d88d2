"""Small helpers shared by the ChillDKG layers: the ``BIP DKG/`` tagged hash and scalar encodings."""

from __future__ import annotations

from typing import Any

from tss.secp256k1 import N, Point, cpoint_ext, tagged_hash

from .errors import MsgParseError

BIP_TAG = "BIP DKG/"


def repr_hiding(obj: Any, secret_fields: tuple[str, ...]) -> str:
    """``Name(field=value, ...)`` of a named tuple with the secret fields shown as ``...``: a secret
    never reaches a log, a traceback or an assertion message through ``repr``."""
    shown = ", ".join(
        f"{name}=..." if name in secret_fields else f"{name}={value!r}"
        for name, value in zip(obj._fields, obj, strict=True)
    )
    return f"{type(obj).__name__}({shown})"


def tagged_hash_bip_dkg(tag: str, msg: bytes) -> bytes:
    return tagged_hash(BIP_TAG + tag, msg)


def scalar_wrapping(b: bytes) -> int:
    """A 32-byte hash read as a scalar, reduced mod N."""
    return int.from_bytes(b, "big") % N


def scalar_bytes(x: int) -> bytes:
    return x.to_bytes(32, "big")


def parse_scalars(b: bytes, count: int, what: str) -> list[int]:
    """``count`` consecutive 32-byte scalars, each < N; :class:`MsgParseError` otherwise."""
    out = []
    for k in range(count):
        x = int.from_bytes(b[32 * k : 32 * k + 32], "big")
        if x >= N:
            raise MsgParseError(f"invalid {what}")
        out.append(x)
    return out


def parse_points_ext(b: bytes, count: int) -> list[Point]:
    """``count`` consecutive 33-byte compressed points, infinity allowed as 33 zero bytes;
    :class:`MsgParseError` on an invalid encoding or a point not on the curve."""
    out: list[Point] = []
    for k in range(count):
        try:
            out.append(cpoint_ext(b[33 * k : 33 * k + 33]))
        except ValueError as e:
            raise MsgParseError("invalid group element encoding") from e
    return out
