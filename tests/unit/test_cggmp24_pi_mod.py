"""Pi^mod (Paillier-Blum modulus): honest proofs verify; three-prime and many-small-factor moduli, tampered
fields, wrong session or prover, fewer iterations and malformed encodings are rejected."""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import gmpy2
import pytest
from gmpy2 import mpz

from tests.unit.cggmp24_fixtures import paillier_key, spare_prime
from tss.cggmp24 import pi_mod
from tss.cggmp24.errors import BadInputError, InvalidProofError
from tss.cggmp24.params import M
from tss.cggmp24.pi_mod import ModProof

SID = b"pi_mod test session"


@pytest.fixture(scope="module")
def honest() -> tuple[mpz, ModProof]:
    key = paillier_key(0)
    return key.n, pi_mod.prove(SID, 1, key)


def _rejects(n: object, proof: object, match: str, sid: bytes = SID, prover: int = 1) -> None:
    with pytest.raises(InvalidProofError, match=match) as ei:
        pi_mod.verify(sid, prover, n, proof)  # type: ignore[arg-type]
    assert ei.value.party == prover and ei.value.check.startswith("pi_mod: ")


def _cheating_proof(primes: list[mpz]) -> tuple[mpz, ModProof]:
    """The best a prover can do for a modulus that is not p*q: honest answers where a residue exists."""
    n = mpz(1)
    for p in primes:
        n *= p
    while True:
        w = mpz(secrets.randbelow(int(n)))
        if gmpy2.jacobi(w, n) == -1:
            break
    ys = pi_mod.challenge(SID, 1, n, w)

    def crt(residues: list[mpz]) -> mpz:
        out = mpz(0)
        for p, r in zip(primes, residues, strict=True):
            m = n // p
            out = (out + r * m * gmpy2.invert(m, p)) % n
        return out

    xs, as_, bs, zs = [], [], [], []
    for y in ys:
        a = b = 0
        x = mpz(1)
        for a_, b_ in ((0, 0), (0, 1), (1, 0), (1, 1)):
            v = mpz(y) * (w if b_ else 1) * (-1 if a_ else 1) % n
            if all(gmpy2.legendre(v, p) == 1 for p in primes):
                x = crt([gmpy2.powmod(v % p, ((p + 1) // 4) ** 2 % (p - 1), p) for p in primes])
                a, b = a_, b_
                break
        xs.append(x)
        as_.append(a)
        bs.append(b)
        zs.append(crt([gmpy2.powmod(y % p, gmpy2.invert(n, p - 1), p) for p in primes]))
    return n, ModProof(w, tuple(xs), tuple(as_), tuple(bs), tuple(zs))


def test_honest_proof_verifies_and_roundtrips(honest: tuple[mpz, ModProof]) -> None:
    n, proof = honest
    pi_mod.verify(SID, 1, n, proof)
    data = proof.to_bytes()
    assert ModProof.from_bytes(data, 1) == proof and ModProof.from_bytes(data, 1).to_bytes() == data
    pi_mod.verify(SID, 1, n, data)


def test_three_prime_modulus_is_rejected() -> None:
    n, proof = _cheating_proof([mpz(spare_prime(0)), mpz(spare_prime(1)), mpz(spare_prime(2))])
    _rejects(n, proof, "x\\^4 != ")


def test_many_small_factors_modulus_is_rejected() -> None:
    """BitForge-style: N a product of sixteen 200-bit primes (3 mod 4)."""
    primes: list[mpz] = []
    while len(primes) < 16:
        p = gmpy2.next_prime(mpz(secrets.randbits(200)) | (mpz(1) << 199))
        if p % 4 == 3 and p not in primes:
            primes.append(p)
    n, proof = _cheating_proof(primes)
    _rejects(n, proof, "x\\^4 != ")


def test_prime_or_even_modulus_is_rejected(honest: tuple[mpz, ModProof]) -> None:
    _, proof = honest
    _rejects(mpz(spare_prime(0)), proof, "N is prime")
    _rejects(paillier_key(0).n + 1, proof, "N is even")
    _rejects("N", proof, "not an integer")


def test_honest_prover_refuses_a_non_blum_key() -> None:
    from tss.cggmp24.paillier import PaillierSecretKey

    with pytest.raises(BadInputError):
        pi_mod.prove(SID, 1, PaillierSecretKey(mpz(13), mpz(spare_prime(0))))


def test_each_tampered_field_is_rejected(honest: tuple[mpz, ModProof]) -> None:
    n, proof = honest
    _rejects(n, dataclasses.replace(proof, w=(proof.w + 1) % n), "pi_mod")
    for field in ("x", "z"):
        vals = list(getattr(proof, field))
        vals[7] = (vals[7] + 1) % n
        kw: dict[str, Any] = {field: tuple(vals)}
        _rejects(n, dataclasses.replace(proof, **kw), "iteration 7")
    for field in ("a", "b"):
        vals = list(getattr(proof, field))
        vals[7] ^= 1
        kw2: dict[str, Any] = {field: tuple(vals)}
        _rejects(n, dataclasses.replace(proof, **kw2), "x\\^4 != .*iteration 7")


def test_wrong_session_or_prover_is_rejected(honest: tuple[mpz, ModProof]) -> None:
    n, proof = honest
    _rejects(n, proof, "z\\^N != y", sid=b"another session")
    _rejects(n, proof, "z\\^N != y", prover=2)


def test_fewer_iterations_are_rejected(honest: tuple[mpz, ModProof]) -> None:
    n, proof = honest
    short = ModProof(proof.w, proof.x[:-1], proof.a[:-1], proof.b[:-1], proof.z[:-1])
    assert len(short.x) == M - 1
    _rejects(n, short, "wrong number of iterations")
    _rejects(n, short.to_bytes(), "malformed encoding")


def test_malformed_values_are_rejected(honest: tuple[mpz, ModProof]) -> None:
    n, proof = honest
    p = paillier_key(0).p
    bad_w: list[tuple[Any, str]] = [
        (0, "w not in Z"),
        (p, "w not in Z"),
        (n, "w not in Z"),
        (1.5, "not an integer"),
    ]
    for w, why in bad_w:
        _rejects(n, dataclasses.replace(proof, w=w), why)
    xs = list(proof.x)
    xs[0] = n + xs[0]
    _rejects(n, dataclasses.replace(proof, x=tuple(xs)), "out of range")
    a = list(proof.a)
    a[0] = 2
    _rejects(n, dataclasses.replace(proof, a=tuple(a)), "not a bit")
    data = bytearray(proof.to_bytes())
    _rejects(n, bytes(data[:-1]), "truncated")
    _rejects(n, bytes(data) + b"\x01", "trailing bytes")
    _rejects(n, 42, "not a proof")
