"""Pi^aff-g: Paillier affine operation with group commitment in range (spec/main.tex, section
"Pi^aff-g: Paillier Affine Operation with Group Commitment in Range") -- the MtA check of presigning.

Statement: the verifier's Paillier key ``N_j`` and ring-Pedersen parameters ``R_j = (N-hat, s, t)``, the
prover's Paillier key ``N_i``, ciphertexts ``C, D`` in ``Z*_{N_j^2}``, ``Y`` in ``Z*_{N_i^2}`` and a point
``X``. The prover knows ``x`` in ``+-2^l``, ``y`` in ``+-2^l'``, ``rho`` in ``Z*_{N_j}``, ``rho_y`` in
``Z*_{N_i}`` with

    D = (x (.) C) (+) enc_{N_j}(y; rho),   Y = enc_{N_i}(y; rho_y),   X = x * G.

- commit: ``alpha <- +-2^(l+eps)``, ``beta <- +-2^(l'+eps)``, ``r <- Z*_{N_j}``, ``r_y <- Z*_{N_i}``,
  ``gamma, delta <- +-(2^(l+eps) N-hat)``, ``m, mu <- +-(2^l N-hat)``;
  ``A = (alpha (.) C) (+) enc_{N_j}(beta; r)``, ``B_x = alpha G``, ``B_y = enc_{N_i}(beta; r_y)``,
  ``E = s^alpha t^gamma``, ``S = s^x t^m``, ``F = s^beta t^delta``, ``T = s^y t^mu`` (mod ``N-hat``);
- challenge: ``e <- +-q`` from the transcript ``("pi_aff_g", session id, prover, R_j, N_j, N_i, C, D, Y,
  X, A, B_x, B_y, E, S, F, T)``;
- response: ``z1 = alpha + e x``, ``z2 = beta + e y``, ``z3 = gamma + e m``, ``z4 = delta + e mu``,
  ``w = r rho^e mod N_j``, ``w_y = r_y rho_y^e mod N_i``;
- verify: every group element in its group (``C, D, A`` in ``Z*_{N_j^2}``; ``Y, B_y`` in ``Z*_{N_i^2}``;
  ``E, S, F, T`` in ``Z*_N-hat``; ``w`` in ``Z*_{N_j}``, ``w_y`` in ``Z*_{N_i}``), then
  ``A (+) (e (.) D) = (z1 (.) C) (+) enc_{N_j}(z2; w)``, ``z1 G = B_x + e X``,
  ``B_y (+) (e (.) Y) = enc_{N_i}(z2; w_y)``, ``s^z1 t^z3 = E S^e``, ``s^z2 t^z4 = F T^e``,
  ``z1`` in ``+-2^(l+eps)``, ``z2`` in ``+-2^(l'+eps)`` (the range checks the Alpha-Rays attack exploited
  when missing).

Public API: ``AffGStatement(c, d, y, x)`` (``x`` a ``tss.secp256k1`` point);
``prove(session_id, prover, aux_j: RingPedersenParams, key_j: PaillierPublicKey, key_i: PaillierSecretKey |
PaillierPublicKey, st, x, y, rho, rho_y, nonce_j=None, nonce_i=None) -> AffGProof`` (the nonces are
precomputed ``PaillierNonce`` for ``r`` under ``N_j`` and ``r_y`` under ``N_i``); ``verify(session_id,
prover, aux_j: RingPedersenParams | RingPedersenSecret, key_j: PaillierSecretKey | PaillierPublicKey,
key_i: PaillierPublicKey, st, proof: AffGProof | bytes) -> None`` (the verifier passes its own secrets for
CRT and reduced exponents), raising ``InvalidProofError(prover, "pi_aff_g: ...")``;
``AffGProof.to_bytes()`` / ``AffGProof.from_bytes(data, prover)``
(``A, B_x, B_y, E, S, F, T, z1, z2, z3, z4, w, w_y``).
"""

from __future__ import annotations

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
from tss.cggmp24.params import ELL, ELL_PRIME, EPSILON, Q
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
from tss.secp256k1 import Point, cbytes, cbytes_ext, point_eq, point_mul, point_mul_base, point_sum

PROTOCOL = "pi_aff_g"


@dataclass(frozen=True)
class AffGStatement:
    """``(C, D, Y, X)``; the keys ``N_j``, ``N_i`` and the verifier's ``R_j`` are passed beside it."""

    c: int
    d: int
    y: int
    x: Point


@dataclass(frozen=True)
class AffGProof:
    A: int
    Bx: bytes
    By: int
    E: int
    S: int
    F: int
    T: int
    z1: int
    z2: int
    z3: int
    z4: int
    w: int
    wy: int

    def to_bytes(self) -> bytes:
        wr = Writer().integer(self.A).point(self.Bx)
        wr.integers([self.By, self.E, self.S, self.F, self.T])
        return wr.integers([self.z1, self.z2, self.z3, self.z4, self.w, self.wy]).encode()

    @staticmethod
    def from_bytes(data: bytes, prover: int) -> AffGProof:
        r = Reader(data, prover, PROTOCOL)
        a = r.integer()
        bx = r.point()
        by, e, s, f, t = r.integers(5)
        z1, z2, z3, z4, w, wy = r.integers(6)
        r.done()
        return AffGProof(a, bx, by, e, s, f, t, z1, z2, z3, z4, w, wy)


def challenge(
    session_id: bytes,
    prover: int,
    aux: RingPedersenParams,
    n_j: int,
    n_i: int,
    st: AffGStatement,
    a: int,
    bx: bytes,
    rest: tuple[int, int, int, int, int],
) -> mpz:
    """``ChallengeNI_aff-g(sid, prover, R_j, (N_j, N_i, C, D, Y, X), (A, B_x, B_y, E, S, F, T))``."""
    tr = Transcript(PROTOCOL, session_id, prover)
    aux.append_to(tr, "R")
    tr.append_int("N_j", n_j)
    tr.append_int("N_i", n_i)
    tr.append_ints("CDY", [st.c, st.d, st.y])
    tr.append_point("X", cbytes_ext(st.x))
    tr.append_int("A", a)
    tr.append_point("B_x", bx)
    tr.append_ints("ByESFT", list(rest))
    return mpz(tr.challenge_signed("e", Q))


def prove(
    session_id: bytes,
    prover: int,
    aux_j: RingPedersenParams,
    key_j: PaillierPublicKey,
    key_i: PaillierSecretKey | PaillierPublicKey,
    st: AffGStatement,
    x: int,
    y: int,
    rho: int,
    rho_y: int,
    nonce_j: PaillierNonce | None = None,
    nonce_i: PaillierNonce | None = None,
) -> AffGProof:
    """``ProveNI_aff-g``: proof for the witness ``(x, y, rho, rho_y)``."""
    if not in_signed_range(x, ELL):
        raise BadInputError("pi_aff_g: x outside +-2^l")
    if not in_signed_range(y, ELL_PRIME):
        raise BadInputError("pi_aff_g: y outside +-2^l'")
    if not is_unit(rho, int(key_j.n)) or not is_unit(rho_y, int(key_i.n)):
        raise BadInputError("pi_aff_g: rho or rho_y not a unit")
    if not key_j.is_ciphertext(st.c):
        raise BadInputError("pi_aff_g: C not in Z*_{N_j^2}")
    return _prove_unchecked(session_id, prover, aux_j, key_j, key_i, st, x, y, rho, rho_y, nonce_j, nonce_i)


def _prove_unchecked(
    session_id: bytes,
    prover: int,
    aux_j: RingPedersenParams,
    key_j: PaillierPublicKey,
    key_i: PaillierSecretKey | PaillierPublicKey,
    st: AffGStatement,
    x: int,
    y: int,
    rho: int,
    rho_y: int,
    nonce_j: PaillierNonce | None,
    nonce_i: PaillierNonce | None,
) -> AffGProof:
    """The prover's computation without the witness range checks (tests use it to play a cheater)."""
    nh = aux_j.n
    while True:
        alpha = sample_signed(ELL + EPSILON)
        bx_pt = point_mul_base(int(alpha))
        if bx_pt is not None:
            break
    beta = sample_signed(ELL_PRIME + EPSILON)
    gamma = sample_signed_bound(nh << (ELL + EPSILON))
    delta = sample_signed_bound(nh << (ELL + EPSILON))
    m = sample_signed_bound(nh << ELL)
    mu = sample_signed_bound(nh << ELL)
    nonce_j = nonce_j if nonce_j is not None else key_j.sample_nonce()
    nonce_i = nonce_i if nonce_i is not None else key_i.sample_nonce()
    cap_a = key_j.add(key_j.mul(alpha, st.c), key_j.encrypt_with_nonce(beta, nonce_j))
    bx = cbytes(bx_pt)
    cap_by = key_i.encrypt_with_nonce(beta, nonce_i)
    cap_e = aux_j.commit(alpha, gamma)
    cap_s = aux_j.commit(x, m)
    cap_f = aux_j.commit(beta, delta)
    cap_t = aux_j.commit(y, mu)
    rest = (cap_by, cap_e, cap_s, cap_f, cap_t)
    e = challenge(session_id, prover, aux_j, key_j.n, key_i.n, st, cap_a, bx, rest)
    w = nonce_j.rho * gmpy2.powmod(mpz(rho), e, key_j.n) % key_j.n
    if isinstance(key_i, PaillierSecretKey):
        wy = nonce_i.rho * key_i.pow_mod_n(rho_y, e) % key_i.n
    else:
        wy = nonce_i.rho * gmpy2.powmod(mpz(rho_y), e, key_i.n) % key_i.n
    return AffGProof(
        cap_a, bx, cap_by, cap_e, cap_s, cap_f, cap_t,
        alpha + e * x, beta + e * y, gamma + e * m, delta + e * mu, w, wy,
    )  # fmt: skip


def verify(
    session_id: bytes,
    prover: int,
    aux_j: RingPedersenParams | RingPedersenSecret,
    key_j: PaillierSecretKey | PaillierPublicKey,
    key_i: PaillierPublicKey,
    st: AffGStatement,
    proof: AffGProof | bytes,
) -> None:
    """``VerifyNI_aff-g``; raises ``InvalidProofError(prover, "pi_aff_g: ...")``."""
    params = verifier_params(aux_j, prover, PROTOCOL)
    pk_j = key_j.public if isinstance(key_j, PaillierSecretKey) else key_j
    if not isinstance(pk_j, PaillierPublicKey) or not isinstance(key_i, PaillierPublicKey):
        raise fail(prover, PROTOCOL, "keys are not Paillier keys")
    if not isinstance(st, AffGStatement):
        raise fail(prover, PROTOCOL, "not a statement")
    nj, nnj, ni, nni, nh = pk_j.n, pk_j.nn, key_i.n, key_i.nn, params.n
    c = need_unit(st.c, nnj, prover, PROTOCOL, "C")
    d = need_unit(st.d, nnj, prover, PROTOCOL, "D")
    y = need_unit(st.y, nni, prover, PROTOCOL, "Y")
    x_pt = need_statement_point(st.x, prover, PROTOCOL, "X")
    proof = need_proof(proof, AffGProof, AffGProof.from_bytes, prover, PROTOCOL)
    cap_a = need_unit(proof.A, nnj, prover, PROTOCOL, "A")
    bx_pt = need_point(proof.Bx, prover, PROTOCOL, "B_x")
    cap_by = need_unit(proof.By, nni, prover, PROTOCOL, "B_y")
    cap_e = need_unit(proof.E, nh, prover, PROTOCOL, "E")
    cap_s = need_unit(proof.S, nh, prover, PROTOCOL, "S")
    cap_f = need_unit(proof.F, nh, prover, PROTOCOL, "F")
    cap_t = need_unit(proof.T, nh, prover, PROTOCOL, "T")
    z1 = need_bound(proof.z1, mpz(1) << (ELL + EPSILON), prover, PROTOCOL, "z1")
    z2 = need_bound(proof.z2, mpz(1) << (ELL_PRIME + EPSILON), prover, PROTOCOL, "z2")
    z3 = need_int(proof.z3, prover, PROTOCOL, "z3")
    z4 = need_int(proof.z4, prover, PROTOCOL, "z4")
    w = need_unit(proof.w, nj, prover, PROTOCOL, "w")
    wy = need_unit(proof.wy, ni, prover, PROTOCOL, "w_y")
    rest = (cap_by, cap_e, cap_s, cap_f, cap_t)
    e = challenge(session_id, prover, params, nj, ni, st, cap_a, proof.Bx, rest)
    # A (+) e (.) D == z1 (.) C (+) enc_Nj(z2; w), with CRT when the verifier holds sk_j
    if isinstance(key_j, PaillierSecretKey):
        lhs = cap_a * key_j.pow_mod_nn(d, e) % nnj
        rhs = key_j.pow_mod_nn(c, z1) * key_j.encrypt(z2, w) % nnj
    else:
        lhs = cap_a * gmpy2.powmod(d, e, nnj) % nnj
        rhs = gmpy2.powmod(c, z1, nnj) * pk_j.encrypt(z2, w) % nnj
    if lhs != rhs:
        raise fail(prover, PROTOCOL, "A (+) e (.) D != z1 (.) C (+) enc(z2; w)")
    if not point_eq(point_mul_base(int(z1)), point_sum([bx_pt, point_mul(x_pt, int(e))])):
        raise fail(prover, PROTOCOL, "z1 G != B_x + e X")
    if cap_by * gmpy2.powmod(y, e, nni) % nni != key_i.encrypt(z2, wy):
        raise fail(prover, PROTOCOL, "B_y (+) e (.) Y != enc(z2; w_y)")
    if aux_j.commit(z1, z3) != cap_e * gmpy2.powmod(cap_s, e, nh) % nh:
        raise fail(prover, PROTOCOL, "s^z1 t^z3 != E S^e")
    if aux_j.commit(z2, z4) != cap_f * gmpy2.powmod(cap_t, e, nh) % nh:
        raise fail(prover, PROTOCOL, "s^z2 t^z4 != F T^e")


__all__ = ["PROTOCOL", "AffGProof", "AffGStatement", "challenge", "prove", "verify"]
