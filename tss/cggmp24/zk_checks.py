"""Verifier-side input checks shared by the Paillier-side proofs: each raises
``InvalidProofError(prover, "<protocol>: <what> ...")`` instead of letting a malformed value reach the
arithmetic (a wrong type, a value outside its group or range, a wrong count)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import gmpy2
from coincurve import PublicKey
from gmpy2 import mpz

from tss.cggmp24.errors import InvalidProofError
from tss.cggmp24.ring_pedersen import RingPedersenParams, RingPedersenSecret
from tss.secp256k1 import Point, cpoint

_MPZ = type(mpz(0))
T = TypeVar("T")


def is_int(x: object) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or isinstance(x, _MPZ)


def fail(prover: int, protocol: str, check: str) -> InvalidProofError:
    return InvalidProofError(prover, f"{protocol}: {check}")


def need_int(x: object, prover: int, protocol: str, what: str) -> mpz:
    if not is_int(x):
        raise fail(prover, protocol, f"{what} is not an integer")
    return mpz(x)


def need_unit(x: object, n: int, prover: int, protocol: str, what: str) -> mpz:
    """``x`` in ``Z*_n``."""
    xi = need_int(x, prover, protocol, what)
    if not (0 < xi < n) or gmpy2.gcd(xi, n) != 1:
        raise fail(prover, protocol, f"{what} not in Z*_N")
    return xi


def need_bound(x: object, bound: int, prover: int, protocol: str, what: str) -> mpz:
    """``x`` an integer with ``|x| <= bound`` (the specification's ``x in +-bound``)."""
    xi = need_int(x, prover, protocol, what)
    if abs(xi) > bound:
        raise fail(prover, protocol, f"{what} out of range")
    return xi


def need_count(xs: object, count: int, prover: int, protocol: str, what: str) -> tuple[object, ...]:
    if not isinstance(xs, tuple | list):
        raise fail(prover, protocol, f"{what} is not a sequence")
    if len(xs) != count:
        raise fail(
            prover, protocol, f"{what} has {len(xs)} entries, not {count} (wrong number of iterations)"
        )
    return tuple(xs)


def need_point(b: object, prover: int, protocol: str, what: str) -> Point:
    """A 33-byte compressed curve point (never infinity)."""
    if not isinstance(b, bytes) or len(b) != 33:
        raise fail(prover, protocol, f"{what} is not a 33-byte point")
    try:
        return cpoint(b)
    except ValueError:
        raise fail(prover, protocol, f"{what} is not a curve point") from None


def need_statement_point(p: object, prover: int, protocol: str, what: str) -> Point:
    """A statement's point: a curve point object (not infinity)."""
    if not isinstance(p, PublicKey):
        raise fail(prover, protocol, f"statement {what} is not a curve point")
    return p


def need_proof(
    proof: object, cls: type[T], decode: Callable[[bytes, int], T], prover: int, protocol: str
) -> T:
    """The proof object itself, or decoded from its canonical bytes."""
    if isinstance(proof, bytes | bytearray):
        proof = decode(bytes(proof), prover)
    if not isinstance(proof, cls):
        raise fail(prover, protocol, "not a proof")
    return proof


def verifier_params(aux: object, prover: int, protocol: str) -> RingPedersenParams:
    """The verifier's ring-Pedersen parameters, given either them or its ``RingPedersenSecret``."""
    params = aux.params if isinstance(aux, RingPedersenSecret) else aux
    if not isinstance(params, RingPedersenParams):
        raise fail(prover, protocol, "aux is not ring-Pedersen parameters")
    return params


__all__ = [
    "fail",
    "is_int",
    "need_bound",
    "need_count",
    "need_int",
    "need_point",
    "need_proof",
    "need_statement_point",
    "need_unit",
    "verifier_params",
]
