"""Feldman verifiable secret sharing as ChillDKG uses it.

A dealer picks a polynomial ``f(x) = a_0 + a_1 x + ... + a_{t-1} x^{t-1}`` over the scalars, commits to
it with ``A_j = a_j * G`` (the :class:`VSSCommitment`) and gives participant ``i`` (0-based) the share
``f(i + 1)``. Anyone can compute the matching public share ``f(i + 1) * G = sum_j (i + 1)^j A_j`` from
the commitment, so a share is checked with one base-point multiplication.

Commitments are added coefficient-wise (the sum commits to the sum of the polynomials); entries may be
the point at infinity (``None``) so that no participant can make a sum of valid commitments
unencodable. :meth:`VSSCommitment.invalid_taproot_commit` adds the BIP-341 "unspendable script path"
tweak ``H_TapTweak(xbytes(A_0)) * G`` to ``A_0``, so a malicious participant cannot hide a Taproot
script commitment in the threshold public key.

Scalars are ints mod ``N``; points are coincurve points (``None`` = infinity); all point arithmetic is
done by libsecp256k1 through :mod:`tss.secp256k1`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tss.secp256k1 import (
    N,
    Point,
    cbytes_ext,
    point_add,
    point_eq,
    point_mul,
    point_mul_base,
    point_tweak_add,
    tagged_hash,
    xbytes,
)

from .util import parse_points_ext, tagged_hash_bip_dkg


def vss_generate(seed: bytes, t: int) -> list[int]:
    """The ``t`` polynomial coefficients derived from ``seed`` (``a_j = H_"vss coeffs"(seed || j)``)."""
    coeffs = []
    for j in range(t):
        a = int.from_bytes(tagged_hash_bip_dkg("vss coeffs", seed + j.to_bytes(4, "big")), "big")
        if a >= N:
            raise ValueError("vss coefficient out of range")  # probability ~2^-128
        coeffs.append(a)
    return coeffs


def poly_eval(coeffs: Sequence[int], x: int) -> int:
    """f(x) by Horner's rule."""
    acc = 0
    for a in reversed(coeffs):
        acc = (acc * x + a) % N
    return acc


def vss_secshares(coeffs: Sequence[int], n: int) -> list[int]:
    """The shares ``f(1), ..., f(n)`` for participants ``0..n-1``."""
    return [poly_eval(coeffs, i + 1) for i in range(n)]


def vss_commit(coeffs: Sequence[int]) -> VSSCommitment:
    return VSSCommitment([point_mul_base(a) for a in coeffs])


def verify_secshare(secshare: int, pubshare: Point) -> bool:
    """secshare * G == pubshare."""
    return point_eq(point_mul_base(secshare), pubshare)


class VSSCommitment:
    """Commitments ``A_0..A_{t-1}`` to the coefficients of a polynomial (``None`` = infinity)."""

    __slots__ = ("ges",)

    def __init__(self, ges: list[Point]) -> None:
        self.ges = ges

    @staticmethod
    def len_bytes(t: int) -> int:
        return 33 * t

    @classmethod
    def from_bytes(cls, b: bytes, t: int) -> VSSCommitment:
        """Parse ``33*t`` bytes; ``ValueError`` on a wrong length, :class:`MsgParseError` on a bad point."""
        if len(b) != 33 * t:
            raise ValueError("VSS commitment has the wrong length")
        return cls(parse_points_ext(b, t))

    def to_bytes(self) -> bytes:
        return b"".join(cbytes_ext(p) for p in self.ges)

    def t(self) -> int:
        return len(self.ges)

    def commitment_to_secret(self) -> Point:
        return self.ges[0]

    def commitment_to_nonconst_terms(self) -> list[Point]:
        return self.ges[1:]

    def pubshare(self, i: int) -> Point:
        """``f(i + 1) * G`` by Horner's rule: t-1 multiplications and additions."""
        x = i + 1
        acc = self.ges[-1]
        for p in reversed(self.ges[:-1]):
            acc = point_add(point_mul(acc, x), p)
        return acc

    def pubshares(self, n: int) -> list[Point]:
        return [self.pubshare(i) for i in range(n)]

    def __add__(self, other: VSSCommitment) -> VSSCommitment:
        if self.t() != other.t():
            raise ValueError("VSS commitments of different thresholds")
        return VSSCommitment([point_add(p, q) for p, q in zip(self.ges, other.ges, strict=True)])

    def invalid_taproot_commit(self) -> tuple[VSSCommitment, int, Point]:
        """(tweaked commitment, tweak, tweak * G) with ``A_0' = A_0 + tweak * G``, where
        ``tweak = H_TapTweak(xbytes(A_0))`` commits to an empty (hence unspendable) script path.

        ``ValueError`` if ``A_0`` is infinity (no x coordinate) or the tweak overflows (negligible)."""
        a0 = self.ges[0]
        if a0 is None:
            raise ValueError("commitment to the secret is the point at infinity")
        tweak = int.from_bytes(tagged_hash("TapTweak", xbytes(a0)), "big")
        if tweak >= N:
            raise ValueError("taproot tweak out of range")
        pubtweak = point_mul_base(tweak)
        return VSSCommitment([point_tweak_add(a0, tweak), *self.ges[1:]]), tweak, pubtweak
