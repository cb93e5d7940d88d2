"""secp256k1 scalars and points on top of coincurve (libsecp256k1).

Scalars are Python ints reduced mod ``N``. Points are ``coincurve.PublicKey`` objects; the point at
infinity is ``None`` (libsecp256k1 cannot represent it), so every function here takes and returns
``Point: TypeAlias = PublicKey | None``. No point arithmetic is done in Python: additions go through
``secp256k1_ec_pubkey_combine``, multiplications through ``secp256k1_ec_pubkey_tweak_mul`` and
``secp256k1_ec_pubkey_create``.

Timing: ``point_mul_base`` (``secp256k1_ec_pubkey_create``) and ``ecdh`` (``secp256k1_ecdh``) are
constant time in the scalar. ``point_mul`` is NOT: libsecp256k1's ``tweak_mul`` runs the variable-time
``secp256k1_ecmult``, so it is for public scalars only (verification, interpolation of public points);
a secret scalar times another party's point goes through :func:`ecdh`.

Encodings follow BIP-340 / BIP-327 / BIP-445: ``cbytes`` (33-byte compressed), ``cbytes_ext``
(compressed, infinity as 33 zero bytes), ``xbytes`` (32-byte x-only), ``lift_x``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeAlias

from coincurve import PrivateKey, PublicKey, PublicKeyXOnly
from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

P = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

Point: TypeAlias = PublicKey | None
"""A curve point; ``None`` is the point at infinity."""

_CTX = GLOBAL_CONTEXT.ctx
G: PublicKey = PublicKey.from_secret((1).to_bytes(32, "big"))


# ---------------------------------------------------------------------------------------------
# hashing and integer encodings


def tagged_hash(tag: str, msg: bytes) -> bytes:
    """BIP-340 tagged hash: SHA256(SHA256(tag) || SHA256(tag) || msg)."""
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_hash + tag_hash + msg).digest()


def int_from_bytes(b: bytes) -> int:
    return int.from_bytes(b, "big")


def bytes_from_int(x: int, length: int = 32) -> bytes:
    return x.to_bytes(length, "big")


def scalar_from_bytes_checked(b: bytes) -> int:
    """A 32-byte big-endian scalar that must be < N (BIP-445 ``scalar_from_bytes_checked``)."""
    if len(b) != 32:
        raise ValueError("scalar must be 32 bytes")
    x = int.from_bytes(b, "big")
    if x >= N:
        raise ValueError("scalar out of range")
    return x


def scalar_from_bytes_nonzero_checked(b: bytes) -> int:
    x = scalar_from_bytes_checked(b)
    if x == 0:
        raise ValueError("scalar is zero")
    return x


def scalar_to_bytes(x: int) -> bytes:
    return (x % N).to_bytes(32, "big")


# ---------------------------------------------------------------------------------------------
# point arithmetic


def point_mul_base(k: int) -> Point:
    """k*G; None when k = 0 mod N."""
    k %= N
    if k == 0:
        return None
    return PublicKey.from_valid_secret(k.to_bytes(32, "big"))


def point_mul(p: Point, k: int) -> Point:
    """k*p; None when p is infinity or k = 0 mod N. Variable time: ``k`` must be public (a secret ``k``
    goes through :func:`point_mul_secret`)."""
    k %= N
    if p is None or k == 0:
        return None
    new_key = ffi.new("secp256k1_pubkey *", p.public_key[0])
    if not lib.secp256k1_ec_pubkey_tweak_mul(_CTX, new_key, k.to_bytes(32, "big")):
        raise ValueError("point multiplication failed")  # unreachable for 0 < k < N
    return PublicKey(new_key)


@ffi.callback("int(unsigned char *, const unsigned char *, const unsigned char *, void *)")  # type: ignore[untyped-decorator]
def _copy_xy(output: object, x32: object, y32: object, data: object) -> int:
    """``secp256k1_ecdh``'s hash function replaced by a copy of the shared point's coordinates."""
    ffi.memmove(output, x32, 32)
    ffi.memmove(output + 32, y32, 32)  # type: ignore[operator]  # cffi pointer arithmetic
    return 1


def point_mul_secret(p: Point, k: int) -> Point:
    """k*p in constant time in ``k`` (libsecp256k1's ``secp256k1_ecmult_const``, reached through
    ``secp256k1_ecdh`` with a hash function that returns the point itself): for a secret scalar times a
    point other than G (for G, ``point_mul_base`` is constant time already). None when p is infinity or
    k = 0 mod N."""
    k %= N
    if p is None or k == 0:
        return None
    out = ffi.new("unsigned char[64]")
    pub = ffi.new("secp256k1_pubkey *", p.public_key[0])
    if not lib.secp256k1_ecdh(_CTX, out, pub, k.to_bytes(32, "big"), _copy_xy, ffi.NULL):
        raise ValueError("point multiplication failed")  # unreachable for 0 < k < N
    return PublicKey(b"\x04" + bytes(ffi.buffer(out, 64)))


def ecdh(seckey: bytes, pubkey: bytes) -> bytes:
    """libsecp256k1's ECDH, constant time in ``seckey``: SHA256 of the compressed point seckey*pubkey.

    ``pubkey`` is a 33-byte compressed point; ``ValueError`` when it is not one or when ``seckey`` is
    not a scalar in [1, N-1]."""
    cpoint(pubkey)
    scalar_from_bytes_nonzero_checked(seckey)
    return PrivateKey(bytes(seckey)).ecdh(pubkey)


def point_add(p: Point, q: Point) -> Point:
    if p is None:
        return q
    if q is None:
        return p
    return point_sum([p, q])


def point_sum(points: Sequence[Point]) -> Point:
    """Sum of points (None entries are skipped); None when the sum is infinity."""
    keys = [p.public_key for p in points if p is not None]
    if not keys:
        return None
    if len(keys) == 1:
        return PublicKey(ffi.new("secp256k1_pubkey *", keys[0][0]))
    out = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_combine(_CTX, out, keys, len(keys)):
        return None  # the sum is the point at infinity
    return PublicKey(out)


def point_tweak_add(p: Point, t: int) -> Point:
    """p + t*G in one libsecp256k1 call (``secp256k1_ec_pubkey_tweak_add``); None when that is infinity."""
    t %= N
    if p is None:
        return point_mul_base(t)
    new_key = ffi.new("secp256k1_pubkey *", p.public_key[0])
    if not lib.secp256k1_ec_pubkey_tweak_add(_CTX, new_key, t.to_bytes(32, "big")):
        return None  # p + t*G is the point at infinity
    return PublicKey(new_key)


def point_neg(p: Point) -> Point:
    if p is None:
        return None
    new_key = ffi.new("secp256k1_pubkey *", p.public_key[0])
    lib.secp256k1_ec_pubkey_negate(_CTX, new_key)
    return PublicKey(new_key)


def lincomb(terms: Sequence[tuple[Point, int]]) -> Point:
    """sum(k_i * P_i)."""
    return point_sum([point_mul(p, k) for p, k in terms])


def point_eq(p: Point, q: Point) -> bool:
    if p is None or q is None:
        return p is None and q is None
    return bool(lib.secp256k1_ec_pubkey_cmp(_CTX, p.public_key, q.public_key) == 0)


# ---------------------------------------------------------------------------------------------
# encodings


def cbytes(p: Point) -> bytes:
    """33-byte compressed encoding; infinity is an error."""
    if p is None:
        raise ValueError("point at infinity has no compressed encoding")
    return p.format(compressed=True)


def cbytes_ext(p: Point) -> bytes:
    """Compressed encoding with infinity as 33 zero bytes (BIP-327 / BIP-445)."""
    if p is None:
        return b"\x00" * 33
    return p.format(compressed=True)


def xbytes(p: Point) -> bytes:
    if p is None:
        raise ValueError("point at infinity has no x coordinate")
    return p.format(compressed=True)[1:]


def has_even_y(p: Point) -> bool:
    if p is None:
        raise ValueError("point at infinity has no y coordinate")
    return p.format(compressed=True)[0] == 2


def cpoint(b: bytes) -> PublicKey:
    """Parse a 33-byte compressed point; ValueError if it is not one."""
    if len(b) != 33 or b[0] not in (2, 3):
        raise ValueError("not a 33-byte compressed point")
    try:
        return PublicKey(b)
    except Exception as exc:  # coincurve raises ValueError for points not on the curve
        raise ValueError("point not on the curve") from exc


def cpoint_ext(b: bytes) -> Point:
    if b == b"\x00" * 33:
        return None
    return cpoint(b)


def lift_x(b: bytes) -> PublicKey:
    """The point with x coordinate ``b`` and even y (BIP-340 lift_x)."""
    if len(b) != 32:
        raise ValueError("x coordinate must be 32 bytes")
    if int.from_bytes(b, "big") >= P:
        raise ValueError("x coordinate out of range")
    return cpoint(b"\x02" + b)


def xonly_to_point(b: bytes) -> PublicKey:
    return lift_x(b)


# ---------------------------------------------------------------------------------------------
# BIP-340


def schnorr_verify(msg: bytes, pubkey: bytes, sig: bytes) -> bool:
    """BIP-340 verification by libsecp256k1; any message length."""
    if len(pubkey) != 32 or len(sig) != 64:
        return False
    try:
        xonly = PublicKeyXOnly(pubkey)
    except Exception:
        return False
    return xonly.verify(sig, msg)
