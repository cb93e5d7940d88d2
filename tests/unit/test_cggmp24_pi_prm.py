"""Pi^prm (ring-Pedersen parameters): honest proofs verify; s outside <t>, tampered fields, wrong session
or prover, fewer iterations and malformed encodings are rejected."""

from __future__ import annotations

import dataclasses
from typing import Any

import gmpy2
import pytest
from gmpy2 import mpz

from tests.unit.cggmp24_fixtures import ring_pedersen
from tss.cggmp24 import pi_prm
from tss.cggmp24.errors import InvalidProofError
from tss.cggmp24.params import M
from tss.cggmp24.pi_prm import PrmProof
from tss.cggmp24.ring_pedersen import RingPedersenParams, RingPedersenSecret

SID = bytes(range(32))


@pytest.fixture(scope="module")
def honest() -> tuple[RingPedersenSecret, PrmProof]:
    sec = ring_pedersen(0)
    return sec, pi_prm.prove(SID, 2, sec)


def _rejects(
    params: RingPedersenParams, proof: object, match: str, sid: bytes = SID, prover: int = 2
) -> None:
    with pytest.raises(InvalidProofError, match=match) as ei:
        pi_prm.verify(sid, prover, params, proof)  # type: ignore[arg-type]
    assert ei.value.party == prover and ei.value.check.startswith("pi_prm: ")


def test_honest_proof_verifies_and_roundtrips(honest: tuple[RingPedersenSecret, PrmProof]) -> None:
    sec, proof = honest
    pi_prm.verify(SID, 2, sec.params, proof)
    data = proof.to_bytes()
    assert PrmProof.from_bytes(data, 2) == proof and PrmProof.from_bytes(data, 2).to_bytes() == data
    pi_prm.verify(SID, 2, sec.params, data)


def test_s_outside_group_of_t_is_rejected() -> None:
    sec = ring_pedersen(1)
    n = sec.params.n
    # a non-residue modulo p-hat: not a power of the quadratic residue t
    s_bad = next(
        mpz(v) for v in range(2, 999) if gmpy2.jacobi(v, sec.p) == -1 and gmpy2.jacobi(v, sec.q) == 1
    )
    forged_params = RingPedersenParams(n, s_bad, sec.params.t)
    cheat = RingPedersenSecret(sec.p, sec.q, lam=sec.lam, t=sec.params.t)
    cheat.params = forged_params  # the cheating prover claims s_bad = t^lam
    proof = pi_prm.prove(SID, 2, cheat)
    _rejects(forged_params, proof, "t\\^z != A s\\^e")


def test_each_tampered_field_is_rejected(honest: tuple[RingPedersenSecret, PrmProof]) -> None:
    sec, proof = honest
    n = sec.params.n
    for field in ("a", "z"):
        vals = list(getattr(proof, field))
        vals[5] = (vals[5] + 1) % n
        _rejects(sec.params, dataclasses.replace(proof, **{field: tuple(vals)}), "pi_prm")


def test_wrong_session_or_prover_is_rejected(honest: tuple[RingPedersenSecret, PrmProof]) -> None:
    sec, proof = honest
    _rejects(sec.params, proof, "t\\^z != A s\\^e", sid=bytes(32))
    _rejects(sec.params, proof, "t\\^z != A s\\^e", prover=3)


def test_fewer_iterations_are_rejected(honest: tuple[RingPedersenSecret, PrmProof]) -> None:
    sec, proof = honest
    short = PrmProof(proof.a[: M - 1], proof.z[: M - 1])
    _rejects(sec.params, short, "wrong number of iterations")
    _rejects(sec.params, short.to_bytes(), "malformed encoding")
    _rejects(sec.params, PrmProof(proof.a[: M - 1], proof.z), "A has 127 entries")
    _rejects(sec.params, PrmProof(proof.a, proof.z[: M - 1]), "z has 127 entries")


def test_malformed_values_are_rejected(honest: tuple[RingPedersenSecret, PrmProof]) -> None:
    sec, proof = honest
    n = sec.params.n
    a: list[Any] = list(proof.a)
    for bad, why in ((0, "not in Z"), (sec.p, "not in Z"), (n, "not in Z"), ("7", "not an integer")):
        a[0] = bad
        _rejects(sec.params, dataclasses.replace(proof, a=tuple(a)), why)
    z: list[Any] = list(proof.z)
    for bad, why in ((-1, "out of range"), (n, "out of range"), (None, "not an integer")):
        z[0] = bad
        _rejects(sec.params, dataclasses.replace(proof, z=tuple(z)), why)
    _rejects(sec.params, proof.to_bytes() + b"\x00", "trailing bytes")
    _rejects(sec.params, "not bytes", "not a proof")
    _rejects(RingPedersenParams(n, 1, sec.params.t), proof, "s or t is")


def test_binding_to_the_parameters(honest: tuple[RingPedersenSecret, PrmProof]) -> None:
    _, proof = honest
    other = ring_pedersen(2).params
    _rejects(other, proof, "pi_prm")
