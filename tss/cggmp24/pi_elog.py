"""Pi^elog: discrete log with an ElGamal commitment (the spec's section "Pi^elog: Dlog with El-Gamal
Commitment").

Public input: points ``(L, M, X, Y, H)``. The prover knows ``(y, lambda)`` with

    L = lambda * G,   M = y * G + lambda * X,   Y = y * H

i.e. ``(L, M)`` is an ElGamal commitment to ``y`` under key ``X`` and ``Y`` is ``y`` times the base ``H``.
Presigning uses it twice: round 2 with ``(B_1, B_2, Y_i, Gamma_i, G)`` (``Gamma_i = gamma_i * G``), round 3
with ``(A_1, A_2, Y_i, Delta_i, Gamma)`` (``Delta_i = k_i * Gamma``).

``Commit_elog``: ``alpha, m <- Z_q``; ``A = alpha * G``, ``N = m * G + alpha * X``, ``B = m * H``.
``Prove_elog``: ``z = alpha + e * lambda``, ``u = m + e * y`` (mod q).
``Verify_elog``: ``z * G == A + e * L``, ``u * G + z * X == N + e * M``, ``u * H == B + e * Y``.
The challenge ``e`` in ``Z_q`` comes from the transcript ``(protocol "pi_elog", session id, prover, L, M,
X, Y, H, A, N, B)``.

Encoding (163 bytes): ``A || N || B`` (33-byte compressed points) ``|| z || u`` (32-byte scalars ``< q``).
Verification raises :class:`~tss.cggmp24.errors.InvalidProofError` ``(prover, "pi_elog: ...")``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from tss.cggmp24.errors import BadInputError, InvalidProofError
from tss.cggmp24.pi_sch import POINT_LEN, SCALAR_LEN, decode_point, decode_scalar
from tss.cggmp24.transcript import Transcript
from tss.secp256k1 import (
    G,
    Point,
    cbytes,
    cbytes_ext,
    lincomb,
    point_eq,
    point_mul,
    point_mul_base,
    point_mul_secret,
    point_sum,
)
from tss.secp256k1 import N as Q

PROTOCOL = "pi_elog"
PROOF_LEN = 3 * POINT_LEN + 2 * SCALAR_LEN


@dataclass(frozen=True)
class ElogStatement:
    """The public input ``(L, M, X, Y, H)``."""

    L: Point
    M: Point
    X: Point
    Y: Point
    H: Point


@dataclass(frozen=True)
class ElogProof:
    a: bytes
    n: bytes
    b: bytes
    z: bytes
    u: bytes

    def to_bytes(self) -> bytes:
        return self.a + self.n + self.b + self.z + self.u

    @staticmethod
    def from_bytes(data: bytes, prover: int) -> ElogProof:
        if len(data) != PROOF_LEN:
            raise InvalidProofError(prover, f"{PROTOCOL}: proof must be {PROOF_LEN} bytes")
        p = POINT_LEN
        a, n, b = data[:p], data[p : 2 * p], data[2 * p : 3 * p]
        return ElogProof(a, n, b, data[3 * p : 3 * p + 32], data[3 * p + 32 :])


def challenge(session_id: bytes, prover: int, st: ElogStatement, a: bytes, n: bytes, b: bytes) -> int:
    """``ChallengeNI_elog(sid, prover, (L, M, X, Y, H), (A, N, B))`` in ``Z_q``."""
    t = Transcript(PROTOCOL, session_id, prover)
    for label, pt in (("L", st.L), ("M", st.M), ("X", st.X), ("Y", st.Y), ("H", st.H)):
        t.append_point(label, cbytes_ext(pt))
    t.append_point("A", a)
    t.append_point("N", n)
    t.append_point("B", b)
    return t.challenge_int("e", Q)


def prove(session_id: bytes, prover: int, st: ElogStatement, y: int, lam: int) -> ElogProof:
    """``ProveNI_elog``: proof for the witness ``(y, lambda)``."""
    if not (0 <= y < Q and 0 <= lam < Q):
        raise BadInputError("pi_elog witness must be scalars in [0, q)")
    if st.X is None or st.H is None:
        raise BadInputError("pi_elog bases X and H must not be the point at infinity")
    while True:
        alpha = secrets.randbelow(Q)
        m = secrets.randbelow(Q)
        a_pt = point_mul_base(alpha)
        n_pt = point_sum([point_mul_base(m), point_mul_secret(st.X, alpha)])
        b_pt = point_mul_secret(st.H, m)
        if a_pt is not None and n_pt is not None and b_pt is not None:
            break  # a commitment at infinity has no encoding (probability ~ 3/q)
    a, n, b = cbytes(a_pt), cbytes(n_pt), cbytes(b_pt)
    e = challenge(session_id, prover, st, a, n, b)
    z = (alpha + e * lam) % Q
    u = (m + e * y) % Q
    return ElogProof(a, n, b, z.to_bytes(32, "big"), u.to_bytes(32, "big"))


def verify(session_id: bytes, prover: int, st: ElogStatement, proof: bytes) -> None:
    """``VerifyNI_elog``; raises ``InvalidProofError(prover, "pi_elog: ...")``."""
    p = ElogProof.from_bytes(proof, prover)
    a = decode_point(p.a, prover, "commitment A", PROTOCOL)
    n = decode_point(p.n, prover, "commitment N", PROTOCOL)
    b = decode_point(p.b, prover, "commitment B", PROTOCOL)
    z = decode_scalar(p.z, prover, "response z", PROTOCOL)
    u = decode_scalar(p.u, prover, "response u", PROTOCOL)
    if st.X is None or st.H is None:
        raise InvalidProofError(prover, f"{PROTOCOL}: base X or H is the point at infinity")
    e = challenge(session_id, prover, st, p.a, p.n, p.b)
    if not point_eq(point_mul_base(z), point_sum([a, point_mul(st.L, e)])):
        raise InvalidProofError(prover, f"{PROTOCOL}: z*G != A + e*L")
    if not point_eq(lincomb([(G, u), (st.X, z)]), point_sum([n, point_mul(st.M, e)])):
        raise InvalidProofError(prover, f"{PROTOCOL}: u*G + z*X != N + e*M")
    if not point_eq(point_mul(st.H, u), point_sum([b, point_mul(st.Y, e)])):
        raise InvalidProofError(prover, f"{PROTOCOL}: u*H != B + e*Y")
