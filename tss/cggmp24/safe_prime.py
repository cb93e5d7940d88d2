"""Safe primes ``p = 2q + 1`` (``q`` prime) for CGGMP24's Paillier and ring-Pedersen moduli.

Public API:

- ``generate_safe_prime(bits=PRIME_BITS, randbits=secrets.randbits) -> int``: a uniformly chosen safe
  prime of exactly ``bits`` bits with ``p = 3 (mod 4)`` (so products of two are Blum integers), the two
  top bits set (so the product of two has exactly ``2 * bits`` bits). Pure: no I/O; the caller may pass
  its own ``randbits`` (tests use a seeded one).
- ``is_safe_prime(p) -> bool``: ``p`` and ``(p - 1) / 2`` both pass gmpy2's probable-prime test.
- ``generate_safe_primes_parallel(count, bits=PRIME_BITS, workers=None) -> list[int]``: ``count`` safe
  primes generated in worker processes (gmpy2 holds the GIL, so threads do not help). This one starts
  processes; call it from a service, not from the pure protocol code.

Method: draw a random odd ``q`` of ``bits - 1`` bits (top two set), then sieve the window
``q + 2k, k < _WALK`` at once: for every odd prime ``r`` below ``SIEVE_LIMIT`` strike the ``k`` with
``r | q + 2k`` and those with ``r | 2(q + 2k) + 1`` (two arithmetic progressions of step ``r``, struck by
slice assignment). Survivors get one cheap Fermat test base 2 on ``q``, then on
``p``, and only then the full Miller-Rabin (gmpy2.is_prime, 25 rounds) on both. ``p = 3 (mod 4)`` follows
from ``q`` odd (``p = 2q + 1`` with ``q`` odd is ``3 mod 4``).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import gmpy2
from gmpy2 import mpz

from tss.cggmp24.params import PRIME_BITS

SIEVE_LIMIT = 1 << 18
_WALK = 1 << 16  # candidates q + 2k sieved per random start before drawing a fresh start
MR_ROUNDS = 25


def _small_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * limit
    sieve[0:2] = b"\x00\x00"
    for i in range(2, int(limit**0.5) + 1):
        if sieve[i]:
            sieve[i * i :: i] = bytearray(len(range(i * i, limit, i)))
    return [i for i in range(3, limit) if sieve[i]]  # odd primes only (2 is excluded by construction)


_PRIMES = _small_primes(SIEVE_LIMIT)
_HALVES = [(r - 1) // 2 for r in _PRIMES]


def is_safe_prime(p: int) -> bool:
    """``p`` is a probable safe prime (``p`` and ``(p - 1) / 2`` prime, MR_ROUNDS rounds each)."""
    p = mpz(p)
    if p < 5 or p % 2 == 0:
        return False
    q = (p - 1) // 2
    return bool(gmpy2.is_prime(q, MR_ROUNDS)) and bool(gmpy2.is_prime(p, MR_ROUNDS))


def generate_safe_prime(bits: int = PRIME_BITS, randbits: Callable[[int], int] = secrets.randbits) -> int:
    """A random safe prime of exactly ``bits`` bits (top two bits set, ``p = 3 mod 4``)."""
    if bits < 16:
        raise ValueError("safe primes below 16 bits are not supported")
    two = mpz(2)
    primes = [r for r in _PRIMES if r.bit_length() < bits - 2]
    while True:
        # q has bits-1 bits with its two top bits set, and is odd; candidates are q + 2k, k in [0, _WALK).
        q = mpz(randbits(bits - 1)) | (mpz(3) << (bits - 3)) | 1
        alive = bytearray(b"\x01") * _WALK
        for r in primes:
            qr = int(q % r)
            inv2 = (r + 1) >> 1
            for target in (0, (r - 1) >> 1):  # q + 2k = 0 (r | q) or q + 2k = (r - 1) / 2 (r | 2q + 1)
                k0 = ((target - qr) * inv2) % r
                if k0 < _WALK:
                    alive[k0::r] = bytes((_WALK - 1 - k0) // r + 1)
        k = alive.find(1)
        while k >= 0:
            cand = q + 2 * k
            if cand.bit_length() != bits - 1:
                break
            if gmpy2.powmod(two, cand - 1, cand) == 1:
                p = 2 * cand + 1
                if gmpy2.powmod(two, p - 1, p) == 1 and is_safe_prime(p):
                    return int(p)
            k = alive.find(1, k + 1)


def _worker(bits: int) -> int:
    return generate_safe_prime(bits)


def generate_safe_primes_parallel(
    count: int, bits: int = PRIME_BITS, workers: int | None = None
) -> list[int]:
    """``count`` independent safe primes, generated in up to ``workers`` processes (default: CPU count)."""
    if count < 0:
        raise ValueError("count must be non-negative")
    if count == 0:
        return []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_worker, [bits] * count))


__all__ = [
    "MR_ROUNDS",
    "SIEVE_LIMIT",
    "generate_safe_prime",
    "generate_safe_primes_parallel",
    "is_safe_prime",
]
