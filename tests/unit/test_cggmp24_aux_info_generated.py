"""Aux-info for real: two parties generate their eight 1536-bit safe primes in worker processes (no
fixture), run the whole aux-info protocol (Pi^prm, Pi^mod, Pi^fac) and agree on every party's public
Paillier and ring-Pedersen keys. Slow by nature (tens of seconds), so it is the one test that does it."""

from __future__ import annotations

import secrets

import pytest

from tests.unit.cggmp24_harness import run_network
from tss.cggmp24 import aux_info
from tss.cggmp24.params import MIN_MODULUS_BITS
from tss.cggmp24.safe_prime import generate_safe_primes_parallel, is_safe_prime

pytestmark = pytest.mark.slow


def test_aux_info_with_freshly_generated_primes() -> None:
    primes = generate_safe_primes_parallel(8, workers=2)
    assert len(set(primes)) == 8 and all(p.bit_length() == 1536 and is_safe_prime(p) for p in primes)
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for i in range(2):
        p, q, p_hat, q_hat = primes[4 * i : 4 * i + 4]
        states[i], msgs = aux_info.start_aux_info(sid, i, 2, (p, q, p_hat, q_hat))
        first += msgs
    out = run_network(states, first, aux_info.aux_info_round)
    for i, s in out.items():
        assert s.phase == "done", (i, s.phase, s.blame)
        r = s.result
        assert r is not None
        assert r.paillier.n.bit_length() >= MIN_MODULUS_BITS
        other = out[1 - i].result
        assert other is not None
        assert r.paillier_keys[1 - i].n == other.paillier.n
        assert r.ring_pedersen[1 - i] == other.own_ring_pedersen.params
