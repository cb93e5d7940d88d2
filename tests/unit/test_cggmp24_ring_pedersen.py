"""Ring-Pedersen parameters: table commitments equal plain ones; peer parameter validation."""

from __future__ import annotations

import gmpy2
import pytest

from tests.unit.cggmp24_fixtures import paillier_key, ring_pedersen
from tss.cggmp24.errors import InvalidContributionError
from tss.cggmp24.paillier import sample_signed
from tss.cggmp24.ring_pedersen import FixedBaseTable, check_ring_pedersen_params, multi_exp_fixed


def test_params_shape() -> None:
    sec = ring_pedersen(0)
    prm = sec.params
    assert prm.n.bit_length() >= 3071
    assert prm.s == gmpy2.powmod(prm.t, sec.lam, prm.n)
    assert gmpy2.jacobi(prm.t, sec.p) == 1 and gmpy2.jacobi(prm.t, sec.q) == 1  # t is a QR
    assert prm.n != paillier_key(0).n


def test_table_commit_equals_plain_commit() -> None:
    prm = ring_pedersen(1).params
    for bits in (0, 1, 8, 256, 1280, 3900, 6900):
        x, y = sample_signed(bits), sample_signed(bits + 3)
        assert prm.commit(x, y) == prm.commit_plain(x, y)
        assert prm.commit(-x, y) == prm.commit_plain(-x, y)
    assert prm.commit(0, 0) == 1


def test_secret_commit_reduces_exponents() -> None:
    sec = ring_pedersen(2)
    x, y = sample_signed(4000), sample_signed(4000)
    assert sec.commit(x, y) == sec.params.commit_plain(x, y)


def test_multi_exp_fixed_three_bases() -> None:
    n = ring_pedersen(0).params.n
    gs = [3, 5, 7]
    es = [sample_signed(500) for _ in gs]
    want = 1
    for g, e in zip(gs, es, strict=True):
        want = want * gmpy2.powmod(g, e, n) % n
    assert multi_exp_fixed([(FixedBaseTable(g, n), e) for g, e in zip(gs, es, strict=True)], n) == want


def test_peer_parameter_validation() -> None:
    prm = ring_pedersen(0).params
    n, s, t = prm.n, prm.s, prm.t
    assert check_ring_pedersen_params(n, s, t, 1) == prm
    cases = [
        ((n >> 10) | 1, s % (n >> 10), t % (n >> 10), "too short"),
        (n + 1, s, t, "even"),
        ((n << 5200) | 1, s, t, "too long"),
        (n, 0, t, "s not in Z"),
        (n, s, n, "t not in Z"),
        (n, s, ring_pedersen(0).p, "t not in Z"),
        (n, 1, t, "+-1"),
        (n, s, n - 1, "+-1"),
        (n, t, t, "s == t"),
        (n, str(s), t, "not integers"),
    ]
    for nn, ss, tt, what in cases:
        with pytest.raises(InvalidContributionError, match=what.replace("+", r"\+")) as ei:
            check_ring_pedersen_params(nn, ss, tt, 1)
        assert ei.value.party == 1
