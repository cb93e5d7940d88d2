"""Pi^enc-elg (Paillier encryption in range with an ElGamal commitment): honest proofs verify; a plaintext
out of range, an inconsistent ElGamal commitment, tampered fields, a wrong session or prover, another
verifier's parameters and malformed values are rejected."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import pytest
from gmpy2 import mpz

from tests.unit.cggmp24_fixtures import paillier_key, ring_pedersen
from tss.cggmp24 import pi_enc_elg
from tss.cggmp24.errors import BadInputError, InvalidProofError
from tss.cggmp24.paillier import sample_signed, sample_unit
from tss.cggmp24.params import ELL, EPSILON, Q
from tss.cggmp24.pi_enc_elg import EncElgProof, EncElgStatement
from tss.secp256k1 import cbytes, point_mul, point_mul_base, point_sum

SID = bytes(32)
PROVER = 1
FIELDS = [f.name for f in dataclasses.fields(EncElgProof)]


def _statement(x: int) -> tuple[EncElgStatement, mpz, int]:
    key = paillier_key(PROVER)
    rho = sample_unit(key.n)
    y_key, b = secrets.randbelow(Q - 1) + 1, secrets.randbelow(Q - 1) + 1
    a_pt = point_mul_base(y_key)
    st = EncElgStatement(
        key.encrypt(x, rho), a_pt, point_mul_base(b), point_sum([point_mul(a_pt, b), point_mul_base(x)])
    )
    return st, rho, b


@pytest.fixture(scope="module")
def honest() -> tuple[EncElgStatement, EncElgProof]:
    x = sample_signed(ELL)
    st, rho, b = _statement(int(x))
    return st, pi_enc_elg.prove(SID, PROVER, ring_pedersen(0).params, paillier_key(PROVER), st, x, rho, b)


def _rejects(
    st: object, proof: object, match: str, sid: bytes = SID, prover: int = PROVER, aux: Any = None
) -> None:
    aux = ring_pedersen(0) if aux is None else aux
    with pytest.raises(InvalidProofError, match=match) as ei:
        pi_enc_elg.verify(sid, prover, aux, paillier_key(PROVER).public, st, proof)  # type: ignore[arg-type]
    assert ei.value.party == prover and ei.value.check.startswith("pi_enc_elg: ")


def test_honest_proof_verifies_and_roundtrips(honest: tuple[EncElgStatement, EncElgProof]) -> None:
    st, proof = honest
    pi_enc_elg.verify(SID, PROVER, ring_pedersen(0), paillier_key(PROVER).public, st, proof)
    pi_enc_elg.verify(SID, PROVER, ring_pedersen(0).params, paillier_key(PROVER).public, st, proof)
    data = proof.to_bytes()
    assert (
        EncElgProof.from_bytes(data, PROVER) == proof
        and EncElgProof.from_bytes(data, PROVER).to_bytes() == data
    )
    pi_enc_elg.verify(SID, PROVER, ring_pedersen(0), paillier_key(PROVER).public, st, data)


def test_public_key_prover_and_precomputed_nonce() -> None:
    key = paillier_key(PROVER)
    x = sample_signed(ELL)
    st, rho, b = _statement(int(x))
    (nonce,) = [key.public.sample_nonce()]
    proof = pi_enc_elg.prove(SID, PROVER, ring_pedersen(0).params, key.public, st, x, rho, b, nonce=nonce)
    pi_enc_elg.verify(SID, PROVER, ring_pedersen(0), key.public, st, proof)


def test_plaintext_out_of_range_is_rejected() -> None:
    """A cheater encrypting x with |x| ~ 2^(l+eps+8): z1 = alpha + e x leaves +-2^(l+eps)."""
    x = (mpz(1) << (ELL + EPSILON + 8)) + 12345
    st, rho, b = _statement(int(x % Q))
    key = paillier_key(PROVER)
    st = dataclasses.replace(st, c=key.encrypt(x, rho))
    with pytest.raises(BadInputError):
        pi_enc_elg.prove(SID, PROVER, ring_pedersen(0).params, key, st, x, rho, b)
    # the same computation without the prover's own range check
    proof = pi_enc_elg._prove_unchecked(SID, PROVER, ring_pedersen(0).params, key, st, x, rho, b, None)
    _rejects(st, proof, "z1 out of range")


def test_inconsistent_elgamal_commitment_is_rejected() -> None:
    x = sample_signed(ELL)
    st, rho, b = _statement(int(x))
    st_bad = dataclasses.replace(st, x=point_sum([st.x, point_mul_base(1)]))  # X commits to x + 1
    proof = pi_enc_elg.prove(SID, PROVER, ring_pedersen(0).params, paillier_key(PROVER), st_bad, x, rho, b)
    _rejects(st_bad, proof, "z1 G \\+ w A != Y \\+ e X")
    st_bad_b = dataclasses.replace(st, b=point_mul_base(b + 1))
    proof = pi_enc_elg.prove(SID, PROVER, ring_pedersen(0).params, paillier_key(PROVER), st_bad_b, x, rho, b)
    _rejects(st_bad_b, proof, "pi_enc_elg: ")


def test_ciphertext_of_another_plaintext_is_rejected() -> None:
    x = sample_signed(ELL)
    st, rho, b = _statement(int(x))
    st_bad = dataclasses.replace(st, c=paillier_key(PROVER).encrypt(x + 1, rho))
    proof = pi_enc_elg.prove(SID, PROVER, ring_pedersen(0).params, paillier_key(PROVER), st_bad, x, rho, b)
    _rejects(st_bad, proof, "enc\\(z1; z2\\) != D C\\^e")


def test_each_tampered_field_is_rejected(honest: tuple[EncElgStatement, EncElgProof]) -> None:
    st, proof = honest
    for name in FIELDS:
        v = getattr(proof, name)
        new: Any
        if isinstance(v, bytes):
            new = cbytes(point_mul_base(7)) if v != cbytes(point_mul_base(7)) else cbytes(point_mul_base(8))
        else:
            new = v + 1 if name != "w" else (v + 1) % Q
        kw: dict[str, Any] = {name: new}
        _rejects(st, dataclasses.replace(proof, **kw), "pi_enc_elg: ")


def test_each_changed_public_input_is_rejected(honest: tuple[EncElgStatement, EncElgProof]) -> None:
    st, proof = honest
    key = paillier_key(PROVER)
    changes: dict[str, Any] = {
        "c": key.encrypt(5, sample_unit(key.n)),
        "a": point_mul_base(3),
        "b": point_mul_base(4),
        "x": point_mul_base(5),
    }
    for name, v in changes.items():
        kw: dict[str, Any] = {name: v}
        _rejects(dataclasses.replace(st, **kw), proof, "pi_enc_elg: ")


def test_wrong_session_prover_or_verifier_is_rejected(honest: tuple[EncElgStatement, EncElgProof]) -> None:
    st, proof = honest
    _rejects(st, proof, "enc\\(z1; z2\\) != D C\\^e", sid=b"\x01" * 32)
    _rejects(st, proof, "enc\\(z1; z2\\) != D C\\^e", prover=2)
    _rejects(st, proof, "pi_enc_elg: ", aux=ring_pedersen(2))


def test_malformed_values_are_rejected(honest: tuple[EncElgStatement, EncElgProof]) -> None:
    st, proof = honest
    key = paillier_key(PROVER)
    nh = ring_pedersen(0).params.n
    bads: list[Any] = [0, key.nn, key.p * 3, -1, "x"]
    for bad in bads:
        _rejects(dataclasses.replace(st, c=bad), proof, "C not in Z|not an integer")
        _rejects(st, dataclasses.replace(proof, D=bad), "D not in Z|not an integer")
    for name in ("S", "T"):
        for bad2 in (0, nh, ring_pedersen(0).p):
            kw: dict[str, Any] = {name: bad2}
            _rejects(st, dataclasses.replace(proof, **kw), f"{name} not in Z")
    _rejects(st, dataclasses.replace(proof, z2=key.p), "z2 not in Z")
    _rejects(st, dataclasses.replace(proof, w=Q), "w out of range")
    _rejects(st, dataclasses.replace(proof, Y=b"\x02" + b"\xff" * 32), "Y is not a curve point")
    _rejects(st, dataclasses.replace(proof, Z=b"\x00" * 33), "Z is not a curve point")
    _rejects(dataclasses.replace(st, a=None), proof, "statement A is not a curve point")
    _rejects(st, proof.to_bytes()[:-1], "truncated")
    _rejects(st, proof.to_bytes() + b"\x00", "trailing bytes")
    _rejects(None, proof, "not a statement")
