"""``tss.secp256k1.ecdh`` (libsecp256k1's constant-time ``secp256k1_ecdh``) against its definition."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from tss.chilldkg import encpedpop
from tss.secp256k1 import N, cbytes, cpoint, ecdh, point_mul, point_mul_base, scalar_to_bytes


def test_ecdh_is_sha256_of_the_compressed_shared_point() -> None:
    for _ in range(20):
        a, b = secrets.randbelow(N - 1) + 1, secrets.randbelow(N - 1) + 1
        pub_b = cbytes(point_mul_base(b))
        expected = hashlib.sha256(cbytes(point_mul(cpoint(pub_b), a))).digest()
        assert ecdh(scalar_to_bytes(a), pub_b) == expected
        assert ecdh(scalar_to_bytes(a), pub_b) == ecdh(scalar_to_bytes(b), cbytes(point_mul_base(a)))


@pytest.mark.parametrize(
    "seckey, pubkey",
    [
        (b"\x00" * 32, cbytes(point_mul_base(5))),  # zero scalar
        (N.to_bytes(32, "big"), cbytes(point_mul_base(5))),  # out of range
        (b"\x01" * 31, cbytes(point_mul_base(5))),  # short
        (b"\x01" * 32, b"\x02" + b"\xff" * 32),  # not on the curve
        (b"\x01" * 32, b"\x04" + b"\x01" * 64),  # uncompressed: not our encoding
    ],
)
def test_ecdh_refuses_bad_input(seckey: bytes, pubkey: bytes) -> None:
    with pytest.raises(ValueError):
        ecdh(seckey, pubkey)


def test_encpedpop_pads_use_the_constant_time_ecdh(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []

    def spy(seckey: bytes, pubkey: bytes) -> bytes:
        calls.append(pubkey)
        return ecdh(seckey, pubkey)

    monkeypatch.setattr(encpedpop, "ecdh_libsecp256k1", spy)
    pub = cbytes(point_mul_base(7))
    encpedpop.ecdh(scalar_to_bytes(3), cbytes(point_mul_base(3)), pub, b"ctx", sending=True)
    assert calls == [pub]


def test_point_mul_secret_equals_point_mul() -> None:
    """The constant-time multiplication (for secret scalars) gives the same point as the variable-time one,
    at the edges too (0, 1, N-1, N, a point at infinity)."""
    import secrets as _secrets

    from tss.secp256k1 import N, point_mul, point_mul_base, point_mul_secret

    p = point_mul_base(_secrets.randbelow(N - 1) + 1)
    for k in [0, 1, 2, N - 1, N, N + 5, *(_secrets.randbelow(N) for _ in range(50))]:
        a, b = point_mul(p, k), point_mul_secret(p, k)
        assert (a is None and b is None) or (a is not None and b is not None and a.format() == b.format()), k
    assert point_mul_secret(None, 7) is None
