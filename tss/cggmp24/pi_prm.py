"""Pi^prm: ring-Pedersen parameters (spec/main.tex, section "Pi^prm: Ring-Pedersen Parameters").

Statement ``(N, s, t)``; the prover knows ``lambda`` with ``s = t^lambda mod N`` and ``phi(N)``. ``M = 128``
binary-challenge iterations (soundness ``2^-128``; TSSHOCK broke libraries that ran fewer):

- commit: ``a_i <- Z_phi(N)``, ``A_i = t^(a_i) mod N``;
- challenge: bits ``e_1..e_m`` from the transcript ``("pi_prm", session id, prover, N, s, t, A_1..A_m)``;
- response: ``z_i = a_i + e_i lambda mod phi(N)``;
- verify: ``t^(z_i) = A_i s^(e_i) mod N`` for every ``i``, with ``A_i`` in ``Z*_N`` and ``0 <= z_i < N``.

Public API: ``prove(session_id, prover, secret: RingPedersenSecret) -> PrmProof``;
``verify(session_id, prover, params: RingPedersenParams, proof: PrmProof | bytes) -> None`` raising
``InvalidProofError(prover, "pi_prm: ...")`` (it also runs the shape checks of
``check_ring_pedersen_params``); ``PrmProof.to_bytes()`` / ``PrmProof.from_bytes(data, prover)``
(``proof_codec``: ``A_1..A_m, z_1..z_m``).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from gmpy2 import mpz

from tss.cggmp24.errors import InvalidContributionError
from tss.cggmp24.params import M
from tss.cggmp24.proof_codec import Reader, Writer
from tss.cggmp24.ring_pedersen import RingPedersenParams, RingPedersenSecret, check_ring_pedersen_params
from tss.cggmp24.transcript import Transcript
from tss.cggmp24.zk_checks import fail, need_count, need_int, need_proof, need_unit

PROTOCOL = "pi_prm"


@dataclass(frozen=True)
class PrmProof:
    a: tuple[int, ...]
    z: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return Writer().integers(self.a).integers(self.z).encode()

    @staticmethod
    def from_bytes(data: bytes, prover: int) -> PrmProof:
        r = Reader(data, prover, PROTOCOL)
        a = r.integers(M)
        z = r.integers(M)
        r.done()
        return PrmProof(a, z)


def challenge(session_id: bytes, prover: int, params: RingPedersenParams, a: tuple[int, ...]) -> list[int]:
    """``ChallengeNI_prm(sid, prover, N, s, t, {A_i})``: ``M`` bits."""
    tr = Transcript(PROTOCOL, session_id, prover)
    params.append_to(tr, "R")
    tr.append_ints("A", list(a))
    return tr.challenge_bits("e", M)


def prove(session_id: bytes, prover: int, secret: RingPedersenSecret) -> PrmProof:
    """``ProveNI_prm(sid, (N, s, t), (phi, lambda))``."""
    phi = secret.phi
    a_exps = [mpz(secrets.randbelow(int(phi))) for _ in range(M)]
    a = tuple(secret.commit(0, ai) for ai in a_exps)  # t^(a_i) by the fixed-base table
    e = challenge(session_id, prover, secret.params, a)
    z = tuple((ai + ei * secret.lam) % phi for ai, ei in zip(a_exps, e, strict=True))
    return PrmProof(a, z)


def verify(session_id: bytes, prover: int, params: RingPedersenParams, proof: PrmProof | bytes) -> None:
    """``VerifyNI_prm``; raises ``InvalidProofError(prover, "pi_prm: ...")``."""
    if not isinstance(params, RingPedersenParams):
        raise fail(prover, PROTOCOL, "statement is not ring-Pedersen parameters")
    try:
        check_ring_pedersen_params(params.n, params.s, params.t, prover)
    except InvalidContributionError as exc:
        raise fail(prover, PROTOCOL, exc.check) from None
    proof = need_proof(proof, PrmProof, PrmProof.from_bytes, prover, PROTOCOL)
    n = params.n
    a_raw = need_count(proof.a, M, prover, PROTOCOL, "A")
    z_raw = need_count(proof.z, M, prover, PROTOCOL, "z")
    a = tuple(need_unit(x, n, prover, PROTOCOL, f"A[{i}]") for i, x in enumerate(a_raw))
    z = tuple(need_int(x, prover, PROTOCOL, f"z[{i}]") for i, x in enumerate(z_raw))
    for i, zi in enumerate(z):
        if not (0 <= zi < n):
            raise fail(prover, PROTOCOL, f"z[{i}] out of range")
    e = challenge(session_id, prover, params, a)
    for i in range(M):
        rhs = a[i] * params.s % n if e[i] else a[i]
        if params.commit(0, z[i]) != rhs:
            raise fail(prover, PROTOCOL, f"t^z != A s^e (iteration {i})")


__all__ = ["PROTOCOL", "PrmProof", "challenge", "prove", "verify"]
