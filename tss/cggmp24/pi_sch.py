"""Pi^sch: Schnorr proof of knowledge of a discrete logarithm (the spec's section "Pi^sch").

Statement: the prover knows ``x`` with ``X = x * G``. The interactive proof is ``Commit_sch`` (``A =
alpha * G``), ``Challenge_sch`` (``e`` in ``Z_q``) and ``Prove_sch`` (``z = alpha + e * x mod q``);
``Verify_sch`` checks ``z * G == A + e * X``.

Key generation uses the split form, as the spec does: the commitment ``A`` is made in round 1 and
hash-committed, opened in round 2, and the response ``z`` is sent in round 3 with the challenge bound to
the joint ``rid``. :func:`commit` returns ``A`` and the secret nonce (a ``bytearray`` that :func:`prove`
zeroes, so a nonce can answer one challenge only); :func:`challenge` derives ``e`` from the transcript
``(protocol "pi_sch", session id, prover, context, X, A)``. :func:`prove_ni` / :func:`verify_ni` are the
non-interactive form with ``A`` inside the proof (65 bytes: ``A || z``).

Encodings: a point is 33 bytes compressed (never infinity), a scalar 32 bytes big-endian ``< q``.
Verification raises :class:`~tss.cggmp24.errors.InvalidProofError` ``(prover, "pi_sch: ...")``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from coincurve import PublicKey

from tss.cggmp24.errors import BadInputError, InvalidProofError
from tss.cggmp24.transcript import Transcript
from tss.secp256k1 import N as Q
from tss.secp256k1 import Point, cbytes, cbytes_ext, cpoint, point_add, point_eq, point_mul, point_mul_base

PROTOCOL = "pi_sch"
SCALAR_LEN = 32
POINT_LEN = 33
PROOF_LEN = SCALAR_LEN
PROOF_NI_LEN = POINT_LEN + SCALAR_LEN


def commit() -> tuple[bytes, bytearray]:
    """``Commit_sch``: ``(A, alpha)`` with ``A = alpha * G`` (33 bytes) and ``alpha`` a 32-byte
    ``bytearray`` consumed by :func:`prove`."""
    alpha = secrets.randbelow(Q - 1) + 1
    return cbytes(point_mul_base(alpha)), bytearray(alpha.to_bytes(32, "big"))


def challenge(session_id: bytes, prover: int, context: bytes, x_point: Point, a_point: bytes) -> int:
    """``ChallengeNI_sch(sid, prover, context, X, A)`` in ``Z_q`` (``context`` is the keygen ``rid``)."""
    t = Transcript(PROTOCOL, session_id, prover)
    t.append_bytes("context", context)
    t.append_point("X", cbytes_ext(x_point))
    t.append_point("A", a_point)
    return t.challenge_int("e", Q)


def prove(e: int, alpha: bytearray, x: int) -> bytes:
    """``Prove_sch``: ``z = alpha + e * x mod q`` (32 bytes). Zeroes ``alpha`` first; a zeroed nonce is
    refused (``BadInputError``), so one commitment never answers two challenges."""
    if not isinstance(alpha, bytearray) or len(alpha) != 32:
        raise BadInputError("pi_sch nonce must be the 32-byte bytearray from commit()")
    a = int.from_bytes(alpha, "big")
    alpha[:] = bytes(32)
    if not 0 < a < Q:
        raise BadInputError("pi_sch nonce already used")
    return ((a + e * x) % Q).to_bytes(32, "big")


def decode_point(b: bytes, prover: int, what: str, protocol: str = PROTOCOL) -> PublicKey:
    """A 33-byte compressed point (never infinity); ``InvalidProofError`` otherwise."""
    if len(b) != POINT_LEN:
        raise InvalidProofError(prover, f"{protocol}: {what} must be {POINT_LEN} bytes")
    try:
        return cpoint(b)
    except ValueError:
        raise InvalidProofError(prover, f"{protocol}: {what} is not a curve point") from None


def decode_scalar(b: bytes, prover: int, what: str, protocol: str = PROTOCOL) -> int:
    """A 32-byte big-endian scalar ``< q``; ``InvalidProofError`` otherwise."""
    if len(b) != SCALAR_LEN:
        raise InvalidProofError(prover, f"{protocol}: {what} must be {SCALAR_LEN} bytes")
    v = int.from_bytes(b, "big")
    if v >= Q:
        raise InvalidProofError(prover, f"{protocol}: {what} out of range")
    return v


def verify(
    session_id: bytes, prover: int, context: bytes, x_point: Point, a_point: bytes, proof: bytes
) -> None:
    """``Verify_sch(X, A, e, z)`` with ``e`` derived from the transcript; raises ``InvalidProofError``."""
    a = decode_point(a_point, prover, "commitment A")
    z = decode_scalar(proof, prover, "response z")
    if x_point is None:
        raise InvalidProofError(prover, f"{PROTOCOL}: statement X is the point at infinity")
    e = challenge(session_id, prover, context, x_point, a_point)
    # z*G == A + e*X
    if not point_eq(point_mul_base(z), point_add(a, point_mul(x_point, e))):
        raise InvalidProofError(prover, f"{PROTOCOL}: z*G != A + e*X")


@dataclass(frozen=True)
class SchProof:
    """A non-interactive Pi^sch proof ``(A, z)``."""

    a: bytes
    z: bytes

    def to_bytes(self) -> bytes:
        return self.a + self.z

    @staticmethod
    def from_bytes(b: bytes, prover: int) -> SchProof:
        if len(b) != PROOF_NI_LEN:
            raise InvalidProofError(prover, f"{PROTOCOL}: proof must be {PROOF_NI_LEN} bytes")
        return SchProof(b[:POINT_LEN], b[POINT_LEN:])


def prove_ni(session_id: bytes, prover: int, context: bytes, x: int) -> SchProof:
    """``ProveNI_sch``: proof of knowledge of ``x`` for ``X = x * G``."""
    if not 0 < x < Q:
        raise BadInputError("pi_sch secret must be in [1, q)")
    a, alpha = commit()
    e = challenge(session_id, prover, context, point_mul_base(x), a)
    return SchProof(a, prove(e, alpha, x))


def verify_ni(session_id: bytes, prover: int, context: bytes, x_point: Point, proof: bytes) -> None:
    """``VerifyNI_sch``; raises ``InvalidProofError(prover, "pi_sch: ...")``."""
    p = SchProof.from_bytes(proof, prover)
    verify(session_id, prover, context, x_point, p.a, p.z)
