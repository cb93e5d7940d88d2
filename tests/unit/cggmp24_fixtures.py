"""TEST-ONLY CGGMP24 key material from the public fixture primes (never for real keys).

``fixture_safe_primes()`` loads ``fixtures/cggmp24_test_only_safe_primes.json``; party ``k`` (0..4) uses
primes ``4k, 4k+1`` for its Paillier key and ``4k+2, 4k+3`` for its ring-Pedersen parameters; 20..23 are
spares (``spare_prime(i)``).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from tss.cggmp24.paillier import PaillierSecretKey, paillier_key_from_primes
from tss.cggmp24.ring_pedersen import RingPedersenSecret, ring_pedersen_from_primes

FIXTURE = Path(__file__).parent / "fixtures" / "cggmp24_test_only_safe_primes.json"
PARTIES = 5


@cache
def fixture_safe_primes() -> tuple[int, ...]:
    doc = json.loads(FIXTURE.read_text())
    return tuple(int(h, 16) for h in doc["safe_primes_hex"])


def spare_prime(i: int) -> int:
    return fixture_safe_primes()[4 * PARTIES + i]


@cache
def paillier_key(k: int) -> PaillierSecretKey:
    pr = fixture_safe_primes()
    return paillier_key_from_primes(pr[4 * k], pr[4 * k + 1])


@cache
def ring_pedersen(k: int) -> RingPedersenSecret:
    pr = fixture_safe_primes()
    return ring_pedersen_from_primes(pr[4 * k + 2], pr[4 * k + 3])
