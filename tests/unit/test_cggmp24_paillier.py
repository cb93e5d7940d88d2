"""Paillier for CGGMP24: CRT and public paths agree, signed decryption, homomorphisms, peer validation."""

from __future__ import annotations

import gmpy2
import pytest
from gmpy2 import mpz

from tests.unit.cggmp24_fixtures import fixture_safe_primes, paillier_key
from tss.cggmp24.errors import BadInputError, InvalidContributionError
from tss.cggmp24.paillier import (
    PaillierPublicKey,
    check_ciphertext,
    check_paillier_modulus,
    in_signed_range,
    is_unit,
    paillier_key_from_primes,
    precompute_nonces,
    sample_signed,
    sample_unit,
    to_signed,
)


def test_fixture_primes_are_safe_and_distinct() -> None:
    pr = fixture_safe_primes()
    assert len(pr) == 24 and len(set(pr)) == 24
    for p in pr[:3]:
        assert p.bit_length() == 1536 and p % 4 == 3
        assert gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


def test_encrypt_decrypt_signed_roundtrip_public_and_crt() -> None:
    sk = paillier_key(0)
    pk = sk.public
    assert sk.n.bit_length() == 3072
    for m in (0, 1, -1, sample_signed(1280), -sample_signed(256) - 5, pk.half, -pk.half):
        rho = sample_unit(sk.n)
        c = pk.encrypt(m, rho)
        assert c == sk.encrypt(m, rho)
        assert sk.decrypt(c) == m
    assert sk.decrypt(pk.encrypt(pk.half + 1, 1)) == -pk.half  # (-N/2, N/2]


def test_homomorphic_add_and_scalar_mul() -> None:
    sk = paillier_key(1)
    pk = sk.public
    a, b, k = sample_signed(300), sample_signed(300), sample_signed(256)
    ca, cb = pk.encrypt(a, sample_unit(pk.n)), pk.encrypt(b, sample_unit(pk.n))
    assert sk.decrypt(pk.add(ca, cb)) == a + b
    assert sk.decrypt(pk.mul(k, ca)) == k * a
    assert sk.decrypt(pk.mul(-3, ca)) == -3 * a


def test_precomputed_nonces_encrypt_like_fresh_randomness() -> None:
    sk = paillier_key(2)
    for key in (sk, sk.public):
        (nonce,) = precompute_nonces(key, 1)
        assert nonce.rho_n == gmpy2.powmod(nonce.rho, sk.n, sk.nn)
        c = key.encrypt_with_nonce(42, nonce)
        assert c == sk.public.encrypt(42, nonce.rho) and sk.decrypt(c) == 42
        assert str(int(nonce.rho)) not in repr(nonce)


def test_crt_exponentiation_matches_powmod() -> None:
    sk = paillier_key(0)
    b, e = sample_unit(sk.nn), sample_signed(3000)
    assert sk.pow_mod_nn(b, e) == gmpy2.powmod(b, e, sk.nn)
    assert sk.pow_mod_n(b, e) == gmpy2.powmod(b, e, sk.n)


def test_ciphertext_outside_z_star_n2_is_rejected() -> None:
    pk = paillier_key(0).public
    good = pk.encrypt(5, sample_unit(pk.n))
    assert check_ciphertext(pk, good, 3, "K") == good
    p = fixture_safe_primes()[0]
    for bad in (0, pk.nn, pk.nn + 1, -good, p * 17, pk.n, True, "12", 1.5, None):
        with pytest.raises(InvalidContributionError) as ei:
            check_ciphertext(pk, bad, 3, "K")
        assert ei.value.party == 3 and "K not in Z*_N^2" in ei.value.check
    sk = paillier_key(0)
    with pytest.raises(BadInputError):
        sk.decrypt(p * 17)


def test_peer_modulus_validation() -> None:
    n = paillier_key(0).n
    assert check_paillier_modulus(n, 2) == PaillierPublicKey(n)
    pr = fixture_safe_primes()
    with pytest.raises(InvalidContributionError, match="too short"):
        check_paillier_modulus(pr[0] * 3, 2)  # 1538 bits
    with pytest.raises(InvalidContributionError, match="too long"):
        check_paillier_modulus((n << 5200) | 1, 2)  # 8272 bits
    check_paillier_modulus((n << 5100) | 1, 2)  # 8172 bits: accepted by this check
    with pytest.raises(InvalidContributionError, match="even"):
        check_paillier_modulus(n + 1, 2)
    with pytest.raises(InvalidContributionError, match="square"):
        check_paillier_modulus(pr[0] * pr[0], 2)
    with pytest.raises(InvalidContributionError, match="not an integer"):
        check_paillier_modulus(str(n), 2)
    with pytest.raises(BadInputError):
        paillier_key_from_primes(pr[0], pr[0])
    with pytest.raises(BadInputError):
        paillier_key_from_primes(1019, 1031)


def test_signed_helpers() -> None:
    assert to_signed(mpz(10), 11) == -1 and to_signed(5, 11) == 5
    assert in_signed_range(1 << 8, 8) and in_signed_range(-(1 << 8), 8)
    assert not in_signed_range((1 << 8) + 1, 8) and not in_signed_range(True, 8)
    assert is_unit(2, 9) and not is_unit(3, 9) and not is_unit(9, 9) and not is_unit(0, 9)
