"""Pi^fac: no small factor (spec/main.tex, section "Pi^fac: No Small Factor Proof").

Statement: the prover's Paillier modulus ``N`` (``N_i``) and the verifier's ring-Pedersen parameters
``R_j = (N-hat, s, t)``; the prover knows ``p, q`` with ``N = p q``. It proves both factors exceed about
``2^ELL`` (the BitForge attack used moduli with small factors). With ``sqrt(N)`` = ``isqrt(N)``:

- commit: ``alpha, beta <- +-(2^(l+eps) sqrt(N))``, ``mu, nu <- +-(2^l N-hat)``,
  ``sigma <- +-(2^l N N-hat)``, ``r <- +-(2^(l+eps) N N-hat)``, ``x, y <- +-(2^(l+eps) N-hat)``;
  ``P = s^p t^mu``, ``Q = s^q t^nu``, ``A = s^alpha t^x``, ``B = s^beta t^y``, ``T = Q^alpha t^r``
  (mod ``N-hat``); send ``(P, Q, A, B, T, sigma)``;
- challenge: ``e <- +-2^l`` from the transcript ``("pi_fac", session id, prover, R_j, N, P, Q, A, B, T,
  sigma)``;
- response: ``z1 = alpha + e p``, ``z2 = beta + e q``, ``w1 = x + e mu``, ``w2 = y + e nu``,
  ``v = r + e (sigma - nu p)``;
- verify: ``P, Q, A, B, T`` in ``Z*_N-hat``; ``s^z1 t^w1 = A P^e``, ``s^z2 t^w2 = B Q^e``,
  ``Q^z1 t^v = T (s^N t^sigma)^e`` (mod ``N-hat``); ``z1, z2`` in ``+-(2^(l+eps) sqrt(N))``.

Public API: ``prove(session_id, prover, aux: RingPedersenParams, key: PaillierSecretKey) -> FacProof``;
``verify(session_id, prover, aux: RingPedersenParams | RingPedersenSecret, n: int, proof: FacProof |
bytes) -> None`` (pass your ``RingPedersenSecret`` to verify faster: exponents reduced modulo the order of
``t``), raising ``InvalidProofError(prover, "pi_fac: ...")``; ``FacProof.to_bytes()`` /
``FacProof.from_bytes(data, prover)`` (``P, Q, A, B, T, sigma, z1, z2, w1, w2, v``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import gmpy2
from gmpy2 import mpz

from tss.cggmp24.paillier import PaillierSecretKey, sample_signed_bound
from tss.cggmp24.params import ELL, EPSILON
from tss.cggmp24.proof_codec import Reader, Writer
from tss.cggmp24.ring_pedersen import RingPedersenParams, RingPedersenSecret
from tss.cggmp24.transcript import Transcript
from tss.cggmp24.zk_checks import fail, need_bound, need_int, need_proof, need_unit, verifier_params

PROTOCOL = "pi_fac"


@dataclass(frozen=True)
class FacProof:
    P: int
    Q: int
    A: int
    B: int
    T: int
    sigma: int
    z1: int
    z2: int
    w1: int
    w2: int
    v: int

    def to_bytes(self) -> bytes:
        return Writer().integers([getattr(self, f.name) for f in fields(self)]).encode()

    @staticmethod
    def from_bytes(data: bytes, prover: int) -> FacProof:
        r = Reader(data, prover, PROTOCOL)
        vals = r.integers(len(fields(FacProof)))
        r.done()
        return FacProof(*vals)


def challenge(session_id: bytes, prover: int, aux: RingPedersenParams, n: int, first: tuple[int, ...]) -> mpz:
    """``ChallengeNI_fac(sid, prover, R_j, N, (P, Q, A, B, T, sigma))`` in ``+-2^l``."""
    tr = Transcript(PROTOCOL, session_id, prover)
    aux.append_to(tr, "R")
    tr.append_int("N", n)
    tr.append_ints("first", list(first))
    return mpz(tr.challenge_signed("e", 1 << ELL))


def z_bound(n: int) -> mpz:
    """``2^(l+eps) sqrt(N)``."""
    return gmpy2.isqrt(mpz(n)) << (ELL + EPSILON)


def prove(session_id: bytes, prover: int, aux: RingPedersenParams, key: PaillierSecretKey) -> FacProof:
    """``ProveNI_fac(sid, R_j, N, (p, q))``."""
    n, p, q = key.n, key.p, key.q
    nh = aux.n
    bound = z_bound(n)
    alpha, beta = sample_signed_bound(bound), sample_signed_bound(bound)
    mu, nu = sample_signed_bound(nh << ELL), sample_signed_bound(nh << ELL)
    sigma = sample_signed_bound((n * nh) << ELL)
    r = sample_signed_bound((n * nh) << (ELL + EPSILON))
    x, y = sample_signed_bound(nh << (ELL + EPSILON)), sample_signed_bound(nh << (ELL + EPSILON))
    cap_p = aux.commit(p, mu)
    cap_q = aux.commit(q, nu)
    cap_a = aux.commit(alpha, x)
    cap_b = aux.commit(beta, y)
    cap_t = gmpy2.powmod(cap_q, alpha, nh) * aux.commit(0, r) % nh
    first = (cap_p, cap_q, cap_a, cap_b, cap_t, sigma)
    e = challenge(session_id, prover, aux, n, first)
    return FacProof(
        cap_p, cap_q, cap_a, cap_b, cap_t, sigma,
        alpha + e * p, beta + e * q, x + e * mu, y + e * nu, r + e * (sigma - nu * p),
    )  # fmt: skip


def verify(
    session_id: bytes,
    prover: int,
    aux: RingPedersenParams | RingPedersenSecret,
    n: int,
    proof: FacProof | bytes,
) -> None:
    """``VerifyNI_fac``; raises ``InvalidProofError(prover, "pi_fac: ...")``."""
    params = verifier_params(aux, prover, PROTOCOL)
    nz = need_int(n, prover, PROTOCOL, "N")
    if nz < 3:
        raise fail(prover, PROTOCOL, "N out of range")
    proof = need_proof(proof, FacProof, FacProof.from_bytes, prover, PROTOCOL)
    nh = params.n
    cap_p = need_unit(proof.P, nh, prover, PROTOCOL, "P")
    cap_q = need_unit(proof.Q, nh, prover, PROTOCOL, "Q")
    cap_a = need_unit(proof.A, nh, prover, PROTOCOL, "A")
    cap_b = need_unit(proof.B, nh, prover, PROTOCOL, "B")
    cap_t = need_unit(proof.T, nh, prover, PROTOCOL, "T")
    sigma = need_int(proof.sigma, prover, PROTOCOL, "sigma")
    bound = z_bound(nz)
    z1 = need_bound(proof.z1, bound, prover, PROTOCOL, "z1")
    z2 = need_bound(proof.z2, bound, prover, PROTOCOL, "z2")
    w1 = need_int(proof.w1, prover, PROTOCOL, "w1")
    w2 = need_int(proof.w2, prover, PROTOCOL, "w2")
    v = need_int(proof.v, prover, PROTOCOL, "v")
    e = challenge(session_id, prover, params, nz, (cap_p, cap_q, cap_a, cap_b, cap_t, sigma))
    if aux.commit(z1, w1) != cap_a * gmpy2.powmod(cap_p, e, nh) % nh:
        raise fail(prover, PROTOCOL, "s^z1 t^w1 != A P^e")
    if aux.commit(z2, w2) != cap_b * gmpy2.powmod(cap_q, e, nh) % nh:
        raise fail(prover, PROTOCOL, "s^z2 t^w2 != B Q^e")
    lhs = gmpy2.powmod(cap_q, z1, nh) * aux.commit(0, v) % nh
    if lhs != cap_t * aux.commit(nz * e, sigma * e) % nh:
        raise fail(prover, PROTOCOL, "Q^z1 t^v != T (s^N t^sigma)^e")


__all__ = ["PROTOCOL", "FacProof", "challenge", "prove", "verify", "z_bound"]
