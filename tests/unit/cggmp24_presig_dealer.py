"""TEST-ONLY: presignatures made by a trusted dealer who knows the key shares, with exactly the algebra
presigning produces (Gamma = gamma*G, delta = k*gamma, k~_j = k_j/delta, chi~_j = chi_j/delta), so the
signing round can be tested for many signer sets without the Paillier machinery. Never use outside tests."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from tss.cggmp24.keygen import lagrange_coefficient
from tss.cggmp24.signing import Presignature, PresignatureCommitments
from tss.secp256k1 import N as Q
from tss.secp256k1 import cbytes, point_mul, point_mul_base


def _split(total: int, count: int) -> list[int]:
    parts = [secrets.randbelow(Q) for _ in range(count - 1)]
    return [*parts, (total - sum(parts)) % Q]


def deal_presignatures(
    secrets_by_party: Mapping[int, int],
    signers: Sequence[int],
    public_key: bytes,
    shift: int = 0,
    session_id: bytes | None = None,
) -> dict[int, Presignature]:
    signers = tuple(sorted(signers))
    x = (sum(lagrange_coefficient(signers, j) * secrets_by_party[j] for j in signers) + shift) % Q
    k, gamma = secrets.randbelow(Q - 1) + 1, secrets.randbelow(Q - 1) + 1
    delta = k * gamma % Q
    big_gamma = point_mul_base(gamma)
    ks = _split(k, len(signers))
    chis = _split(k * x % Q, len(signers))
    inv = pow(delta, -1, Q)
    kt = [kj * inv % Q for kj in ks]
    ct = [cj * inv % Q for cj in chis]
    pub = PresignatureCommitments(
        gamma=cbytes(big_gamma),
        signers=signers,
        deltas=tuple(cbytes(point_mul(big_gamma, v)) for v in kt),
        s_points=tuple(cbytes(point_mul(big_gamma, v)) for v in ct),
        shift=shift,
        public_key=public_key,
        session_id=session_id or secrets.token_bytes(32),
    )
    return {j: Presignature(j, kt[n], ct[n], pub) for n, j in enumerate(signers)}
