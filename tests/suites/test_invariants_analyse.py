"""The invariant checks themselves: each detector fires on the fault it names, and a clean history passes.

``analyse`` is pure (what was read from the streams, the chain and PostgreSQL in; the rows out), so each
case builds the history by hand with real transactions (python-bitcoinlib serialization) and the real
message structs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from core.lifecycle import TxState
from schemas.messages import InputRef, NonceRef, PartialSignatures, TxRequested, TxSigned, TxSigning
from tests.suites.invariants import ChainView, Report, SpendTrace, StreamView, analyse
from wallet.transaction import OutPoint, TxOutput, build_transaction, serialize, txid, with_witnesses

P2TR = bytes([0x51, 0x20]) + bytes(32)


def _h(label: str) -> str:
    return hashlib.sha256(label.encode()).hexdigest()


def unsigned(coin: str, vout: int = 0, amount: int = 50_000) -> bytes:
    tx = build_transaction([(OutPoint(_h(coin), vout), 0xFFFFFFFD)], [TxOutput(amount, P2TR)])
    return serialize(tx, include_witness=False)


def signed(raw_unsigned: bytes, sig: bytes) -> bytes:
    from wallet.transaction import parse_transaction

    return serialize(with_witnesses(parse_transaction(raw_unsigned), [[sig]]))


def spend(
    view: StreamView, tx_id: str, coin: str, state: TxState, sigs: Sequence[bytes] = (), **kw: Any
) -> tuple[bytes, list[bytes]]:
    raw = unsigned(coin)
    req = TxRequested(
        tx_id=tx_id, key_id="default", scheme="frost", network="regtest", recipient="x", amount=40_000,
        fee_rate=1.0, fee=200, unsigned_tx=raw,
        inputs=[InputRef(txid=_h(coin), vout=0, amount=50_000, script_pubkey=P2TR)],
    )  # fmt: skip
    t = SpendTrace(tx_id, state=state, requested=req, first_ms=1000, terminal_ms=2000, **kw)
    out = [signed(raw, s) for s in sigs]
    t.signed = [TxSigned(tx_id=tx_id, txid=txid(raw), signed_tx=s, attempt=1) for s in out]
    view.spends[tx_id] = t
    return raw, out


def sig(r: str, s: str) -> bytes:
    return bytes.fromhex(_h(r)) + bytes.fromhex(_h(s))


def clean() -> tuple[StreamView, ChainView, dict[str, dict[str, Any]]]:
    view, chain = StreamView(), ChainView()
    db: dict[str, dict[str, Any]] = {}
    for k in range(3):
        _raw, out = spend(view, f"s{k}", f"coin{k}", TxState.CONFIRMED, [sig(f"r{k}", f"s{k}")])
        chain.raw[txid(out[0])] = out[0]
        chain.confirmed.add(txid(out[0]))
        db[f"s{k}"] = {"state": "confirmed", "txid": txid(out[0])}
    spend(view, "rej", "coin9", TxState.REJECTED, reasons=["over the daily limit"])
    db["rej"] = {"state": "rejected", "txid": None}
    return view, chain, db


def run(
    view: StreamView, chain: ChainView, db: dict[str, dict[str, Any]], extra: tuple[str, ...] = ()
) -> Report:
    accepted = {i: 0.5 for i in [*view.spends, *extra]}
    return analyse(accepted, view, chain, db, bound_s=60.0)


def failing(report: Report) -> set[str]:
    return {r.name for r in report.violations()}


def test_a_clean_history_holds() -> None:
    report = run(*clean())
    assert report.ok, report.markdown()
    assert report.row("confirmed").value == "3"
    assert report.row("rejected").value == "1"


def test_lost_and_stuck() -> None:
    view, chain, db = clean()
    spend(view, "slow", "coin5", TxState.SIGNING)
    db["slow"] = {"state": "signing", "txid": None}
    report = run(view, chain, db, extra=("ghost",))
    assert failing(report) >= {"lost (accepted, never on the stream)", "stuck (not terminal)"}


def test_a_failure_needs_a_reason() -> None:
    view, chain, db = clean()
    spend(view, "f", "coin5", TxState.FAILED)
    db["f"] = {"state": "failed", "txid": None}
    assert "rejected/failed without a reason" in failing(run(view, chain, db))


def test_two_signed_transactions_for_one_spend() -> None:
    view, chain, db = clean()
    _raw, out = spend(view, "two", "coin5", TxState.CONFIRMED, [sig("ra", "sa"), sig("rb", "sb")])
    chain.raw[txid(out[0])] = out[0]
    chain.confirmed.add(txid(out[0]))
    db["two"] = {"state": "confirmed", "txid": txid(out[0])}
    assert failing(run(view, chain, db)) == {"signed twice (streams)"}


def test_another_signature_on_chain() -> None:
    view, chain, db = clean()
    raw, out = spend(view, "x", "coin5", TxState.CONFIRMED, [sig("ra", "sa")])
    other = signed(raw, sig("rz", "sz"))
    chain.raw[txid(other)] = other
    chain.confirmed.add(txid(other))
    db["x"] = {"state": "confirmed", "txid": txid(out[0])}
    assert failing(run(view, chain, db)) == {"signed twice (chain: another signature landed)"}


def test_failed_but_on_chain() -> None:
    view, chain, db = clean()
    _raw, out = spend(view, "f", "coin5", TxState.FAILED, [sig("ra", "sa")], reasons=["broadcast rejected"])
    chain.raw[txid(out[0])] = out[0]
    chain.mempool.add(txid(out[0]))
    db["f"] = {"state": "failed", "txid": txid(out[0])}
    assert failing(run(view, chain, db)) == {"ended rejected/failed but on chain"}


def test_confirmed_but_not_in_a_block() -> None:
    view, chain, db = clean()
    _raw, out = spend(view, "c", "coin5", TxState.CONFIRMED, [sig("ra", "sa")])
    db["c"] = {"state": "confirmed", "txid": txid(out[0])}
    assert failing(run(view, chain, db)) == {"confirmed but not in a block"}


def test_a_coin_spent_twice_on_chain_and_by_two_signed_spends() -> None:
    view, chain, db = clean()
    for name, s in (("d1", sig("r1", "x")), ("d2", sig("r2", "y"))):
        raw = unsigned("shared", amount=40_000 if name == "d1" else 30_000)
        tx = signed(raw, s)
        chain.raw[txid(tx)] = tx
        chain.confirmed.add(txid(tx))
    view2, _, _ = clean()
    spend(view2, "a", "coin7", TxState.SIGNED, [sig("ra", "sa")])
    spend(view2, "b", "coin7", TxState.SIGNED, [sig("rb", "sb")])
    assert "coin spent twice (chain)" in failing(run(view, chain, db))
    assert "coin in two signed spends" in failing(analyse({}, view2, ChainView(), {}, 60.0))


def test_an_aggregate_nonce_reused() -> None:
    view, chain, db = clean()
    _raw, out = spend(view, "n", "coin5", TxState.CONFIRMED, [sig("r0", "other s")])  # R of s0
    chain.raw[txid(out[0])] = out[0]
    chain.confirmed.add(txid(out[0]))
    db["n"] = {"state": "confirmed", "txid": txid(out[0])}
    assert failing(run(view, chain, db)) == {"aggregate nonce R reused (chain + tx.signed)"}


def test_a_signer_nonce_signed_in_two_sessions() -> None:
    view, chain, db = clean()
    nonce = NonceRef(nonce_id="b1.0", pubnonce=b"\x02" * 66)
    for k, tx_id in enumerate(("s0", "s1")):
        session = f"sess{k}"
        view.sessions[session] = TxSigning(
            tx_id=tx_id, attempt=1, session_id=session, signers=["node-1"], signer_ids=[0],
            nonces={"node-1": [nonce]}, certificate=[],
        )  # fmt: skip
    view.psigs.append(
        PartialSignatures(tx_id="s0", session_id="sess0", attempt=1, node="node-1", psigs=[b"1" * 32])
    )
    report = run(view, chain, db)
    assert report.ok  # named twice, signed once: the signer refused the second
    assert report.row("nonce named in two tx.signing (observation)").value == "1"
    view.psigs.append(
        PartialSignatures(tx_id="s1", session_id="sess1", attempt=1, node="node-1", psigs=[b"2" * 32])
    )
    assert failing(run(view, chain, db)) == {"nonce signed twice (a signer's partial signatures)"}


def test_the_projection_must_equal_the_streams() -> None:
    view, chain, db = clean()
    db["s1"] = {"state": "broadcast", "txid": db["s1"]["txid"]}
    del db["rej"]
    report = run(view, chain, db)
    assert failing(report) == {"projection differs from the streams"}
    assert report.row("projection differs from the streams").value == "2"


def test_over_the_bound() -> None:
    view, chain, db = clean()
    view.spends["s0"].terminal_ms = 500_000  # 499.5 s after its acceptance at 0.5 s
    assert failing(run(view, chain, db)) == {"over the bound (60 s to a terminal state)"}
