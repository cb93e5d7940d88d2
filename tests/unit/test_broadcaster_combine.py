"""The broadcaster's combining step (``Broadcaster._aggregate``) with real FROST partial signatures: an
honest session is signed and broadcast, a bad partial signature is blamed on its signer and nothing is
signed, a spend of an unknown scheme fails. Keys come from the test-only dealer; the signers' side is
the same scheme the signer service calls (:mod:`core.schemes.frost`)."""

from __future__ import annotations

import random

from core.scheme import Attempt
from core.schemes.frost import FROST
from schemas import kv as K
from schemas.messages import InputRef, NonceRef, TxFailed, TxRequested, TxSigned, TxSigning, Violation
from services.broadcaster import service as B
from tests.unit.frost_test_dealer import deal
from tests.unit.test_broadcaster_service import FakeBus, FakeChain, broadcaster
from wallet.threshold_account import ThresholdAccount
from wallet.transaction import (
    OutPoint,
    Prevout,
    TxOutput,
    build_transaction,
    parse_transaction,
    serialize,
    txid,
)
from wallet.verify import verify_transaction

DEALT = deal(5, 4, rng=random.Random(7))
NODES = [f"node-{i + 1}" for i in range(5)]
SIGNERS = ["node-2", "node-4", "node-5", "node-1"]
ACCOUNT = ThresholdAccount(DEALT.thresh_pk, bytes(range(32)), "regtest")
KEY = K.KeyRecord(
    key_id=K.DEFAULT_KEY_ID, scheme="frost", threshold_pubkey=DEALT.thresh_pk, pubshares=DEALT.pubshares,
    chain_code=bytes(range(32)), nodes=NODES, n=5, t=4, session_id="s", hostpubkeys=[],
)  # fmt: skip


class Share:
    def __init__(self, node: str) -> None:
        self.index = NODES.index(node)
        self.n, self.t, self.threshold_pubkey, self.pubshares = 5, 4, DEALT.thresh_pk, DEALT.pubshares
        self.secshare = DEALT.secshares[self.index]


class Chain(FakeChain):
    """Takes any transaction (its txid is computed, not looked up)."""

    def __init__(self) -> None:
        super().__init__()
        self.raw = _Txids()


class _Txids(dict[str, str]):
    def __missing__(self, raw_hex: str) -> str:
        return txid(bytes.fromhex(raw_hex))


def spend(tx_id: str, scheme: str = "frost") -> TxRequested:
    inputs = [
        InputRef(txid="ab" * 32, vout=v, amount=100_000, script_pubkey=ACCOUNT.key((0, v)).script_pubkey,
                 derivation=[0, v])
        for v in range(2)
    ]  # fmt: skip
    tx = build_transaction(
        [(OutPoint(i.txid, i.vout), 0xFFFFFFFD) for i in inputs],
        [TxOutput(198_000, ACCOUNT.key((1, 0)).script_pubkey)],
    )
    return TxRequested(
        tx_id=tx_id, key_id=K.DEFAULT_KEY_ID, scheme=scheme, network="regtest", recipient="r",
        amount=198_000, fee_rate=10.0, fee=2_000, unsigned_tx=serialize(tx, False), inputs=inputs,
    )  # fmt: skip


def signed_session(req: TxRequested) -> tuple[TxSigning, dict[str, list[bytes]]]:
    """Every signer's nonces, the attempt naming them, and every signer's partial signatures made
    through the scheme over the sighashes it computes itself."""
    secret: dict[str, list[bytearray]] = {}
    refs: dict[str, list[NonceRef]] = {}
    for node in SIGNERS:
        made = [FROST.make_material(Share(node), f"{node}-{k}".encode()) for k in range(len(req.inputs))]
        secret[node] = [s for s, _ in made]
        refs[node] = [NonceRef(nonce_id=f"{node}-{k}", pubnonce=p) for k, (_, p) in enumerate(made)]
    signing = TxSigning(
        tx_id=req.tx_id, attempt=1, session_id=f"{req.tx_id}-a1", signers=SIGNERS,
        signer_ids=[NODES.index(s) for s in SIGNERS], nonces=refs, certificate=[],
    )  # fmt: skip
    attempt = Attempt(
        tuple(SIGNERS), tuple(signing.signer_ids), {s: [r.pubnonce for r in refs[s]] for s in SIGNERS}
    )
    tx = parse_transaction(req.unsigned_tx)
    prevouts = [Prevout(i.amount, i.script_pubkey) for i in req.inputs]
    inputs = [
        FROST.spend_input(ACCOUNT, ref.derivation, h)
        for ref, h in zip(req.inputs, FROST.sighashes(tx, prevouts), strict=True)
    ]
    psigs = {s: FROST.sign_inputs(Share(s), attempt, s, secret[s], inputs) for s in SIGNERS}
    return signing, psigs


def make() -> tuple[FakeBus, B.Broadcaster]:
    bus = FakeBus()
    b = broadcaster(bus, Chain())

    async def account(scheme: str, key_id: str) -> tuple[K.KeyRecord, ThresholdAccount]:
        assert (scheme, key_id) == ("frost", K.DEFAULT_KEY_ID)
        return KEY, ACCOUNT

    b.account = account  # type: ignore[method-assign]
    return bus, b


async def test_an_honest_session_is_signed_verified_and_broadcast() -> None:
    bus, b = make()
    req = spend("t1")
    signing, psigs = signed_session(req)
    assert await b._aggregate(req, signing, psigs)
    out = bus.last("tx.signed.t1")
    assert isinstance(out, TxSigned)
    signed = parse_transaction(out.signed_tx)
    verify_transaction(signed, [Prevout(i.amount, i.script_pubkey) for i in req.inputs])  # every witness
    assert all(len(w.scriptWitness.stack) == 1 for w in signed.wit.vtxinwit)  # P2TR key path: [sig]
    assert bus.subjects("t1") == ["tx.signed.t1", "tx.broadcast.t1"]


async def test_a_bad_partial_signature_is_blamed_on_its_signer_and_nothing_is_signed() -> None:
    bus, b = make()
    req = spend("t2")
    signing, psigs = signed_session(req)
    bad = psigs["node-5"][1]
    psigs["node-5"][1] = bytes([bad[0] ^ 1]) + bad[1:]
    assert not await b._aggregate(req, signing, psigs)
    assert bus.subjects("t2") == []
    violations = bus.all("node.violation.node-5")
    assert len(violations) == 1 and isinstance(violations[0], Violation)
    assert violations[0].kind == "invalid-partial-sig" and violations[0].detail.startswith("input 1:")
    assert all(not bus.all(f"node.violation.{n}") for n in SIGNERS if n != "node-5")


async def test_a_spend_of_an_unknown_scheme_fails() -> None:
    bus, b = make()
    req = spend("t3")
    signing, psigs = signed_session(req)
    odd = spend("t3", scheme="cggmp")
    assert not await b._aggregate(odd, signing, psigs)
    failed = bus.last("tx.failed.t3")
    assert isinstance(failed, TxFailed) and "cggmp" in failed.reason
