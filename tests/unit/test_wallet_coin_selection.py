"""Coin selection, fees, vsize, dust, RBF and the unsigned spend."""

from __future__ import annotations

import random

import pytest

from tests.unit.wallet_test_helpers import Key, make_key, sign_input
from wallet.coin_selection import (
    AmountBelowDust,
    FeeTooHigh,
    InsufficientFunds,
    UnsignedSpend,
    Utxo,
    build_spend,
    candidate_window,
    select_bnb,
)
from wallet.fees import dust_limit, estimate_vsize, fee_for
from wallet.script import p2pkh_script, p2sh_script, p2tr_script, p2wpkh_script
from wallet.transaction import OutPoint, parse_transaction, vsize

RNG = random.Random(2024)
KEYS = {kind: make_key(RNG, kind) for kind in ("p2tr", "p2wpkh")}
DEST = p2tr_script(b"\x02" * 32)


def utxo(i: int, amount: int, kind: str = "p2tr") -> Utxo:
    return Utxo(OutPoint(f"{i:064x}", i % 3), amount, KEYS[kind].script_pubkey)


def sign_all(spend: UnsignedSpend) -> bytes:
    by_script = {k.script_pubkey: k for k in KEYS.values()}
    tx, prevouts = spend.tx(), spend.prevouts
    witnesses = []
    for i, u in enumerate(spend.inputs):
        key: Key = by_script[u.script_pubkey]
        w = sign_input(tx, prevouts, i, key, 0 if key.kind == "p2tr" else 1)
        assert spend.sighash(i) is not None
        witnesses.append(w)
    return spend.finalize(witnesses)


def test_dust_limits() -> None:
    assert dust_limit(p2wpkh_script(KEYS["p2wpkh"].pubkey)) == 294
    assert dust_limit(p2tr_script(b"\x02" * 32)) == 330
    assert dust_limit(p2pkh_script(b"\x00" * 20)) == 546
    assert dust_limit(p2sh_script(b"\x00" * 20)) == 540


@pytest.mark.parametrize("kinds", [("p2tr",), ("p2wpkh",), ("p2tr", "p2wpkh")], ids=lambda k: "+".join(k))
@pytest.mark.parametrize("fee_rate", [1.0, 2.5, 37.0])
def test_estimate_matches_signed_vsize(kinds: tuple[str, ...], fee_rate: float) -> None:
    utxos = [utxo(i, 40_000 + 1000 * i, kinds[i % len(kinds)]) for i in range(6)]
    spend = build_spend(utxos, DEST, 150_000, KEYS["p2tr"].script_pubkey, fee_rate, strategy="largest_first")
    raw = sign_all(spend)
    real = vsize(parse_transaction(raw))
    n_wpkh = sum(u.script_pubkey == KEYS["p2wpkh"].script_pubkey for u in spend.inputs)
    if n_wpkh == 0:
        assert spend.vsize == real
    else:  # ECDSA: worst-case 72-byte signature assumed; exact given the real signature lengths
        assert real <= spend.vsize <= real + (n_wpkh + 3) // 4
        tx = parse_transaction(raw)
        stacks = [w.scriptWitness.stack for w in tx.wit.vtxinwit]
        assert all(len(st[0]) in (71, 72) for st in stacks if len(st) == 2)
    assert spend.fee == sum(u.amount for u in spend.inputs) - sum(o.amount for o in spend.outputs)
    assert spend.fee >= fee_for(spend.vsize, fee_rate)
    spend.check()


def test_bnb_exact_match_has_no_change() -> None:
    rate = 2.0
    spk = KEYS["p2tr"].script_pubkey
    amount = 100_000
    vs = estimate_vsize([spk, spk], [DEST])
    exact = amount + fee_for(vs, rate)
    utxos = [utxo(1, 30_000), utxo(2, exact - 60_000), utxo(3, 60_000), utxo(4, 500_000)]
    spend = build_spend(utxos, DEST, amount, spk, rate)
    assert spend.change_index is None and len(spend.outputs) == 1
    assert {u.amount for u in spend.inputs} == {exact - 60_000, 60_000}
    assert spend.fee - fee_for(spend.vsize, rate) <= fee_for(43 + 58, rate)  # within cost of change
    sign_all(spend)


def test_bnb_none_when_impossible() -> None:
    assert select_bnb([utxo(1, 1000)], 10_000, 100, 1.0) is None


def test_change_dropped_below_dust() -> None:
    rate = 1.0
    spk = KEYS["p2tr"].script_pubkey
    amount = 50_000
    fee_two_out = fee_for(estimate_vsize([spk], [DEST, spk]), rate)
    u = utxo(1, amount + fee_two_out + 200)  # change would be 200 sat < 330
    spend = build_spend([u], DEST, amount, spk, rate, strategy="largest_first")
    assert spend.change_index is None
    assert spend.fee == 200 + fee_two_out
    u2 = utxo(2, amount + fee_two_out + 5_000)
    spend = build_spend([u2], DEST, amount, spk, rate, strategy="largest_first")
    assert spend.change_index == 1 and spend.outputs[1].amount == 5_000


def test_rbf_signalling() -> None:
    spend = build_spend([utxo(1, 100_000)], DEST, 50_000, KEYS["p2tr"].script_pubkey, 1.0)
    assert spend.rbf and all(t.nSequence == 0xFFFFFFFD for t in spend.tx().vin)
    spend = build_spend([utxo(1, 100_000)], DEST, 50_000, KEYS["p2tr"].script_pubkey, 1.0, rbf=False)
    assert not spend.rbf and all(t.nSequence == 0xFFFFFFFF for t in spend.tx().vin)


def test_errors_name_the_numbers() -> None:
    spk = KEYS["p2tr"].script_pubkey
    with pytest.raises(AmountBelowDust, match="amount 329 sat is below the dust limit 330"):
        build_spend([utxo(1, 100_000)], DEST, 329, spk, 1.0)
    with pytest.raises(InsufficientFunds, match=r"1000 sat available, \d+ sat needed") as e:
        build_spend([utxo(1, 1000)], DEST, 5000, spk, 1.0)
    assert e.value.available == 1000 and e.value.needed > 5000
    with pytest.raises(FeeTooHigh, match="ceiling 100 sat"):
        build_spend([utxo(1, 100_000)], DEST, 50_000, spk, 10.0, max_fee=100)
    with pytest.raises(FeeTooHigh, match="ceiling 5"):
        build_spend([utxo(1, 100_000)], DEST, 50_000, spk, 10.0, max_fee_rate=5)
    with pytest.raises(ValueError, match="cannot size an input spending p2pkh"):
        build_spend([Utxo(OutPoint("00" * 32, 0), 10**6, p2pkh_script(b"\x00" * 20))], DEST, 50_000, spk, 1.0)


def test_deterministic_and_recheck() -> None:
    utxos = [utxo(i, 10_000 * (i + 1), ("p2tr", "p2wpkh")[i % 2]) for i in range(12)]
    a = build_spend(utxos, DEST, 123_456, KEYS["p2wpkh"].script_pubkey, 3.0)
    shuffled = list(utxos)
    random.Random(1).shuffle(shuffled)
    b = build_spend(shuffled, DEST, 123_456, KEYS["p2wpkh"].script_pubkey, 3.0)
    assert a == b and a.unsigned_bytes() == b.unsigned_bytes()
    a.check()
    from dataclasses import replace

    with pytest.raises(ValueError, match="does not equal inputs - outputs"):
        replace(a, fee=a.fee + 1).check()
    with pytest.raises(FeeTooHigh):
        a.check(max_fee=a.fee - 1)


# ---- the bounded choice of candidates for a wallet with many coins ----------------------------------------


def test_candidate_window_takes_everything_up_to_the_limit() -> None:
    assert candidate_window([5, 4, 3], 4, 3) == [0, 1, 2]
    assert candidate_window([], 4, 3) == []


@pytest.mark.parametrize("amount", [1, 50, 999, 1_000, 10_000, 50_000, 99_999, 10**9])
def test_candidate_window_keeps_the_largest_and_the_coins_around_the_amount(amount: int) -> None:
    values = sorted((RNG.randrange(1, 100_000) for _ in range(5_000)), reverse=True)
    idx = candidate_window(values, amount, 200)
    assert len(idx) == 200 and len(set(idx)) == 200 and idx == sorted(idx)
    assert idx[:100] == list(range(100))  # the largest half
    covering = [i for i, v in enumerate(values) if v >= amount]
    below = [i for i, v in enumerate(values) if v < amount]
    if covering and covering[-1] >= 100:
        assert covering[-1] in idx  # the smallest coin that pays the amount alone
    if below:
        assert below[0] in idx  # the largest coin that does not
    # the window around the amount is contiguous
    rest = idx[100:]
    assert rest == list(range(rest[0], rest[0] + len(rest)))


def window_by_filtering(values: list[int], amount: int, limit: int, taken: set[int]) -> list[int]:
    """The reference: the window of the coins left over, mapped back to their indices."""
    kept = [i for i in range(len(values)) if i not in taken]
    return [kept[j] for j in candidate_window([values[i] for i in kept], amount, limit)]


@pytest.mark.parametrize("seed", range(40))
def test_a_window_skipping_taken_coins_is_the_window_of_the_coins_left(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.choice([0, 5, 150, 199, 200, 201, 260, 1_000, 3_000])
    values = sorted((rng.randrange(1, 100_000) for _ in range(n)), reverse=True)
    how = rng.choice(["none", "few", "largest", "around", "most"])
    amount = rng.choice([1, 500, 30_000, 70_000, 99_999, 10**9])
    if how == "none":
        taken: set[int] = set()
    elif how == "few":
        taken = {rng.randrange(n) for _ in range(min(n, 20))} if n else set()
    elif how == "largest":
        taken = set(range(min(n, rng.randrange(0, 400))))
    elif how == "around":
        pos = sum(v >= amount for v in values)
        taken = set(range(max(0, pos - 150), min(n, pos + 150)))
    else:
        taken = {i for i in range(n) if rng.random() < 0.9}
    limit = rng.choice([1, 2, 3, 10, 200])
    got = candidate_window(values, amount, limit, taken.__contains__)
    assert got == window_by_filtering(values, amount, limit, taken), (n, how, amount, limit)
    assert not set(got) & taken


def test_a_spend_from_the_window_is_as_good_as_from_every_coin_when_the_window_holds_a_match() -> None:
    coins = [utxo(i, 10_000 + 7 * i) for i in range(3_000)]
    coins.sort(key=lambda u: -u.amount)
    amount = 15_000
    idx = candidate_window([u.amount for u in coins], amount, 200)
    from_window = build_spend([coins[i] for i in idx], DEST, amount, KEYS["p2tr"].script_pubkey, 2.0)
    from_all = build_spend(coins, DEST, amount, KEYS["p2tr"].script_pubkey, 2.0)
    assert len(from_window.inputs) == len(from_all.inputs) == 1
    assert from_window.fee == from_all.fee  # the same single input, no change (branch and bound)
