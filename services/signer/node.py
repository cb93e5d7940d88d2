"""One signer node: votes on spends, takes part in ChillDKG, precomputes nonces, signs.

Signing goes through the spend's scheme (:mod:`core.scheme`, FROST today): the node holds the secrets
and checks the attempt; the scheme computes.

Theory of operation
-------------------
The node holds its key share in its own data directory, encrypted at rest
(:mod:`services.signer.keystore`), and its pooled secret nonces in a file encrypted under a key only this
process holds (:mod:`services.signer.nonce_slots`): a pooled nonce dies with the process, so no restart,
restored backup or copied file can ever offer a used nonce again. Nothing secret ever leaves the process
except as a ChillDKG message (whose shares are encrypted to the recipients' host keys) or a partial
signature.

- start: lock the nonce store (a second process for the same node is refused and exits), wipe what an
  earlier process pooled, and withdraw this node's nonce batches from KV ``presig`` (delete
  ``frost.<key>.<node>.b.<batch>``), so pools stop offering nonces nobody holds any more.

- ``tx.requested.<tx>``: recheck the spend from scratch (:mod:`core.policy`) against the
  policy in KV ``config`` (signed by admin, checked on every read and watch update by
  :mod:`services.runtime.signed_kv`: a value that does not verify is reported and the last good policy
  stays in force; a stored policy that never verified makes the node refuse every spend), record the
  verdict in the node's vote journal, publish a signed
  :class:`Vote` on ``vote.<tx>.<node>``. A replayed request re-publishes the recorded vote (same
  ``Nats-Msg-Id``), never a different one.
- ``tx.signing.<tx>``: if this node is in the signer set, check the quorum certificate (``t`` distinct
  approving votes, each signed by its node, each over the sighashes this node recomputes), that this
  process holds every nonce the attempt names for it ("nonce unknown" otherwise: consensus retries with
  another signer set) and that the spend is within its attempt cap (:mod:`services.signer.signing_attempts`);
  a refused attempt takes no nonce. Then count the attempt (durably), for every input take (and delete)
  the pooled secret nonce consensus claimed for it, sign over the sighashes it recomputed itself
  (:meth:`core.scheme.SigningScheme.sign_inputs`, which erases the nonces) and publish the partial
  signatures on ``proto.frost.<session>.2.<node>``. Partial signatures already produced
  for a session are re-published as they were (:mod:`services.signer.answer_log`), so a redelivery never
  needs a nonce twice.
- ``proto.noncegen.<batch>.1.presig.<node>``: generate nonces, store the secret halves, put the public
  halves in KV ``presig`` (``NONCE_BATCH_MAX`` to an entry) where consensus claims them by CAS.
- ``proto.chilldkg.<session>.*.consensus`` and ``proto.chilldkg.<session>.6.consensus.<node>``: the
  participant side of ChillDKG (:mod:`services.signer.dkg_participant`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from core.policy import check_spend
from core.scheme import (
    DEFAULT_SCHEME,
    Attempt,
    SchemeError,
    SigningScheme,
    UnknownScheme,
    scheme_for,
    scheme_names,
)
from schemas import kv as K
from schemas.messages import (
    Heartbeat,
    NonceBatchRequest,
    NonceRef,
    PartialSignatures,
    SigningRefused,
    TxRequested,
    TxSigning,
    Vote,
)
from schemas.names import (
    BUCKET_CONFIG,
    BUCKET_PRESIG,
    check_token,
    durable,
    heartbeat_subject,
    proto_subject,
    tx_subject,
)
from schemas.rest import Policy
from services.runtime.bus import KV, Bus, CasConflict, Received
from services.runtime.config import ServiceConfig
from services.runtime.lookup import last_message
from services.runtime.seal import EnvelopeError, verify_certificate
from services.runtime.signed_kv import NoVerifiedValue, Signed, SignedKV, value_digest
from services.signer.answer_log import AnswerLog
from services.signer.dkg_participant import DkgParticipant
from services.signer.keystore import Keystore, KeystoreError, ShareRecord
from services.signer.signing_attempts import CONFIG_KEY as MAX_ATTEMPTS_KEY
from services.signer.signing_attempts import DEFAULT_MAX_ATTEMPTS, SigningAttempts
from services.signer.vote_journal import JournalEntry, VoteJournal
from wallet.threshold_account import ThresholdAccount

DAY_MS = 24 * 3600 * 1000
HEARTBEAT_SECONDS = 2.0


SIGNING_ACK_WAIT_S = 4.0  # a signing attempt a crashed signer took comes back after this
NONCE_SWEEP_S = 3600.0  # how often expired secret nonces are looked for
NONCE_GEN_SLICE = 8  # nonces generated between two turns of the event loop


class SigningError(Exception):
    """This node refuses to sign this attempt (the reason is safe to publish)."""


REFUSAL_ROUND = "refused"  # proto.<scheme>.<session>.refused.<node>: a signer's refusal, for consensus


@dataclass(frozen=True)
class _Prepared:
    req: TxRequested
    scheme: SigningScheme
    share: ShareRecord
    account: ThresholdAccount
    sighashes: list[bytes]
    my_nonces: list[NonceRef]


class SignerNode:
    def __init__(self, cfg: ServiceConfig, bus: Bus, keystore: Keystore) -> None:
        self.cfg = cfg
        self.bus = bus
        self.node = cfg.identity
        self.keystore = keystore
        self.log = bus.log
        keystore.open_nonces()  # first: NonceStoreBusy if another process runs this node
        self.journal = VoteJournal(keystore.root / "votes.jsonl")
        self.attempts = SigningAttempts(keystore.root / "signing_attempts.jsonl")
        self.max_attempts = int(cfg.extra.get(MAX_ATTEMPTS_KEY, DEFAULT_MAX_ATTEMPTS))
        if self.max_attempts < 1:
            raise ValueError(f"{MAX_ATTEMPTS_KEY} must be at least 1, not {self.max_attempts}")
        self.answers = AnswerLog(keystore.root)
        # the policy in force: the defaults while none is stored, None while the stored one never verified
        self.policy: Policy | None = Policy()
        self.policy_digest = 0  # of the signed policy in force (heartbeats report it), 0 for the defaults
        self.dkg = DkgParticipant(cfg, bus, keystore, self.forget_share_cache)
        self._share_cache: dict[str, tuple[ShareRecord, ThresholdAccount]] = {}
        # requests this process approved (checked when voting): signing them needs no second look-up
        self.approved: dict[str, TxRequested] = {}
        self.my_votes: dict[bytes, None] = {}  # the sealed envelopes of this process's latest approvals
        self._lock = asyncio.Lock()
        self._beat_now = asyncio.Event()  # a heartbeat now (the policy changed), not in 2 s

    # ---- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> list[asyncio.Task[Any]]:
        await self.dkg.publish_hostpubkey()
        await self.dkg.restate_results()
        self.config = await SignedKV.open(self.bus, BUCKET_CONFIG)
        await self._load_policy()
        await self._withdraw_nonce_batches()  # before nonce generation starts: only earlier ones go
        me = self.node
        return [
            self.bus.start_batch_consumer(*durable(me, "signer-{self}-requests"), self.on_requests, batch=64),
            # redelivered to a restarted signer well before consensus gives the attempt up (10 s)
            self.bus.start_batch_consumer(
                *durable(me, "signer-{self}-signing"),
                self.on_signings,
                batch=64,
                ack_wait=SIGNING_ACK_WAIT_S,
            ),
            self.bus.start_consumer(*durable(me, "signer-{self}-noncegen"), self.on_noncegen),
            self.bus.start_consumer(*durable(me, "signer-{self}-dkg"), self.dkg.on_message),
            self.bus.start_consumer(*durable(me, "signer-{self}-dkg-inv"), self.dkg.on_message),
            asyncio.create_task(self.dkg.run_retransmits()),
            asyncio.create_task(self._watch_policy()),
            asyncio.create_task(self._heartbeat()),
            asyncio.create_task(self._sweep_nonces()),
        ]

    def close(self) -> None:
        """Release the node's files (the nonce store's lock with them; its pooled nonces die)."""
        self.keystore.close()
        self.journal.close()
        self.attempts.close()
        self.answers.close()

    async def _withdraw_nonce_batches(self) -> None:
        """Delete this node's nonce batches from KV ``presig``: the nonces they announce were pooled by an
        earlier process and died with it. A consensus that claimed one drops what it has not handed out
        (:class:`services.runtime.nonce_pool.NoncePool`); one it hands out anyway is refused."""
        presig = await self.bus.kv(BUCKET_PRESIG)
        old: list[str] = []
        watch = presig.watch(f"{scheme_for(DEFAULT_SCHEME).name}.*.{self.node}.b.*")
        try:
            async for entry in watch:
                if entry is None:
                    break
                if entry.operation == "PUT":
                    old.append(entry.key)
        finally:
            await watch.aclose()
        for i in range(0, len(old), 64):
            await asyncio.gather(*(presig.delete(key) for key in old[i : i + 64]))
        if old:
            self.log.info("nonce batches of an earlier process withdrawn", batches=len(old))

    async def _sweep_nonces(self) -> None:
        """Hourly (and at start): secret nonces whose KV entries expired unclaimed are deleted."""
        while not self.bus.stopping.is_set():
            async with self._lock:  # not while a signing batch takes nonces
                gone = self.keystore.sweep_nonces(K.NONCE_FILE_MAX_AGE_S)
            if gone:
                self.log.info("expired secret nonces deleted", count=gone)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.bus.stopping.wait(), NONCE_SWEEP_S)

    async def _load_policy(self) -> None:
        try:
            signed = await self.config.get(K.POLICY_KEY, Policy)
        except NoVerifiedValue as exc:
            self.policy = None
            self.log.error("the stored policy does not verify: every spend is refused", why=exc.why.kind)
            return
        if signed is not None:
            self._apply_policy(signed)

    def _apply_policy(self, signed: Signed[Policy]) -> None:
        self.policy = signed.value
        self.policy_digest = value_digest(signed.raw)
        self.log.info("policy applied", version=signed.value.version, digest=self.policy_digest)

    async def _watch_policy(self) -> None:
        async for item in self.config.watch(K.POLICY_KEY, Policy):
            if isinstance(item, Signed):
                self._apply_policy(item)
                self._beat_now.set()

    async def _heartbeat(self) -> None:
        while not self.bus.stopping.is_set():
            now = int(time.time() * 1000)
            hb = Heartbeat(
                node=self.node,
                ts_ms=now,
                ready=True,
                detail={
                    "nonces": self.keystore.nonce_count(),
                    "policy_version": self.policy.version if self.policy is not None else 0,
                    "policy_digest": self.policy_digest,
                },
            )
            try:
                await self.bus.publish(heartbeat_subject(self.node), hb, f"hb.{self.node}.{now}")
            except Exception as exc:
                self.log.warning("heartbeat failed", error=repr(exc)[:200])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._beat_now.wait(), HEARTBEAT_SECONDS)
            self._beat_now.clear()

    # ---- key material -------------------------------------------------------------------------------
    def share(self, key_id: str) -> tuple[ShareRecord, ThresholdAccount]:
        cached = self._share_cache.get(key_id)
        if cached is None:
            rec = self.keystore.load_share(key_id)
            cached = (rec, ThresholdAccount(rec.threshold_pubkey, rec.chain_code, self.cfg.network))
            self._share_cache[key_id] = cached
        return cached

    def forget_share_cache(self) -> None:
        self._share_cache.clear()

    # ---- voting -------------------------------------------------------------------------------------
    async def on_requests(self, batch: list[Received]) -> None:
        """A fetched batch of spend requests: decide each, journal them with one fsync, then vote."""
        reqs = [r.payload for r in batch if isinstance(r.payload, TxRequested) and r.sender == "intake"]
        async with self._lock:
            fresh: list[JournalEntry] = []
            entries: list[JournalEntry] = []
            for req in reqs:
                entry = self.journal.entries.get(req.tx_id) or next(
                    (e for e in fresh if e.tx_id == req.tx_id), None
                )
                if entry is None:
                    pending = sum(e.amount for e in fresh if e.approve)  # approved earlier in this batch
                    entry = self._decide(req, pending)
                    fresh.append(entry)
                entries.append(entry)
            self.journal.record(fresh)
            for req, entry in zip(reqs, entries, strict=True):
                if entry.approve:
                    self.approved[req.tx_id] = req
            while len(self.approved) > 10_000:
                self.approved.pop(next(iter(self.approved)))
        await asyncio.gather(
            *(self._publish_vote(req, entry) for req, entry in zip(reqs, entries, strict=True))
        )

    async def _publish_vote(self, req: TxRequested, entry: JournalEntry) -> None:
        vote = Vote(
            tx_id=req.tx_id,
            node=self.node,
            approve=entry.approve,
            reasons=entry.reasons,
            sighashes=[bytes.fromhex(h) for h in entry.sighashes],
            policy_version=entry.policy_version,
        )
        subject = f"vote.{req.tx_id}.{self.node}"
        sealed = self.bus.seal(subject, vote, subject)
        if entry.approve:  # its certificate will hold these bytes: no signature of ours to check there
            self.my_votes[sealed] = None
            while len(self.my_votes) > 10_000:
                self.my_votes.pop(next(iter(self.my_votes)))
        await self.bus.publish_raw(subject, sealed, subject)

    def _decide(self, req: TxRequested, pending: int = 0) -> JournalEntry:
        now = int(time.time() * 1000)
        sighashes: list[bytes] = []
        try:
            _, account = self.share(req.key_id)
        except (KeystoreError, ValueError):
            reasons = [f"this node holds no share of key {req.key_id!r}"]
        else:
            if self.policy is None:
                reasons = ["no verified policy: the stored policy is not signed by admin"]
            else:
                spent = self.journal.spent_since(now - DAY_MS) + pending
                res = check_spend(req, self.policy, account, spent)
                reasons, sighashes = res.reasons, res.sighashes
        self.log.info("vote", tx_id=req.tx_id, approve=not reasons, reasons=reasons[:5])
        return JournalEntry(
            req.tx_id,
            not reasons,
            req.amount,
            now,
            [h.hex() for h in sighashes],
            reasons,
            self.policy.version if self.policy is not None else 0,
        )

    # ---- signing ------------------------------------------------------------------------------------
    async def on_signings(self, batch: list[Received]) -> None:
        """A fetched batch of signing attempts naming this node: check each, count the ones that pass
        (one fsync for the batch), take every nonce they need, sign, and publish the partial signatures
        (or the refusals)."""
        sigs = [
            r.payload
            for r in batch
            if isinstance(r.payload, TxSigning) and r.sender == "consensus" and self.node in r.payload.signers
        ]
        outs: list[PartialSignatures | SigningRefused] = []
        fresh: list[PartialSignatures | SigningRefused] = []
        async with self._lock:
            todo: list[tuple[TxSigning, _Prepared | SigningError]] = []
            counting: list[tuple[str, str]] = []  # (tx_id, session) of the attempts that will take nonces
            sessions: set[str] = set()
            for sig in sigs:
                cached = self.answers.get(sig.session_id)
                if cached is not None:  # a redelivery: publish exactly what was produced before
                    outs.append(cached)
                    continue
                if sig.session_id in sessions:
                    continue  # delivered twice in this batch: answered once
                sessions.add(sig.session_id)
                try:
                    prepared = await self._prepare(sig)
                    self._check_attempt_cap(sig, counting)
                except SigningError as exc:
                    todo.append((sig, exc))
                    continue
                counting.append((sig.tx_id, sig.session_id))
                todo.append((sig, prepared))
            self.attempts.record(counting)  # durable before any nonce is taken (one sync)
            wanted = [ref.nonce_id for _, p in todo if isinstance(p, _Prepared) for ref in p.my_nonces]
            secnonces = self.keystore.take_nonces(wanted)
            for sig, prep in todo:
                try:
                    if isinstance(prep, SigningError):
                        raise prep
                    out: PartialSignatures | SigningRefused = PartialSignatures(
                        tx_id=sig.tx_id,
                        session_id=sig.session_id,
                        attempt=sig.attempt,
                        node=self.node,
                        psigs=self._sign(sig, prep, secnonces),
                    )
                except SigningError as exc:
                    self.log.warning(
                        "refusing to sign", tx_id=sig.tx_id, attempt=sig.attempt, reason=str(exc)
                    )
                    out = SigningRefused(
                        tx_id=sig.tx_id, session_id=sig.session_id, attempt=sig.attempt, node=self.node,
                        reason=str(exc),
                    )  # fmt: skip
                outs.append(out)
                fresh.append(out)
        await asyncio.gather(*(self._publish_answer(o) for o in outs))
        # kept after it left (not before: it is off the spend's path), not fsynced: if it is lost, a
        # redelivery finds the nonces used, refuses, and consensus retries; it only spares that
        self.answers.add(fresh)

    async def _publish_answer(self, out: PartialSignatures | SigningRefused) -> None:
        """On ``proto.<scheme>.<session>.2.<node>`` (or ``.refused.<node>``), the spend's scheme."""
        round_ = 2 if isinstance(out, PartialSignatures) else REFUSAL_ROUND
        req = self.approved.get(out.tx_id)
        scheme = req.scheme if req is not None and req.scheme in scheme_names() else DEFAULT_SCHEME
        subject = proto_subject(scheme, out.session_id, round_, self.node)
        kind = "psig" if isinstance(out, PartialSignatures) else "refused"
        await self.bus.publish(subject, out, f"{kind}.{out.session_id}.{self.node}")

    async def _prepare(self, sig: TxSigning) -> _Prepared:
        """Everything but the nonces: the request, this node's approval, the certificate, the signer set."""
        entry = self.journal.entries.get(sig.tx_id)
        if entry is None or not entry.approve:
            raise SigningError("this node did not approve this transaction")
        req = self.approved.get(sig.tx_id)
        if req is None:  # approved before a restart: fetch the request and check it again
            req_msg = await last_message(self.bus, tx_subject("requested", sig.tx_id))
            if req_msg is None or not isinstance(req_msg.payload, TxRequested) or req_msg.sender != "intake":
                raise SigningError("no verified spend request for this transaction")
            req = req_msg.payload
        try:
            scheme = scheme_for(req.scheme)
        except UnknownScheme as exc:
            raise SigningError(str(exc)) from exc
        try:
            share, account = self.share(req.key_id)
        except (KeystoreError, ValueError) as exc:
            raise SigningError(f"no share of key {req.key_id!r}") from exc
        if share.scheme != scheme.name:
            raise SigningError(f"key {req.key_id!r} is not a {scheme.name} key")
        if req.tx_id not in self.approved:
            # the spend as this node sees it now (structure only: the policy was applied when voting)
            res = check_spend(req, None, account)
            if res.reasons or [h.hex() for h in res.sighashes] != entry.sighashes:
                raise SigningError("the spend no longer matches what this node approved")
        sighashes = [bytes.fromhex(h) for h in entry.sighashes]
        approvers = self._check_certificate(sig, sighashes)
        self._check_signer_set(sig, share, approvers)
        my_nonces = sig.nonces[self.node]
        for ref in my_nonces:
            try:
                check_token(ref.nonce_id)
            except ValueError as exc:
                raise SigningError("a nonce id of this node is malformed") from exc
        if len(my_nonces) != len(req.inputs) or any(
            len(sig.nonces[s]) != len(req.inputs) for s in sig.signers
        ):
            raise SigningError("the attempt does not list one nonce per input for every signer")
        if len({ref.nonce_id for ref in my_nonces}) != len(my_nonces):
            raise SigningError("the attempt names one nonce of this node twice")
        unknown = [ref.nonce_id for ref in my_nonces if not self.keystore.has_nonce(ref.nonce_id)]
        if unknown:
            raise SigningError(
                f"nonce unknown: {unknown[0]} is not held by this signer process (used, expired, or "
                "pooled before a restart)"
            )
        return _Prepared(req, scheme, share, account, sighashes, list(my_nonces))

    def _check_attempt_cap(self, sig: TxSigning, counting: list[tuple[str, str]]) -> None:
        """At most ``max_attempts`` sessions of a spend take nonces on this node (``counting``: the
        attempts of the batch being prepared, not recorded yet)."""
        if self.attempts.counted(sig.tx_id, sig.session_id):
            return  # its nonces are used already (the refusal follows), it counts once
        done = self.attempts.count(sig.tx_id) + sum(1 for t, _ in counting if t == sig.tx_id)
        if done >= self.max_attempts:
            raise SigningError(
                f"attempt cap: this node already took nonces for {done} attempts of this spend "
                f"(at most {self.max_attempts})"
            )

    def _sign(self, sig: TxSigning, prep: _Prepared, secnonces: dict[str, bytearray | None]) -> list[bytes]:
        """This node's partial signatures for the attempt, by the spend's scheme; every nonce taken for
        it is erased (the scheme erases what it is handed; the rest here)."""
        # never twice, even within one batch: whatever is taken for this attempt leaves the dict
        mine = [secnonces.pop(ref.nonce_id, None) for ref in prep.my_nonces]
        try:
            attempt = Attempt(
                tuple(sig.signers),
                tuple(sig.signer_ids),
                {s: [ref.pubnonce for ref in sig.nonces[s]] for s in sig.signers},
            )
            inputs = [
                prep.scheme.spend_input(prep.account, ref.derivation, sighash)
                for ref, sighash in zip(prep.req.inputs, prep.sighashes, strict=True)
            ]
            psigs = prep.scheme.sign_inputs(prep.share, attempt, self.node, mine, inputs)
        except (SchemeError, ValueError) as exc:
            raise SigningError(str(exc)) from exc
        finally:
            for secnonce in mine:
                if secnonce is not None:
                    secnonce[:] = bytes(len(secnonce))
        self.log.info("signed", tx_id=sig.tx_id, attempt=sig.attempt, inputs=len(psigs))
        return psigs

    def _check_certificate(self, sig: TxSigning, sighashes: list[bytes]) -> set[str]:
        """The nodes whose approving votes of these sighashes the certificate holds (at least t)."""
        try:
            envs = verify_certificate(sig.certificate, self.bus.identities, own=self.my_votes)
        except EnvelopeError as exc:
            raise SigningError(
                f"quorum certificate does not verify: {exc.kind} ({exc.detail[:200]})"
            ) from exc
        voters: set[str] = set()
        for env in envs:
            try:
                vote = msgspec.msgpack.decode(env.payload, type=Vote)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise SigningError("certificate vote does not decode") from exc
            if not isinstance(vote, Vote) or vote.node != env.sender or env.sender not in self.cfg.nodes:
                raise SigningError("certificate holds something other than a node's own vote")
            if vote.tx_id != sig.tx_id or not vote.approve:
                raise SigningError("certificate holds a vote for another transaction or a rejection")
            if list(vote.sighashes) != sighashes:
                raise SigningError(f"{vote.node} approved different sighashes")
            voters.add(vote.node)
        if len(voters) < self.cfg.t:
            raise SigningError(f"certificate has {len(voters)} approvals, {self.cfg.t} needed")
        return voters

    def _check_signer_set(self, sig: TxSigning, share: ShareRecord, approvers: set[str]) -> None:
        """The signers are distinct nodes at their participant ids, at least t, each with nonces listed
        and each an approver in the certificate (the quorum); this node is one of them."""
        if len(sig.signers) != len(sig.signer_ids) or len(set(sig.signers)) != len(sig.signers):
            raise SigningError("malformed signer set")
        if len(sig.signers) < share.t:
            raise SigningError(f"{len(sig.signers)} signers, {share.t} needed")
        for name, pid in zip(sig.signers, sig.signer_ids, strict=True):
            if name not in self.cfg.nodes or self.cfg.nodes.index(name) != pid:
                raise SigningError(f"signer {name} listed with the wrong participant id")
            if name not in sig.nonces:
                raise SigningError(f"no nonces listed for {name}")
            if name not in approvers:
                raise SigningError(f"signer {name} is outside the quorum (no approval in the certificate)")
        if share.index != self.cfg.nodes.index(self.node):
            raise SigningError("this node's share index does not match its position")

    # ---- nonce pool ---------------------------------------------------------------------------------
    async def on_noncegen(self, rec: Received) -> None:
        req = rec.payload
        if not isinstance(req, NonceBatchRequest) or rec.sender != "presig" or req.node != self.node:
            return
        key_id = K.DEFAULT_KEY_ID
        try:
            share, _ = self.share(key_id)
        except (KeystoreError, ValueError):
            self.log.info("nonce request before DKG; ignored", batch=req.batch_id)
            return
        try:
            scheme = scheme_for(share.scheme)
        except UnknownScheme:
            self.log.warning("nonce request for a key of an unknown scheme; ignored", batch=req.batch_id)
            return
        presig = await self.bus.kv(BUCKET_PRESIG)
        count = max(0, min(req.count, 1000))
        # generated and kept a batch at a time; each batch's commitments go out in one KV entry while
        # the next is generated, so consensus can use the first ones at once
        announcing: asyncio.Future[None] | None = None
        for j, start in enumerate(range(0, count, K.NONCE_BATCH_MAX)):
            fresh: list[K.NonceCommitment] = []
            for k in range(start, min(count, start + K.NONCE_BATCH_MAX)):
                nonce_id = f"{req.batch_id}-{k}"
                if self.keystore.has_nonce(nonce_id):
                    continue  # redelivered request: this one exists already
                secnonce, pubnonce = scheme.make_material(share, nonce_id.encode())
                self.keystore.save_nonce(nonce_id, bytes(secnonce))
                secnonce[:] = bytes(len(secnonce))
                fresh.append(K.NonceCommitment(nonce_id, pubnonce))
                if len(fresh) % NONCE_GEN_SLICE == 0:
                    await asyncio.sleep(0)  # a spend's messages are not held up behind a whole batch
            if announcing is not None:
                await announcing
                announcing = None
            if fresh:
                batch = K.NonceBatch(
                    node=self.node,
                    batch_id=f"{req.batch_id}_{j}",
                    created_ms=int(time.time() * 1000),
                    nonces=fresh,
                )
                announcing = asyncio.ensure_future(self._announce_nonces(presig, key_id, batch))
        if announcing is not None:
            await announcing

    async def _announce_nonces(self, presig: KV, key_id: str, batch: K.NonceBatch) -> None:
        try:
            await presig.create(K.nonce_batch_key(key_id, self.node, batch.batch_id), batch)
        except CasConflict:
            self.log.debug("nonce batch already announced", batch=batch.batch_id)
