"""t-of-n key refresh (tss.cggmp24.key_refresh): the public key, t, n and chain code stay, every share
and public share changes, new shares sign, old and new shares mixed cannot sign, and a dealer that
sends a bad value is blamed."""

from __future__ import annotations

import itertools
import secrets

import pytest

from tests.unit.cggmp24_harness import body_of, replace_body, run_network, slot_of
from tests.unit.cggmp24_presig_dealer import deal_presignatures
from tests.unit.test_cggmp24_keygen import check_shares, run_keygen
from tests.unit.test_cggmp24_signing import assert_valid_ecdsa, sign_with
from tss.cggmp24 import key_refresh
from tss.cggmp24.errors import BadInputError
from tss.cggmp24.keygen import DealingState, KeyShare, SlotCode, lagrange_coefficient
from tss.cggmp24.rounds import Message
from tss.secp256k1 import N as Q
from tss.secp256k1 import cbytes, point_mul_base


def keygen_shares(t: int, n: int) -> list[KeyShare]:
    out = run_keygen(t, n)
    return [out[i].result for i in range(n)]  # type: ignore[misc]


def refresh(shares: list[KeyShare], filt: object = None) -> dict[int, DealingState]:
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for s in shares:
        states[s.index], msgs = key_refresh.refresh_start(sid, s)
        first += msgs
    return run_network(states, first, key_refresh.refresh_round, filt=filt)  # type: ignore[arg-type]


@pytest.mark.parametrize(("t", "n"), [(2, 2), (2, 3), (3, 5), (5, 5)])
def test_refresh_keeps_the_key_and_changes_every_share(t: int, n: int) -> None:
    old = keygen_shares(t, n)
    out = refresh(old)
    assert all(s.phase == "done" and not s.blame for s in out.values())
    new = [out[i].result for i in range(n)]
    check_shares(new, t, n)  # type: ignore[arg-type]
    for o, nw in zip(old, new, strict=True):
        assert nw is not None
        assert (nw.public_key, nw.t, nw.n, nw.chain_code) == (o.public_key, o.t, o.n, o.chain_code)
        assert nw.secret.value() != o.secret.value()
        assert nw.public_shares[o.index] != o.public_shares[o.index]


def test_new_shares_sign_and_mixed_shares_cannot() -> None:
    t, n = 3, 4
    old = keygen_shares(t, n)
    new: list[KeyShare] = [s.result for s in refresh(old).values()]  # type: ignore[misc]
    pk = old[0].public_key
    subset = (0, 1, 3)
    h = secrets.token_bytes(32)
    presigs = deal_presignatures({s.index: s.secret.value() for s in new}, subset, pk)
    sig = sign_with(presigs, h)[0].signature
    assert sig is not None
    assert_valid_ecdsa(pk, h, sig)
    # every mix of old and new shares (at least one of each) interpolates to another key...
    for mask in itertools.product((0, 1), repeat=t):
        if len(set(mask)) == 1:
            continue
        mixed = {j: (new if m else old)[j].secret.value() for j, m in zip(subset, mask, strict=True)}
        x = sum(lagrange_coefficient(subset, j) * v for j, v in mixed.items()) % Q
        assert cbytes(point_mul_base(x)) != pk
    # ...and a signing attempt with one old share yields no signature
    mixed = {0: old[0].secret.value(), 1: new[1].secret.value(), 3: new[3].secret.value()}
    out = sign_with(deal_presignatures(mixed, subset, pk), h)
    assert all(s.phase == "failed" and s.signature is None for s in out.values())
    # the old public share of party 0 no longer matches the refreshed view of it
    assert new[1].public_shares[0] != old[1].public_shares[0]


def test_refresh_twice() -> None:
    old = keygen_shares(2, 3)
    mid: list[KeyShare] = [s.result for s in refresh(old).values()]  # type: ignore[misc]
    new: list[KeyShare] = [s.result for s in refresh(mid).values()]  # type: ignore[misc]
    check_shares(new, 2, 3)
    assert new[0].public_key == old[0].public_key


def test_zeroized_share_refused() -> None:
    old = keygen_shares(2, 3)
    old[0].zeroize()
    with pytest.raises(BadInputError):
        key_refresh.refresh_start(secrets.token_bytes(32), old[0])


def _tamper(sender: int, slot: int, change: object) -> object:
    def f(m: Message, r: int) -> list[Message]:
        if m.sender == sender and slot_of(m) == slot:
            return [replace_body(m, change(body_of(m)))]  # type: ignore[operator]
        return [m]

    return f


def test_bad_refresh_share_blamed() -> None:
    old = keygen_shares(3, 4)
    out = refresh(
        old, _tamper(2, SlotCode.SHARE, lambda b: ((int.from_bytes(b, "big") + 1) % Q).to_bytes(32, "big"))
    )
    for i in (0, 1, 3):
        assert out[i].phase == "failed" and out[i].result is None
        assert [b.party for b in out[i].blame] == [2]
        assert "VSS" in out[i].blame[0].check


def test_dealer_cannot_add_a_constant_term() -> None:
    """A refresh opening carries t-1 points (no constant commitment); one with t points is malformed."""
    old = keygen_shares(2, 3)
    g = cbytes(point_mul_base(1))
    out = refresh(old, _tamper(1, SlotCode.DECOMMIT, lambda b: b + g))
    for i in (0, 2):
        assert [b.party for b in out[i].blame] == [1]
        assert "trailing bytes" in out[i].blame[0].check


def test_bad_refresh_schnorr_blamed() -> None:
    old = keygen_shares(2, 3)
    out = refresh(old, _tamper(0, SlotCode.SCHNORR, lambda b: b[:-1] + bytes([b[-1] ^ 1])))
    for i in (1, 2):
        assert [b.party for b in out[i].blame] == [0] and "pi_sch" in out[i].blame[0].check


def test_keygen_message_not_accepted_in_refresh() -> None:
    old = keygen_shares(2, 3)
    sid = secrets.token_bytes(32)
    s0, _ = key_refresh.refresh_start(sid, old[0])
    from tss.cggmp24 import keygen

    _, kg = keygen.keygen_start(sid, 1, 2, 3)
    s0, _ = key_refresh.refresh_round(s0, kg)
    assert [r.reason for r in s0.core.rejections] == ["wrong-protocol"]


def test_refresh_of_different_keys_aborts_at_the_echo() -> None:
    """A party that refreshes a share of another key (or another view of the public shares) makes the echo
    fail for everyone; nobody gets a new share."""
    a, b = keygen_shares(2, 3), keygen_shares(2, 3)
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for s in (a[0], a[1], b[2]):
        states[s.index], msgs = key_refresh.refresh_start(sid, s)
        first += msgs
    out = run_network(states, first, key_refresh.refresh_round)
    for i in range(3):
        assert out[i].phase == "failed" and out[i].result is None
        assert out[i].blame and all("echo" in e.check for e in out[i].blame)
