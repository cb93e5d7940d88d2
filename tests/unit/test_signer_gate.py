"""The signer's own gate (services/signer/node.py), with a real PKI and a fake bus: whatever a coordinator
sends, a node signs only a spend it approved itself, with a certificate of ``t`` distinct approvals of the
sighashes it computed, for a signer set inside that quorum, within its attempt cap, with nonces this very
process pooled. Every refusal is published with its reason and takes NO nonce.

The identities are real (``init_pki``: Ed25519 keys per identity), every vote in a certificate is a real
signed envelope, the key share is a real FROST share (a test dealer's), the nonces are pooled through the
node's own ``proto.noncegen`` handler and the partial signatures are checked with BIP-445
``PartialSigVerify``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import nats.js.errors
import pytest

from core.policy import check_spend
from schemas import envelope as E
from schemas import kv as K
from schemas.messages import (
    REGISTRY,
    InputRef,
    NonceBatchRequest,
    NonceRef,
    PartialSignatures,
    SigningRefused,
    TxRequested,
    TxSigning,
    Vote,
)
from schemas.names import BUCKET_PRESIG, proto_subject, subject_matches, tx_subject
from schemas.rest import Policy
from services.localcluster.pki import init_pki
from services.runtime.bus import Bus, KvEntry
from services.runtime.config import ServiceConfig
from services.runtime.logging import Logger
from services.runtime.seal import Identities, IdentityKeys, seal
from services.signer import node as signer_node
from services.signer.keystore import Keystore, ShareRecord
from services.signer.node import SignerNode
from services.signer.nonce_slots import NonceStoreBusy
from services.signer.service import serve
from services.signer.signing_attempts import DEFAULT_MAX_ATTEMPTS
from tests.unit.frost_test_dealer import DealtKey, deal
from tests.unit.service_fakes import FakeKV, received
from tss import frost
from wallet.address import address_to_script
from wallet.threshold_account import ThresholdAccount
from wallet.transaction import OutPoint, TxOutput, build_transaction, serialize

NODES = ("node-1", "node-2", "node-3", "node-4", "node-5")
ME = "node-1"
T = 4
NET = "regtest"
CHAIN_CODE = bytes(range(32))
ROOT = Path(__file__).resolve().parents[2]
WORLD_DIR: list[Path] = []


# ---- the world: identities, a dealt FROST key --------------------------------------------------------------
@dataclass(frozen=True)
class World:
    pki_dir: Path
    identities: Identities
    keys: dict[str, IdentityKeys]
    dealt: DealtKey
    account: ThresholdAccount


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, nodes=len(NODES))
    WORLD_DIR[:] = [d]
    identities = Identities.load(d / "pki" / "identities.json")
    keys = {name: IdentityKeys.load(d, name) for name in (*NODES, "consensus", "intake")}
    dealt = deal(len(NODES), T)
    return World(d, identities, keys, dealt, ThresholdAccount(dealt.thresh_pk, CHAIN_CODE, NET))


# ---- a fake bus with real envelopes ------------------------------------------------------------------------
class BucketKV(FakeKV):
    """:class:`FakeKV` plus deletes and watches that honour their key pattern."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.deleted: list[str] = []

    async def delete(self, key: str, revision: int | None = None) -> None:
        await asyncio.sleep(0)
        self.data.pop(key, None)
        self.deleted.append(key)

    async def watch(self, key: str = ">") -> AsyncIterator[KvEntry | None]:
        for k, (rev, raw) in list(self.data.items()):
            await asyncio.sleep(0)
            if subject_matches(key, k):
                yield KvEntry(k, raw, rev)
        yield None


@dataclass
class GateBus:
    """What SignerNode uses of the bus; envelopes sealed for real with the node's identity key."""

    keys: IdentityKeys
    identities: Identities
    identity: str = ME
    service: str = f"signer-{ME}"
    kvs: dict[str, BucketKV] = field(default_factory=dict)
    published: list[tuple[str, Any, str]] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    log: Logger = field(default_factory=lambda: Logger(f"signer-{ME}"))
    stored: dict[str, bytes] = field(default_factory=dict)  # subject -> its last envelope (the streams)
    registry: Any = field(default_factory=lambda: REGISTRY)

    @property
    def js(self) -> GateBus:
        return self  # services.runtime.lookup reads the streams through ``bus.js``

    async def get_last_msg(self, stream: str, subject: str) -> SimpleNamespace:
        if subject not in self.stored:
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(data=self.stored[subject], seq=1)

    def open(self, raw: bytes, subject: str) -> tuple[E.Envelope, Any]:
        return Bus.open(self, raw, subject)  # type: ignore[arg-type]  # the real checks

    def seal(self, subject: str, struct: msgspec.Struct, msg_id: str, to: str | None = None) -> bytes:
        return Bus.seal(self, subject, struct, msg_id, to)  # type: ignore[arg-type]  # the real sealing

    async def publish(self, subject: str, payload: Any, msg_id: str) -> None:
        await asyncio.sleep(0)
        self.published.append((subject, payload, msg_id))

    async def publish_raw(self, subject: str, raw: bytes, msg_id: str) -> None:
        await asyncio.sleep(0)
        self.published.append((subject, raw, msg_id))

    async def kv(self, bucket: str) -> BucketKV:
        return self.kvs.setdefault(bucket, BucketKV(bucket))

    def start_consumer(self, *args: Any, **kwargs: Any) -> asyncio.Task[None]:
        return asyncio.create_task(self.stopping.wait())  # type: ignore[arg-type]

    start_batch_consumer = start_consumer

    def answers(self, session_id: str) -> list[PartialSignatures | SigningRefused]:
        out: list[PartialSignatures | SigningRefused] = []
        for subject, payload, _ in self.published:
            if subject in (
                proto_subject("frost", session_id, 2, ME),
                proto_subject("frost", session_id, "refused", ME),
            ):
                out.append(payload)
        return out


def config(data_dir: Path, world: World, **extra: Any) -> ServiceConfig:
    nowhere = Path("/nonexistent")
    return ServiceConfig(
        identity=ME,
        service=f"signer-{ME}",
        data_dir=data_dir,
        nats_url="",
        ca_file=nowhere,
        cert_file=nowhere,
        key_file=nowhere,
        identities_file=world.pki_dir / "pki" / "identities.json",
        n=len(NODES),
        t=T,
        nodes=NODES,
        network=NET,
        extra=dict(extra),
    )


def share_record(world: World, index: int) -> ShareRecord:
    return ShareRecord(
        key_id=K.DEFAULT_KEY_ID,
        scheme="frost",
        index=index,
        secshare=world.dealt.secshares[index],
        threshold_pubkey=world.dealt.thresh_pk,
        pubshares=world.dealt.pubshares,
        chain_code=CHAIN_CODE,
        n=len(NODES),
        t=T,
    )


def make_node(world: World, data_dir: Path, bus: GateBus | None = None, **extra: Any) -> SignerNode:
    ks = Keystore(data_dir, ME)
    if not ks.has_share(K.DEFAULT_KEY_ID):
        ks.save_share(share_record(world, 0))
    fake = bus or GateBus(world.keys[ME], world.identities)
    return SignerNode(config(data_dir, world, **extra), fake, ks)  # type: ignore[arg-type]


def bus_of(node: SignerNode) -> GateBus:
    assert isinstance(node.bus, GateBus)
    return node.bus


# ---- spends, votes, attempts -------------------------------------------------------------------------------
def spend(world: World, tx_id: str, amount: int = 150_000) -> TxRequested:
    acct = world.account
    recipient = ThresholdAccount(world.dealt.pubshares[1], bytes(32), NET).address((0, 0))
    txid = (tx_id.encode().hex() * 32)[:64]
    inputs = [
        InputRef(txid=txid, vout=0, amount=100_000, script_pubkey=acct.key((0, 0)).script_pubkey,
                 derivation=[0, 0]),
        InputRef(txid=txid, vout=1, amount=200_000, script_pubkey=acct.key((0, 1)).script_pubkey,
                 derivation=[0, 1]),
    ]  # fmt: skip
    fee = 2_000
    outs = [
        TxOutput(amount, address_to_script(recipient, NET)),
        TxOutput(300_000 - amount - fee, acct.key((1, 0)).script_pubkey),
    ]
    tx = build_transaction([(OutPoint(i.txid, i.vout), 0xFFFFFFFD) for i in inputs], outs)
    return TxRequested(
        tx_id=tx_id, key_id=K.DEFAULT_KEY_ID, scheme="frost", network=NET, recipient=recipient,
        amount=amount, fee_rate=10.0, fee=fee, unsigned_tx=serialize(tx, False), inputs=inputs,
        change_index=1, change_derivation=[1, 0],
    )  # fmt: skip


async def vote_on(node: SignerNode, *reqs: TxRequested) -> None:
    """Deliver the requests to the node in one batch (it votes); they are kept in the fake stream as
    intake sealed them."""
    bus = bus_of(node)
    for r in reqs:
        subject = tx_subject("requested", r.tx_id)
        intake = IdentityKeys.load(WORLD_DIR[0], "intake")
        env = seal(intake, bus.identities, subject=subject, type_name="TxRequested",
                   payload=msgspec.msgpack.encode(r), msg_id=subject)  # fmt: skip
        bus.stored[subject] = E.encode(env)
    await node.on_requests([received(r, tx_subject("requested", r.tx_id), "intake") for r in reqs])


def own_vote(node: SignerNode, tx_id: str) -> bytes:
    subject = f"vote.{tx_id}.{ME}"
    got = [p for s, p, _ in bus_of(node).published if s == subject]
    assert len(got) == 1
    raw: bytes = got[0]
    return raw


def vote_env(world: World, voter: str, tx_id: str, sighashes: list[bytes], *, approve: bool = True,
             node_field: str | None = None, subject_tx: str | None = None) -> bytes:  # fmt: skip
    """A vote signed by ``voter``'s real identity key."""
    vote = Vote(tx_id=tx_id, node=node_field or voter, approve=approve, sighashes=sighashes,
                reasons=[] if approve else ["no"])  # fmt: skip
    subject = f"vote.{subject_tx or tx_id}.{voter}"
    env = seal(world.keys[voter], world.identities, subject=subject, type_name="Vote",
               payload=msgspec.msgpack.encode(vote), msg_id=subject)  # fmt: skip
    return E.encode(env)


def sighashes_of(node: SignerNode, tx_id: str) -> list[bytes]:
    return [bytes.fromhex(h) for h in node.journal.entries[tx_id].sighashes]


async def pool_nonces(node: SignerNode, batch_id: str, count: int = 8) -> list[NonceRef]:
    """Have the node pool ``count`` nonces (its own noncegen handler) and return their public halves."""
    req = NonceBatchRequest(batch_id=batch_id, node=ME, count=count)
    await node.on_noncegen(received(req, f"proto.noncegen.{batch_id}.1.presig.{ME}", "presig"))
    presig = await bus_of(node).kv(BUCKET_PRESIG)
    out: list[NonceRef] = []
    for key, (_, raw) in presig.data.items():
        if f".{ME}.b.{batch_id}_" in key:
            batch = msgspec.msgpack.decode(raw, type=K.NonceBatch)
            out += [NonceRef(nonce_id=c.nonce_id, pubnonce=c.pubnonce) for c in batch.nonces]
    assert len(out) == count
    return out


@dataclass
class Others:
    """Nonces of the other signers (their secret halves, to check the aggregate where wanted)."""

    secnonces: dict[str, list[bytearray]] = field(default_factory=dict)
    refs: dict[str, list[NonceRef]] = field(default_factory=dict)


def other_nonces(world: World, signers: list[str], inputs: int) -> Others:
    o = Others()
    for name in signers:
        if name == ME:
            continue
        i = NODES.index(name)
        pairs = [frost.nonce_gen(world.dealt.secshares[i], world.dealt.pubshares[i]) for _ in range(inputs)]
        o.secnonces[name] = [sec for sec, _ in pairs]
        o.refs[name] = [NonceRef(nonce_id=f"o{i}x{k}-{time.time_ns()}"[:24], pubnonce=pub)
                        for k, (_, pub) in enumerate(pairs)]  # fmt: skip
    return o


def attempt(tx_id: str, n: int, signers: list[str], mine: list[NonceRef], others: Others,
            certificate: list[bytes], signer_ids: list[int] | None = None) -> TxSigning:  # fmt: skip
    return TxSigning(
        tx_id=tx_id,
        attempt=n,
        session_id=f"{tx_id}-a{n}",
        signers=signers,
        signer_ids=signer_ids if signer_ids is not None else [NODES.index(s) for s in signers],
        nonces={ME: mine, **{s: others.refs[s] for s in signers if s != ME}},
        certificate=certificate,
    )


async def deliver(node: SignerNode, *sigs: TxSigning) -> None:
    await node.on_signings([received(s, tx_subject("signing", s.tx_id), "consensus") for s in sigs])


def verify_psigs(
    world: World, req: TxRequested, sig: TxSigning, psigs: list[bytes], sighashes: list[bytes]
) -> None:
    ids = sig.signer_ids
    ctx = frost.SignersContext(
        len(NODES), T, ids, [world.dealt.pubshares[i] for i in ids], world.dealt.thresh_pk
    )
    for i, inp in enumerate(req.inputs):
        key = world.account.key(tuple(inp.derivation))
        pubnonces = [sig.nonces[s][i].pubnonce for s in sig.signers]
        assert frost.partial_sig_verify(
            psigs[i],
            pubnonces,
            ctx,
            list(key.tweaks),
            list(key.is_xonly),
            sighashes[i],
            sig.signers.index(ME),
        )


@dataclass
class Case:
    """An approved spend ready to sign: the node voted for it and holds pooled nonces."""

    node: SignerNode
    req: TxRequested
    sighashes: list[bytes]
    mine: list[NonceRef]
    certificate: list[bytes]  # node-1 (its own envelope), node-2, node-3, node-4


@pytest.fixture
def node(world: World, tmp_path: Path) -> Iterator[SignerNode]:
    n = make_node(world, tmp_path)
    yield n
    n.close()


async def approved_case(world: World, node: SignerNode, tx_id: str = "tx1") -> Case:
    req = spend(world, tx_id)
    await vote_on(node, req)
    assert node.journal.entries[tx_id].approve, node.journal.entries[tx_id].reasons
    sh = sighashes_of(node, tx_id)
    cert = [own_vote(node, tx_id), *(vote_env(world, v, tx_id, sh) for v in ("node-2", "node-3", "node-4"))]
    mine = await pool_nonces(node, f"b{tx_id}", 4)
    return Case(node, req, sh, mine[:2], cert)


def assert_refused(case: Case, sig: TxSigning, reason: str) -> None:
    answers = bus_of(case.node).answers(sig.session_id)
    assert len(answers) == 1 and isinstance(answers[0], SigningRefused), answers
    assert reason in answers[0].reason, answers[0].reason
    for ref in sig.nonces[ME]:  # NO NONCE TAKEN
        if ref.nonce_id in {r.nonce_id for r in case.mine}:
            assert case.node.keystore.has_nonce(ref.nonce_id), f"{ref.nonce_id} was taken by a refusal"
    assert case.node.attempts.count(sig.tx_id) == 0 or reason.startswith("attempt cap")


SIGNERS = ["node-1", "node-2", "node-3", "node-4"]


async def try_attempt(
    world: World, case: Case, certificate: list[bytes], signers: list[str] = SIGNERS, **kw: Any
) -> TxSigning:
    """Attempt 1 of the case's spend with its nonces and this certificate, delivered to its node."""
    sig = attempt(case.req.tx_id, 1, signers, case.mine, other_nonces(world, signers, 2), certificate, **kw)
    await deliver(case.node, sig)
    return sig


# ---- the control: an honest attempt signs ------------------------------------------------------------------
async def test_an_honest_attempt_signs_and_no_secret_nonce_leaves(
    world: World, node: SignerNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    case = await approved_case(world, node)
    secrets_ = [bytes(node.keystore._nonces._peek(r.nonce_id) or b"") for r in case.mine]
    assert all(len(s) == 64 for s in secrets_)
    sig = await try_attempt(world, case, case.certificate)
    answers = bus_of(node).answers(sig.session_id)
    assert len(answers) == 1 and isinstance(answers[0], PartialSignatures), answers
    verify_psigs(world, case.req, sig, answers[0].psigs, case.sighashes)
    assert not any(node.keystore.has_nonce(r.nonce_id) for r in case.mine)  # used: gone
    assert node.attempts.count("tx1") == 1
    # the secret nonces appear in nothing the node published or logged (raw, hex, either half)
    everything = (
        b"".join(
            p if isinstance(p, bytes) else msgspec.msgpack.encode(p) for _, p, _ in bus_of(node).published
        )
        + "\n".join(f"{r.getMessage()} {getattr(r, 'fields', '')}" for r in caplog.records).encode()
    )
    for s in secrets_:
        for needle in (s, s[:32], s[32:], s.hex().encode(), s[:32].hex().encode(), s[32:].hex().encode()):
            assert needle not in everything
    # a redelivery gets the same answer, no second nonce
    await deliver(node, sig)
    again = bus_of(node).answers(sig.session_id)
    assert len(again) == 2 and again[1] == again[0]


# ---- certificates ------------------------------------------------------------------------------------------
async def test_a_certificate_of_t_minus_1_approvals_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    sig = await try_attempt(world, case, case.certificate[:3])
    assert_refused(case, sig, "certificate has 3 approvals, 4 needed")


async def test_a_rejecting_vote_in_the_certificate_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    cert = [*case.certificate[:3], vote_env(world, "node-4", "tx1", case.sighashes, approve=False)]
    sig = await try_attempt(world, case, cert)
    assert_refused(case, sig, "a rejection")


async def test_another_spends_vote_in_the_certificate_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    # node-4 really approved tx9 (even with these very sighashes): it says nothing about tx1
    cert = [*case.certificate[:3], vote_env(world, "node-4", "tx9", case.sighashes)]
    sig = await try_attempt(world, case, cert)
    assert_refused(case, sig, "another transaction")


async def test_votes_for_other_sighashes_are_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    other = [bytes(32), bytes(31) + b"\x01"]
    cert = [*case.certificate[:3], vote_env(world, "node-4", "tx1", other)]
    sig = await try_attempt(world, case, cert)
    assert_refused(case, sig, "node-4 approved different sighashes")


async def test_a_duplicate_voter_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    twice = vote_env(world, "node-3", "tx1", case.sighashes)  # a second, distinct envelope of node-3
    cert = [*case.certificate[:3], twice]
    sig = await try_attempt(world, case, cert)
    assert_refused(case, sig, "duplicate signer node-3 in certificate")


async def test_votes_are_counted_by_distinct_voter(
    world: World, node: SignerNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even if the envelope check let a voter's second envelope through, it would count once."""
    case = await approved_case(world, node)
    twice = vote_env(world, "node-3", "tx1", case.sighashes)

    def lenient(cert: list[bytes], identities: Identities, **_: Any) -> list[E.Envelope]:
        return [E.decode(raw) for raw in cert]  # no duplicate check (nor any other)

    monkeypatch.setattr(signer_node, "verify_certificate", lenient)
    sig = await try_attempt(world, case, [*case.certificate[:3], twice])
    assert_refused(case, sig, "certificate has 3 approvals, 4 needed")


async def test_a_vote_under_another_nodes_name_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    # node-5 signs a vote that claims to be node-4's
    cert = [*case.certificate[:3], vote_env(world, "node-5", "tx1", case.sighashes, node_field="node-4")]
    sig = await try_attempt(world, case, cert)
    assert_refused(case, sig, "other than a node's own vote")


async def test_a_forged_vote_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    env = E.decode(case.certificate[3])
    forged = E.encode(msgspec.structs.replace(env, sig=bytes(64)))
    sig = await try_attempt(world, case, [*case.certificate[:3], forged])
    assert_refused(case, sig, "does not verify")


# ---- signer sets -------------------------------------------------------------------------------------------
async def test_a_signer_outside_the_quorum_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    signers = ["node-1", "node-2", "node-3", "node-5"]  # node-5 has no approval in the certificate
    sig = await try_attempt(world, case, case.certificate, signers)
    assert_refused(case, sig, "signer node-5 is outside the quorum")


async def test_a_signer_listed_at_the_wrong_participant_id_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    sig = await try_attempt(world, case, case.certificate, signer_ids=[0, 1, 2, 4])
    assert_refused(case, sig, "wrong participant id")


async def test_fewer_than_t_signers_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    signers = SIGNERS[:3]
    sig = await try_attempt(world, case, case.certificate, signers)
    assert_refused(case, sig, "3 signers, 4 needed")


# ---- this node's own decision ------------------------------------------------------------------------------
async def approved_by_the_others(world: World, node: SignerNode, req: TxRequested, sh: list[bytes]) -> Case:
    """The four other nodes approved ``req`` (sighashes ``sh``); the node holds pooled nonces."""
    cert = [vote_env(world, v, req.tx_id, sh) for v in ("node-2", "node-3", "node-4", "node-5")]
    return Case(node, req, sh, await pool_nonces(node, f"b{req.tx_id}", 2), cert)


async def test_a_spend_this_node_did_not_approve_is_refused(world: World, node: SignerNode) -> None:
    node.policy = Policy(max_tx_sats=100_000)  # this node rejects the 150,000 sat spend
    req = spend(world, "tx2")
    await vote_on(node, req)
    assert not node.journal.entries["tx2"].approve
    others_sh = sighashes_of(node, "tx2")  # recorded with the rejection: what the others approved
    assert len(others_sh) == 2
    case = await approved_by_the_others(world, node, req, others_sh)
    sig = await try_attempt(world, case, case.certificate)
    assert_refused(case, sig, "this node did not approve")


async def test_a_spend_this_node_never_saw_is_refused(world: World, node: SignerNode) -> None:
    req = spend(world, "tx3")
    sh = check_spend(req, Policy(), world.account, 0).sighashes
    case = await approved_by_the_others(world, node, req, sh)
    sig = await try_attempt(world, case, case.certificate)
    assert_refused(case, sig, "this node did not approve")


async def test_a_batch_of_spends_that_together_cross_the_daily_limit(world: World, node: SignerNode) -> None:
    node.policy = Policy(daily_limit_sats=250_000)
    a, b = spend(world, "txa", 150_000), spend(world, "txb", 150_000)
    await vote_on(node, a, b)  # one batch: each alone is within the limit, together they are not
    assert node.journal.entries["txa"].approve
    assert not node.journal.entries["txb"].approve
    assert any("daily" in r for r in node.journal.entries["txb"].reasons)
    case = await approved_by_the_others(world, node, b, sighashes_of(node, "txb"))
    sig = await try_attempt(world, case, case.certificate)
    assert_refused(case, sig, "this node did not approve")


# ---- nonces and the attempt cap ----------------------------------------------------------------------------
async def test_a_nonce_this_process_does_not_hold_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    foreign = NonceRef(nonce_id="zzzzzzzzzzzz-0", pubnonce=case.mine[1].pubnonce)
    sig = attempt(
        "tx1", 1, SIGNERS, [case.mine[0], foreign], other_nonces(world, SIGNERS, 2), case.certificate
    )
    await deliver(node, sig)
    assert_refused(case, sig, "nonce unknown")
    assert node.keystore.has_nonce(case.mine[0].nonce_id)  # the known one was not taken either


async def test_one_nonce_named_for_two_inputs_is_refused(world: World, node: SignerNode) -> None:
    case = await approved_case(world, node)
    sig = attempt(
        "tx1", 1, SIGNERS, [case.mine[0], case.mine[0]], other_nonces(world, SIGNERS, 2), case.certificate
    )
    await deliver(node, sig)
    assert_refused(case, sig, "names one nonce of this node twice")


async def test_attempts_beyond_the_cap_are_refused_even_after_a_restart(world: World, tmp_path: Path) -> None:
    assert DEFAULT_MAX_ATTEMPTS == 5  # consensus makes at most MAX_ATTEMPTS = 5 attempts of a spend
    node = make_node(world, tmp_path, max_signing_attempts=2)
    case = await approved_case(world, node)
    pool = case.mine + await pool_nonces(node, "more", 6)
    for n in (1, 2):
        sig = attempt(
            "tx1", n, SIGNERS, pool[2 * n - 2 : 2 * n], other_nonces(world, SIGNERS, 2), case.certificate
        )
        await deliver(node, sig)
        assert isinstance(bus_of(node).answers(sig.session_id)[0], PartialSignatures)
    third = attempt("tx1", 3, SIGNERS, pool[4:6], other_nonces(world, SIGNERS, 2), case.certificate)
    case.mine = pool
    await deliver(node, third)
    assert_refused(case, third, "attempt cap")
    assert node.keystore.has_nonce(pool[4].nonce_id) and node.keystore.has_nonce(pool[5].nonce_id)
    # two attempts in ONE batch beyond the cap: neither takes a nonce
    batch = [attempt("tx1", n, SIGNERS, pool[2 * n - 4 : 2 * n - 2], other_nonces(world, SIGNERS, 2),
                     case.certificate) for n in (4, 5)]  # fmt: skip
    await deliver(node, *batch)
    for s in batch:
        assert_refused(case, s, "attempt cap")
    node.close()
    # restarted: the count is still there (its nonces are new ones, pooled by the new process)
    bus2 = GateBus(world.keys[ME], world.identities, stored=bus_of(node).stored)
    again = make_node(world, tmp_path, bus2, max_signing_attempts=2)
    fresh = await pool_nonces(again, "after", 2)
    case = Case(again, case.req, case.sighashes, fresh, case.certificate)
    sig = attempt("tx1", 6, SIGNERS, fresh, other_nonces(world, SIGNERS, 2), case.certificate)
    await deliver(again, sig)
    assert_refused(case, sig, "attempt cap")
    again.close()


async def test_the_cap_counts_attempts_within_one_batch(world: World, tmp_path: Path) -> None:
    node = make_node(world, tmp_path, max_signing_attempts=1)
    case = await approved_case(world, node)
    pool = case.mine + await pool_nonces(node, "more", 2)
    case.mine = pool
    one = attempt("tx1", 1, SIGNERS, pool[0:2], other_nonces(world, SIGNERS, 2), case.certificate)
    two = attempt("tx1", 2, SIGNERS, pool[2:4], other_nonces(world, SIGNERS, 2), case.certificate)
    await deliver(node, one, two)
    assert isinstance(bus_of(node).answers(one.session_id)[0], PartialSignatures)
    assert_refused(case, two, "attempt cap")
    assert node.attempts.count("tx1") == 1
    node.close()


# ---- a restored nonce store; two processes ----------------------------------------------------------------
async def test_a_restored_nonce_store_never_signs_twice_with_a_nonce(world: World, tmp_path: Path) -> None:
    node = make_node(world, tmp_path)
    case = await approved_case(world, node)
    slots = node.keystore.root / "nonces.slots"
    backup = tmp_path / "nonces.slots.backup"
    shutil.copyfile(slots, backup)  # taken while the nonces are pooled
    others = other_nonces(world, SIGNERS, 2)
    first = attempt("tx1", 1, SIGNERS, case.mine, others, case.certificate)
    await deliver(node, first)
    signed = bus_of(node).answers(first.session_id)
    assert len(signed) == 1 and isinstance(signed[0], PartialSignatures)
    presig = await bus_of(node).kv(BUCKET_PRESIG)
    batches_before = [k for k in presig.data if f".{ME}.b." in k]
    assert batches_before
    node.close()

    shutil.copyfile(backup, slots)  # the old copy put back, then the signer restarted
    bus2 = GateBus(world.keys[ME], world.identities, kvs=bus_of(node).kvs, stored=bus_of(node).stored)
    again = make_node(world, tmp_path, bus2)
    tasks = await again.start()
    try:
        assert again.keystore.nonce_count() == 0
        assert not [k for k in presig.data if f".{ME}.b." in k]  # every old batch withdrawn
        assert sorted(presig.deleted) == sorted(batches_before)
        # a coordinator replays the used nonce (and an unused old one) in a new session
        replay = attempt("tx1", 2, SIGNERS, case.mine, other_nonces(world, SIGNERS, 2), case.certificate)
        await deliver(again, replay)
        answers = bus2.answers(replay.session_id)
        assert len(answers) == 1 and isinstance(answers[0], SigningRefused)
        assert "nonce unknown" in answers[0].reason
        # the first session redelivered: the answer it got, not a new signature
        await deliver(again, first)
        assert bus2.answers(first.session_id) == signed
        psigs = [p for _, p, _ in bus2.published if isinstance(p, PartialSignatures)]
        assert psigs == signed
        # the restarted signer pools new nonces and signs with them
        fresh = await pool_nonces(again, "new", 2)
        ok = attempt("tx1", 3, SIGNERS, fresh, other_nonces(world, SIGNERS, 2), case.certificate)
        await deliver(again, ok)
        assert isinstance(bus2.answers(ok.session_id)[0], PartialSignatures)
    finally:
        bus2.stopping.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        again.close()


HOLDER = """
import sys
from services.signer.keystore import Keystore
ks = Keystore(sys.argv[1], "node-1")
ks.open_nonces()
print("held", flush=True)
sys.stdin.read()
"""


async def test_a_second_process_cannot_open_the_nonce_store(world: World, tmp_path: Path) -> None:
    Keystore(tmp_path, ME).save_share(share_record(world, 0))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        with pytest.raises(NonceStoreBusy, match="only one signer of node-1"):
            make_node(world, tmp_path)

        # the service entry point exits with the reason
        @dataclass
        class Ctx:
            cfg: ServiceConfig
            bus: GateBus
            log: Logger

        ctx = Ctx(config(tmp_path, world), GateBus(world.keys[ME], world.identities), Logger("signer-node-1"))
        with pytest.raises(SystemExit, match=r"signer node-1 not started: .* held by another process"):
            await serve(ctx)  # type: ignore[arg-type]
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    make_node(world, tmp_path).close()  # released when the holder exits
