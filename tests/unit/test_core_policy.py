"""The signer's own recheck of a spend request: every way a request can lie is caught."""

from __future__ import annotations

import msgspec
import pytest

import tss.secp256k1 as s
from core.policy import check_spend, signed_vsize
from schemas.messages import InputRef, TxRequested
from schemas.rest import Policy
from wallet.address import address_to_script
from wallet.sighash import bip341_sighash
from wallet.threshold_account import ThresholdAccount
from wallet.transaction import OutPoint, Prevout, TxOutput, build_transaction, serialize

NET = "regtest"
ACCOUNT = ThresholdAccount(s.cbytes(s.point_mul_base(0xC0FFEE)), bytes(range(32)), NET)
OTHER = ThresholdAccount(s.cbytes(s.point_mul_base(0xBEEF)), bytes(32), NET)
RECIPIENT = OTHER.address((0, 0))
TXID_A = "aa" * 32
TXID_B = "bb" * 32


def make_request(
    amount: int = 150_000, fee: int = 2_000, change_to: bytes | None = None, extra_output: bool = False
) -> TxRequested:
    inputs = [
        InputRef(txid=TXID_A, vout=0, amount=100_000, script_pubkey=ACCOUNT.key((0, 0)).script_pubkey,
                 derivation=[0, 0]),
        InputRef(txid=TXID_B, vout=3, amount=200_000, script_pubkey=ACCOUNT.key((0, 1)).script_pubkey,
                 derivation=[0, 1]),
    ]
    change = 300_000 - amount - fee
    outs = [TxOutput(amount, address_to_script(RECIPIENT, NET)),
            TxOutput(change, change_to or ACCOUNT.key((1, 0)).script_pubkey)]
    if extra_output:
        outs.append(TxOutput(0, b"\x6a\x01\x00"))
    tx = build_transaction([(OutPoint(i.txid, i.vout), 0xFFFFFFFD) for i in inputs], outs)
    return TxRequested(
        tx_id="t1", key_id="default", scheme="frost", network=NET, recipient=RECIPIENT, amount=amount,
        fee_rate=10.0, fee=fee, unsigned_tx=serialize(tx, False), inputs=inputs, change_index=1,
        change_derivation=[1, 0],
    )


def test_valid_spend_passes_and_sighashes_match_bip341() -> None:
    req = make_request()
    res = check_spend(req, Policy(), ACCOUNT, 0)
    assert res.ok, res.reasons
    assert res.fee == 2_000
    assert res.vsize == signed_vsize(len(req.unsigned_tx), 2)
    from wallet.transaction import parse_transaction

    tx = parse_transaction(req.unsigned_tx)
    prevouts = [Prevout(i.amount, i.script_pubkey) for i in req.inputs]
    assert res.sighashes == [bip341_sighash(tx, prevouts, k) for k in range(2)]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda r: msgspec.structs.replace(r, amount=r.amount + 1), "recipient receives"),
        (lambda r: msgspec.structs.replace(r, fee=r.fee - 1), "fee is"),
        (lambda r: msgspec.structs.replace(r, recipient=ACCOUNT.address((0, 7))), "neither the recipient"),
        (lambda r: msgspec.structs.replace(r, network="mainnet"), "network"),
        (lambda r: msgspec.structs.replace(r, scheme="cggmp"), "scheme"),
        (lambda r: msgspec.structs.replace(r, unsigned_tx=r.unsigned_tx[:-1]), "unsigned transaction"),
        (lambda r: msgspec.structs.replace(r, change_derivation=[1, 1]), "change does not go"),
        (lambda r: msgspec.structs.replace(r, change_index=5), "change index"),
        (
            lambda r: msgspec.structs.replace(
                r, inputs=[msgspec.structs.replace(r.inputs[0], derivation=[0, 5]), r.inputs[1]]
            ),
            "does not spend one of this wallet's outputs",
        ),
        (
            lambda r: msgspec.structs.replace(
                r, inputs=[msgspec.structs.replace(r.inputs[0], vout=1), r.inputs[1]]
            ),
            "does not match",
        ),
        (lambda r: msgspec.structs.replace(r, inputs=r.inputs[:1]), "input descriptions"),
    ],
    ids=["amount", "fee", "recipient", "network", "scheme", "truncated-tx", "change-path", "change-index",
         "foreign-input", "outpoint", "input-count"],
)
def test_lies_are_caught(mutate, reason) -> None:  # type: ignore[no-untyped-def]
    res = check_spend(mutate(make_request()), Policy(), ACCOUNT, 0)
    assert not res.ok
    assert any(reason in r for r in res.reasons), res.reasons


def test_change_to_foreign_script_is_refused() -> None:
    res = check_spend(make_request(change_to=OTHER.key((1, 0)).script_pubkey), Policy(), ACCOUNT, 0)
    assert any("change does not go" in r for r in res.reasons)


def test_extra_output_is_refused() -> None:
    res = check_spend(make_request(extra_output=True), Policy(), ACCOUNT, 0)
    assert any("neither the recipient nor change" in r for r in res.reasons)


@pytest.mark.parametrize(
    ("policy", "spent", "reason"),
    [
        (Policy(max_tx_sats=100_000), 0, "per-transaction limit"),
        (Policy(daily_limit_sats=200_000), 60_000, "daily limit"),
        (Policy(denylist=[RECIPIENT]), 0, "deny list"),
        (Policy(allowlist=["bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"]), 0, "allow list"),
        (Policy(max_fee_sats=1_000), 0, "exceeds the ceiling"),
        (Policy(max_fee_rate=5.0), 0, "fee rate"),
    ],
    ids=["per-tx", "daily", "deny", "allow", "fee-abs", "fee-rate"],
)
def test_policy(policy: Policy, spent: int, reason: str) -> None:
    res = check_spend(make_request(), policy, ACCOUNT, spent)
    assert any(reason in r for r in res.reasons), res.reasons


def test_fee_below_relay_minimum() -> None:
    res = check_spend(make_request(fee=50), Policy(), ACCOUNT, 0)
    assert any("relay minimum" in r for r in res.reasons)


def test_structure_only_check_ignores_policy_but_not_lies() -> None:
    req = make_request(fee=50)  # below the relay minimum: a policy matter, not the transaction's shape
    assert check_spend(req, None, ACCOUNT).ok
    bad = msgspec.structs.replace(req, amount=req.amount + 1)
    assert any("recipient receives" in r for r in check_spend(bad, None, ACCOUNT).reasons)
