"""Pi^fac (no small factor): honest proofs verify against the verifier's ring-Pedersen parameters; a
modulus with a small factor, tampered fields, wrong session or prover and malformed values are rejected."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import gmpy2
import pytest
from gmpy2 import mpz

from tests.unit.cggmp24_fixtures import paillier_key, ring_pedersen
from tss.cggmp24 import pi_fac
from tss.cggmp24.errors import InvalidProofError
from tss.cggmp24.paillier import PaillierSecretKey
from tss.cggmp24.pi_fac import FacProof
from tss.cggmp24.ring_pedersen import RingPedersenSecret

SID = b"pi_fac test session"
FIELDS = [f.name for f in dataclasses.fields(FacProof)]


@pytest.fixture(scope="module")
def setup() -> tuple[RingPedersenSecret, PaillierSecretKey, FacProof]:
    verifier = ring_pedersen(3)
    key = paillier_key(1)
    return verifier, key, pi_fac.prove(SID, 4, verifier.params, key)


def _rejects(aux: object, n: object, proof: object, match: str, sid: bytes = SID, prover: int = 4) -> None:
    with pytest.raises(InvalidProofError, match=match) as ei:
        pi_fac.verify(sid, prover, aux, n, proof)  # type: ignore[arg-type]
    assert ei.value.party == prover and ei.value.check.startswith("pi_fac: ")


def test_honest_proof_verifies_and_roundtrips(
    setup: tuple[RingPedersenSecret, PaillierSecretKey, FacProof],
) -> None:
    verifier, key, proof = setup
    pi_fac.verify(SID, 4, verifier, key.n, proof)  # with the trapdoor (reduced exponents)
    pi_fac.verify(SID, 4, verifier.params, key.n, proof)  # public parameters only
    data = proof.to_bytes()
    assert FacProof.from_bytes(data, 4) == proof and FacProof.from_bytes(data, 4).to_bytes() == data
    pi_fac.verify(SID, 4, verifier, key.n, data)


def test_small_factor_modulus_is_rejected() -> None:
    """N = p * q with a 256-bit p: the prover follows the protocol, z2 = beta + e q leaves its range."""
    verifier = ring_pedersen(3)
    p = gmpy2.next_prime(mpz(secrets.randbits(256)) | (mpz(1) << 255))
    q = mpz(secrets.randbits(2900)) | (mpz(1) << 2899) | 1
    key = PaillierSecretKey(p, q)
    assert key.n.bit_length() >= 3071
    proof = pi_fac.prove(SID, 4, verifier.params, key)
    _rejects(verifier, key.n, proof, "z2 out of range")
    # also with the factors swapped (z1 then carries the big factor)
    proof2 = pi_fac.prove(SID, 4, verifier.params, PaillierSecretKey(q, p))
    _rejects(verifier, key.n, proof2, "z1 out of range")


def test_each_tampered_field_is_rejected(
    setup: tuple[RingPedersenSecret, PaillierSecretKey, FacProof],
) -> None:
    verifier, key, proof = setup
    for name in FIELDS:
        v = getattr(proof, name)
        tampered = dataclasses.replace(proof, **{name: v + 1 if name != "z1" else v - 1})
        _rejects(verifier, key.n, tampered, "pi_fac: ")


def test_wrong_session_prover_or_modulus_is_rejected(
    setup: tuple[RingPedersenSecret, PaillierSecretKey, FacProof],
) -> None:
    verifier, key, proof = setup
    _rejects(verifier, key.n, proof, "s\\^z1 t\\^w1 != A P\\^e", sid=b"other")
    _rejects(verifier, key.n, proof, "s\\^z1 t\\^w1 != A P\\^e", prover=0)
    _rejects(verifier, paillier_key(2).n, proof, "pi_fac: ")
    _rejects(ring_pedersen(4), key.n, proof, "pi_fac: ")  # another verifier's parameters


def test_malformed_values_are_rejected(setup: tuple[RingPedersenSecret, PaillierSecretKey, FacProof]) -> None:
    verifier, key, proof = setup
    nh = verifier.params.n
    for name in ("P", "Q", "A", "B", "T"):
        for bad in (0, nh, verifier.p * 5, -1):
            _rejects(verifier, key.n, dataclasses.replace(proof, **{name: bad}), f"{name} not in Z")
    for name in FIELDS:
        kw: dict[str, Any] = {name: "1"}
        _rejects(verifier, key.n, dataclasses.replace(proof, **kw), "not an integer")
    _rejects(verifier, key.n, proof.to_bytes()[:-1], "truncated")
    _rejects(verifier, key.n, None, "not a proof")
    _rejects(None, key.n, proof, "aux is not")
