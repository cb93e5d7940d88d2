"""TEST-ONLY trusted Shamir dealer for FROST key material.

Never use this in the product: a dealer sees the whole secret key. mpc-wallet generates FROST keys with
ChillDKG (``tss.chilldkg``), where no party ever holds the key. This module only exists so the FROST
signing tests and benchmarks can get valid t-of-n key material quickly and reproducibly.

Participant ``id`` (0-based, as in BIP-445) gets ``f(id + 1)`` for a random polynomial ``f`` of degree
``t - 1`` whose constant term is the secret key.
"""

from __future__ import annotations

import random
import secrets
from typing import NamedTuple

from tss.secp256k1 import N, cbytes, point_mul_base, scalar_to_bytes


class DealtKey(NamedTuple):
    n: int
    t: int
    thresh_pk: bytes  # 33-byte compressed
    secshares: list[bytes]  # secshares[id], 32 bytes each
    pubshares: list[bytes]  # pubshares[id], 33 bytes each
    secret: int  # the whole key: tests only


def _rand_scalar(rng: random.Random | None) -> int:
    while True:
        x = rng.randrange(1, N) if rng is not None else secrets.randbelow(N)
        if x != 0:
            return x


def deal(n: int, t: int, rng: random.Random | None = None, secret: int | None = None) -> DealtKey:
    """Shamir-share a (random or given) secret key ``t``-of-``n``. Pass ``rng`` for reproducible keys."""
    if not 1 <= t <= n:
        raise ValueError("need 1 <= t <= n")
    while True:
        constant = secret if secret is not None else _rand_scalar(rng)
        coeffs = [constant] + [_rand_scalar(rng) for _ in range(t - 1)]
        shares = []
        for i in range(n):
            x = i + 1
            y = 0
            for c in reversed(coeffs):
                y = (y * x + c) % N
            shares.append(y)
        if all(shares):  # a zero share is not a valid secshare; redraw (probability ~n/2^256)
            break
    thresh_pk = cbytes(point_mul_base(coeffs[0]))
    pubshares = [cbytes(point_mul_base(s)) for s in shares]
    return DealtKey(n, t, thresh_pk, [scalar_to_bytes(s) for s in shares], pubshares, coeffs[0])
