"""Security parameters of CGGMP24, as the ``cggmp24`` crate's ``SecurityLevel128``.

- ``ELL`` (l): bit length of the secrets a range proof covers (the curve order's size).
- ``EPSILON`` (epsilon): slack of the range proofs' masks.
- ``ELL_PRIME`` (l'): bit length of the MtA masks (beta, y in Pi^aff-g).
- ``M``: iterations of the binary-challenge proofs Pi^prm and Pi^mod.
- ``PRIME_BITS``: each of the four safe primes a party generates; ``MIN_MODULUS_BITS``: the least bit
  length accepted for a peer's Paillier modulus N and ring-Pedersen modulus N-hat.
"""

from __future__ import annotations

from typing import Final

from tss.secp256k1 import N as Q

ELL: Final = 256
EPSILON: Final = 512
ELL_PRIME: Final = 1280
M: Final = 128
KAPPA: Final = 256
PRIME_BITS: Final = 1536
MIN_MODULUS_BITS: Final = 3071

__all__ = ["ELL", "ELL_PRIME", "EPSILON", "KAPPA", "MIN_MODULUS_BITS", "PRIME_BITS", "M", "Q"]
