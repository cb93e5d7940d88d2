"""Pi^enc-elg: Paillier encryption in range with an ElGamal commitment (CGGMP24, "Range Proof w/ El-Gamal
Commitment"; the paillier-zk crate's ``paillier_encryption_in_range_with_el_gamal``).

Statement: the prover's Paillier key ``N0``, a ciphertext ``C`` and points ``A, B, X``; the verifier's
ring-Pedersen parameters ``R_j = (N-hat, s, t)``. The prover knows ``x`` in ``+-2^l``, ``rho`` in ``Z*_N0``
and a scalar ``b`` with

    C = enc_N0(x; rho),   B = b * G,   X = b * A + x * G

(in presigning ``A = Y_i`` is the prover's ElGamal key and ``(B, X)`` the ElGamal commitment to ``x``).
The proof shows ``x`` in ``+-2^(l+eps)``.

- commit: ``alpha <- +-2^(l+eps)``, ``mu <- +-(2^l N-hat)``, ``r <- Z*_N0``, ``beta <- Z_q``,
  ``gamma <- +-(2^(l+eps) N-hat)``; ``S = s^x t^mu``, ``T = s^alpha t^gamma`` (mod ``N-hat``),
  ``D = enc_N0(alpha; r)``, ``Y = beta * A + alpha * G``, ``Z = beta * G``;
- challenge: ``e <- +-q`` from the transcript ``("pi_enc_elg", session id, prover, R_j, N0, C, A, B, X,
  S, T, D, Y, Z)``;
- response: ``z1 = alpha + e x``, ``z2 = r rho^e mod N0``, ``z3 = gamma + e mu``, ``w = beta + e b mod q``;
- verify: ``C, D`` in ``Z*_N0^2``, ``S, T`` in ``Z*_N-hat``, ``z2`` in ``Z*_N0``, ``0 <= w < q``;
  ``enc_N0(z1; z2) = D C^e``, ``z1 G + w A = Y + e X``, ``w G = Z + e B``, ``s^z1 t^z3 = T S^e``,
  ``z1`` in ``+-2^(l+eps)``.

Public API: ``EncElgStatement(c, a, b, x)`` (``a``, ``b``, ``x`` are ``tss.secp256k1`` points);
``prove(session_id, prover, aux: RingPedersenParams, key: PaillierSecretKey | PaillierPublicKey, st, x,
rho, b, nonce: PaillierNonce | None = None) -> EncElgProof`` (``nonce`` = precomputed ``(r, r^N0)`` for
``D``; ``BadInputError`` if the witness is out of its range); ``verify(session_id, prover, aux:
RingPedersenParams | RingPedersenSecret, key: PaillierPublicKey, st, proof: EncElgProof | bytes) -> None``
raising ``InvalidProofError(prover, "pi_enc_elg: ...")``; ``EncElgProof.to_bytes()`` /
``EncElgProof.from_bytes(data, prover)`` (``S, T, D, Y, Z, z1, z2, z3, w``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from tss.cggmp24.errors import BadInputError
from tss.cggmp24.paillier import (
    PaillierNonce,
    PaillierPublicKey,
    PaillierSecretKey,
    in_signed_range,
    is_unit,
    sample_signed,
    sample_signed_bound,
)
from tss.cggmp24.params import ELL, EPSILON, Q
from tss.cggmp24.proof_codec import Reader, Writer
from tss.cggmp24.ring_pedersen import RingPedersenParams, RingPedersenSecret
from tss.cggmp24.transcript import Transcript
from tss.cggmp24.zk_checks import (
    fail,
    need_bound,
    need_int,
    need_point,
    need_proof,
    need_statement_point,
    need_unit,
    verifier_params,
)
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

PROTOCOL = "pi_enc_elg"


@dataclass(frozen=True)
class EncElgStatement:
    """``(C, A, B, X)``; the Paillier key ``N0`` and the verifier's ``R_j`` are passed beside it."""

    c: int
    a: Point
    b: Point
    x: Point


@dataclass(frozen=True)
class EncElgProof:
    S: int
    T: int
    D: int
    Y: bytes
    Z: bytes
    z1: int
    z2: int
    z3: int
    w: int

    def to_bytes(self) -> bytes:
        wr = Writer().integers([self.S, self.T, self.D]).point(self.Y).point(self.Z)
        return wr.integers([self.z1, self.z2, self.z3, self.w]).encode()

    @staticmethod
    def from_bytes(data: bytes, prover: int) -> EncElgProof:
        r = Reader(data, prover, PROTOCOL)
        s, t, d = r.integers(3)
        y, z = r.point(), r.point()
        z1, z2, z3, w = r.integers(4)
        r.done()
        return EncElgProof(s, t, d, y, z, z1, z2, z3, w)


def challenge(
    session_id: bytes,
    prover: int,
    aux: RingPedersenParams,
    n0: int,
    st: EncElgStatement,
    first: tuple[int, int, int, bytes, bytes],
) -> mpz:
    """``ChallengeNI_enc-elg(sid, prover, R_j, (N0, C, A, B, X), (S, T, D, Y, Z))`` in ``+-q``."""
    tr = Transcript(PROTOCOL, session_id, prover)
    aux.append_to(tr, "R")
    tr.append_int("N0", n0)
    tr.append_int("C", st.c)
    tr.append_point("A", cbytes_ext(st.a))
    tr.append_point("B", cbytes_ext(st.b))
    tr.append_point("X", cbytes_ext(st.x))
    s, t, d, y, z = first
    tr.append_ints("STD", [s, t, d])
    tr.append_point("Y", y)
    tr.append_point("Z", z)
    return mpz(tr.challenge_signed("e", Q))


def _pow_n(key: PaillierPublicKey | PaillierSecretKey, base: int, e: int) -> mpz:
    if isinstance(key, PaillierSecretKey):
        return key.pow_mod_n(base, e)
    return gmpy2.powmod(mpz(base), mpz(e), key.n)


def prove(
    session_id: bytes,
    prover: int,
    aux: RingPedersenParams,
    key: PaillierSecretKey | PaillierPublicKey,
    st: EncElgStatement,
    x: int,
    rho: int,
    b: int,
    nonce: PaillierNonce | None = None,
) -> EncElgProof:
    """``ProveNI_enc-elg``: proof for the witness ``(x, rho, b)``."""
    n0 = key.n
    if not in_signed_range(x, ELL):
        raise BadInputError("pi_enc_elg: x outside +-2^l")
    if not is_unit(rho, int(n0)):
        raise BadInputError("pi_enc_elg: rho not in Z*_N0")
    if st.a is None:
        raise BadInputError("pi_enc_elg: A is the point at infinity")
    return _prove_unchecked(session_id, prover, aux, key, st, x, rho, b, nonce)


def _prove_unchecked(
    session_id: bytes,
    prover: int,
    aux: RingPedersenParams,
    key: PaillierSecretKey | PaillierPublicKey,
    st: EncElgStatement,
    x: int,
    rho: int,
    b: int,
    nonce: PaillierNonce | None,
) -> EncElgProof:
    """The prover's computation without the witness checks (tests use it to play a cheater)."""
    n0 = key.n
    nh = aux.n
    while True:
        alpha = sample_signed(ELL + EPSILON)
        mu = sample_signed_bound(nh << ELL)
        gamma = sample_signed_bound(nh << (ELL + EPSILON))
        beta = secrets.randbelow(Q)
        y_pt = point_sum([point_mul_secret(st.a, beta), point_mul_base(int(alpha))])
        z_pt = point_mul_base(beta)
        if y_pt is not None and z_pt is not None:
            break  # a commitment at infinity has no encoding (probability ~ 2/q)
    if nonce is None:
        nonce = key.sample_nonce()
    cap_s = aux.commit(x, mu)
    cap_t = aux.commit(alpha, gamma)
    cap_d = key.encrypt_with_nonce(alpha, nonce)
    y_b, z_b = cbytes(y_pt), cbytes(z_pt)
    e = challenge(session_id, prover, aux, n0, st, (cap_s, cap_t, cap_d, y_b, z_b))
    z1 = alpha + e * x
    z2 = nonce.rho * _pow_n(key, rho, e) % n0
    z3 = gamma + e * mu
    w = (beta + e * b) % Q
    return EncElgProof(cap_s, cap_t, cap_d, y_b, z_b, z1, z2, z3, w)


def verify(
    session_id: bytes,
    prover: int,
    aux: RingPedersenParams | RingPedersenSecret,
    key: PaillierPublicKey,
    st: EncElgStatement,
    proof: EncElgProof | bytes,
) -> None:
    """``VerifyNI_enc-elg``; raises ``InvalidProofError(prover, "pi_enc_elg: ...")``."""
    params = verifier_params(aux, prover, PROTOCOL)
    if not isinstance(key, PaillierPublicKey):
        raise fail(prover, PROTOCOL, "key is not a Paillier public key")
    if not isinstance(st, EncElgStatement):
        raise fail(prover, PROTOCOL, "not a statement")
    n0, nn0, nh = key.n, key.nn, params.n
    c = need_unit(st.c, nn0, prover, PROTOCOL, "C")
    a = need_statement_point(st.a, prover, PROTOCOL, "A")
    b = need_statement_point(st.b, prover, PROTOCOL, "B")
    x = need_statement_point(st.x, prover, PROTOCOL, "X")
    proof = need_proof(proof, EncElgProof, EncElgProof.from_bytes, prover, PROTOCOL)
    cap_s = need_unit(proof.S, nh, prover, PROTOCOL, "S")
    cap_t = need_unit(proof.T, nh, prover, PROTOCOL, "T")
    cap_d = need_unit(proof.D, nn0, prover, PROTOCOL, "D")
    y_pt = need_point(proof.Y, prover, PROTOCOL, "Y")
    z_pt = need_point(proof.Z, prover, PROTOCOL, "Z")
    z1 = need_bound(proof.z1, mpz(1) << (ELL + EPSILON), prover, PROTOCOL, "z1")
    z2 = need_unit(proof.z2, n0, prover, PROTOCOL, "z2")
    z3 = need_int(proof.z3, prover, PROTOCOL, "z3")
    w = need_int(proof.w, prover, PROTOCOL, "w")
    if not (0 <= w < Q):
        raise fail(prover, PROTOCOL, "w out of range")
    e = challenge(session_id, prover, params, n0, st, (cap_s, cap_t, cap_d, proof.Y, proof.Z))
    if key.encrypt(z1, z2) != cap_d * gmpy2.powmod(c, e, nn0) % nn0:
        raise fail(prover, PROTOCOL, "enc(z1; z2) != D C^e")
    if not point_eq(lincomb([(G, int(z1)), (a, int(w))]), point_sum([y_pt, point_mul(x, int(e))])):
        raise fail(prover, PROTOCOL, "z1 G + w A != Y + e X")
    if not point_eq(point_mul_base(int(w)), point_sum([z_pt, point_mul(b, int(e))])):
        raise fail(prover, PROTOCOL, "w G != Z + e B")
    if aux.commit(z1, z3) != cap_t * gmpy2.powmod(cap_s, e, nh) % nh:
        raise fail(prover, PROTOCOL, "s^z1 t^z3 != T S^e")


__all__ = ["PROTOCOL", "EncElgProof", "EncElgStatement", "challenge", "prove", "verify"]
