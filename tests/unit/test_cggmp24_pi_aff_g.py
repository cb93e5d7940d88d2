"""Pi^aff-g (the MtA check): honest proofs verify (verifier with and without its secrets); MtA values out of
range, an inconsistent D, Y or X, tampered fields, a wrong session or prover and malformed values are
rejected."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import pytest
from gmpy2 import mpz

from tests.unit.cggmp24_fixtures import paillier_key, ring_pedersen
from tss.cggmp24 import pi_aff_g
from tss.cggmp24.errors import BadInputError, InvalidProofError
from tss.cggmp24.paillier import sample_signed, sample_unit
from tss.cggmp24.params import ELL, ELL_PRIME, EPSILON, Q
from tss.cggmp24.pi_aff_g import AffGProof, AffGStatement
from tss.secp256k1 import cbytes, point_mul_base

SID = b"aff-g session"
I, J = 2, 3  # prover i, verifier j
FIELDS = [f.name for f in dataclasses.fields(AffGProof)]


def _witness(x: int, y: int) -> tuple[AffGStatement, mpz, mpz]:
    ki, kj = paillier_key(I), paillier_key(J)
    c = kj.public.encrypt(sample_signed(ELL), sample_unit(kj.n))  # the verifier's K_j
    rho, rho_y = sample_unit(kj.n), sample_unit(ki.n)
    d = kj.public.add(kj.public.mul(x, c), kj.public.encrypt(y, rho))
    return AffGStatement(c, d, ki.encrypt(y, rho_y), point_mul_base(x)), rho, rho_y


def _prove(st: AffGStatement, x: int, y: int, rho: int, rho_y: int, checked: bool = True) -> AffGProof:
    aux, kj, ki = ring_pedersen(J).params, paillier_key(J).public, paillier_key(I)
    if checked:
        return pi_aff_g.prove(SID, I, aux, kj, ki, st, x, y, rho, rho_y)
    return pi_aff_g._prove_unchecked(SID, I, aux, kj, ki, st, x, y, rho, rho_y, None, None)


@pytest.fixture(scope="module")
def honest() -> tuple[AffGStatement, AffGProof]:
    x, y = secrets.randbelow(Q), int(sample_signed(ELL_PRIME))
    st, rho, rho_y = _witness(x, y)
    return st, _prove(st, x, y, rho, rho_y)


def _rejects(
    st: object, proof: object, match: str, sid: bytes = SID, prover: int = I, aux: Any = None
) -> None:
    aux = ring_pedersen(J) if aux is None else aux
    with pytest.raises(InvalidProofError, match=match) as ei:
        pi_aff_g.verify(sid, prover, aux, paillier_key(J), paillier_key(I).public, st, proof)  # type: ignore[arg-type]
    assert ei.value.party == prover and ei.value.check.startswith("pi_aff_g: ")


def test_honest_proof_verifies_and_roundtrips(honest: tuple[AffGStatement, AffGProof]) -> None:
    st, proof = honest
    pi_aff_g.verify(SID, I, ring_pedersen(J), paillier_key(J), paillier_key(I).public, st, proof)
    pi_aff_g.verify(
        SID, I, ring_pedersen(J).params, paillier_key(J).public, paillier_key(I).public, st, proof
    )
    data = proof.to_bytes()
    assert AffGProof.from_bytes(data, I) == proof and AffGProof.from_bytes(data, I).to_bytes() == data
    pi_aff_g.verify(SID, I, ring_pedersen(J), paillier_key(J), paillier_key(I).public, st, data)


def test_precomputed_nonces() -> None:
    x, y = secrets.randbelow(Q), int(sample_signed(ELL_PRIME))
    st, rho, rho_y = _witness(x, y)
    nj, ni = paillier_key(J).public.sample_nonce(), paillier_key(I).sample_nonce()
    proof = pi_aff_g.prove(
        SID, I, ring_pedersen(J).params, paillier_key(J).public, paillier_key(I), st, x, y, rho, rho_y, nj, ni
    )
    pi_aff_g.verify(SID, I, ring_pedersen(J), paillier_key(J), paillier_key(I).public, st, proof)


def test_mta_y_out_of_range_is_rejected() -> None:
    """Alpha-Rays: a y beyond +-2^(l'+eps) (the mask that hides x * k) makes z2 leave its range."""
    x, y = secrets.randbelow(Q), int((mpz(1) << (ELL_PRIME + EPSILON + 8)) + 99)
    st, rho, rho_y = _witness(x, y)
    with pytest.raises(BadInputError):
        _prove(st, x, y, rho, rho_y)
    _rejects(st, _prove(st, x, y, rho, rho_y, checked=False), "z2 out of range")


def test_mta_x_out_of_range_is_rejected() -> None:
    """An x beyond +-2^(l+eps) (e.g. x = k * 2^600) makes z1 leave its range."""
    x, y = int(secrets.randbelow(Q) << 600), int(sample_signed(ELL_PRIME))
    st, rho, rho_y = _witness(x, y)
    with pytest.raises(BadInputError):
        _prove(st, x, y, rho, rho_y)
    _rejects(st, _prove(st, x, y, rho, rho_y, checked=False), "z1 out of range")


def test_inconsistent_statement_is_rejected() -> None:
    x, y = secrets.randbelow(Q), int(sample_signed(ELL_PRIME))
    st, rho, rho_y = _witness(x, y)
    kj, ki = paillier_key(J).public, paillier_key(I)
    bad_d = dataclasses.replace(st, d=kj.add(st.d, kj.encrypt(1, 1)))
    _rejects(bad_d, _prove(bad_d, x, y, rho, rho_y), "A \\(\\+\\) e \\(\\.\\) D")
    bad_y = dataclasses.replace(st, y=ki.encrypt(y + 1, rho_y))
    _rejects(bad_y, _prove(bad_y, x, y, rho, rho_y), "B_y \\(\\+\\) e \\(\\.\\) Y")
    bad_x = dataclasses.replace(st, x=point_mul_base(x + 1))
    _rejects(bad_x, _prove(bad_x, x, y, rho, rho_y), "z1 G != B_x \\+ e X")


def test_each_tampered_field_is_rejected(honest: tuple[AffGStatement, AffGProof]) -> None:
    st, proof = honest
    for name in FIELDS:
        v = getattr(proof, name)
        new: Any = cbytes(point_mul_base(11)) if isinstance(v, bytes) else v + 1
        kw: dict[str, Any] = {name: new}
        _rejects(st, dataclasses.replace(proof, **kw), "pi_aff_g: ")


def test_each_changed_public_input_is_rejected(honest: tuple[AffGStatement, AffGProof]) -> None:
    st, proof = honest
    kj, ki = paillier_key(J).public, paillier_key(I).public
    changes: dict[str, Any] = {
        "c": kj.encrypt(1, 1),
        "d": kj.encrypt(2, 1),
        "y": ki.encrypt(3, 1),
        "x": point_mul_base(4),
    }
    for name, v in changes.items():
        kw: dict[str, Any] = {name: v}
        _rejects(dataclasses.replace(st, **kw), proof, "pi_aff_g: ")


def test_wrong_session_prover_or_verifier_is_rejected(honest: tuple[AffGStatement, AffGProof]) -> None:
    st, proof = honest
    _rejects(st, proof, "A \\(\\+\\) e \\(\\.\\) D", sid=b"other session")
    _rejects(st, proof, "A \\(\\+\\) e \\(\\.\\) D", prover=J)
    _rejects(st, proof, "pi_aff_g: ", aux=ring_pedersen(4))


def test_malformed_values_are_rejected(honest: tuple[AffGStatement, AffGProof]) -> None:
    st, proof = honest
    kj, ki = paillier_key(J), paillier_key(I)
    nh = ring_pedersen(J).params.n
    for name in ("c", "d"):
        for bad in (0, kj.nn, kj.p * 7, "1"):
            kw: dict[str, Any] = {name: bad}
            _rejects(dataclasses.replace(st, **kw), proof, f"{name.upper()} not in Z|not an integer")
    _rejects(dataclasses.replace(st, y=ki.q * 5), proof, "Y not in Z")
    _rejects(dataclasses.replace(st, x=None), proof, "statement X is not a curve point")
    cases: list[tuple[str, Any, str]] = [
        ("A", kj.p, "A not in Z"),
        ("By", ki.nn, "B_y not in Z"),
        ("E", nh, "E not in Z"),
        ("S", 0, "S not in Z"),
        ("F", ring_pedersen(J).q, "F not in Z"),
        ("T", -5, "T not in Z"),
        ("w", kj.p, "w not in Z"),
        ("wy", ki.n, "w_y not in Z"),
        ("z1", (mpz(1) << (ELL + EPSILON)) + 1, "z1 out of range"),
        ("z2", -(mpz(1) << (ELL_PRIME + EPSILON)) - 1, "z2 out of range"),
        ("z3", 1.0, "not an integer"),
        ("Bx", b"\x05" * 33, "B_x is not a curve point"),
    ]
    for name, bad2, why in cases:
        kw2: dict[str, Any] = {name: bad2}
        _rejects(st, dataclasses.replace(proof, **kw2), why)
    _rejects(st, proof.to_bytes()[:-2], "truncated")
    _rejects(st, b"", "truncated")
    _rejects(st, proof.to_bytes() + b"\x00", "trailing bytes")
