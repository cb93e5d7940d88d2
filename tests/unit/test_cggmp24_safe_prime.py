"""Safe-prime generation (sieve + Miller-Rabin)."""

from __future__ import annotations

import random

import gmpy2
import pytest

from tss.cggmp24.safe_prime import generate_safe_prime, generate_safe_primes_parallel, is_safe_prime


def test_small_safe_primes_are_safe_and_sized() -> None:
    rng = random.Random(7)
    for bits in (16, 64, 256):
        p = generate_safe_prime(bits, rng.getrandbits)
        assert p.bit_length() == bits and p >> (bits - 2) == 3 and p % 4 == 3
        assert gmpy2.is_prime(p) and gmpy2.is_prime((p - 1) // 2)


def test_is_safe_prime() -> None:
    assert is_safe_prime(23) and is_safe_prime(2039)
    assert not is_safe_prime(13) and not is_safe_prime(25) and not is_safe_prime(2) and not is_safe_prime(1)


def test_parallel_generation() -> None:
    ps = generate_safe_primes_parallel(2, 512, workers=2)
    assert len(ps) == 2 and all(is_safe_prime(p) and p.bit_length() == 512 for p in ps)


@pytest.mark.slow
def test_real_1536_bit_safe_prime() -> None:
    p = generate_safe_prime()
    assert p.bit_length() == 1536 and p % 4 == 3 and is_safe_prime(p)
