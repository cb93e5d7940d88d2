"""``python -m services.consensus --data-dir DIR``: voting rounds, signer sets, retries, DKG coordination.

Theory of operation
-------------------
Voting: ``tx.requested.<tx>`` opens a round (KV ``rounds``, create-only, so a replayed request opens
nothing new) and announces ``tx.voting``; every ``vote.<tx>.<node>`` is added by compare-and-set on the
round's revision (:mod:`services.consensus.tally`: first vote counts, equivocation is reported). At ``t``
approvals ``tx.approved`` carries the quorum certificate (the ``t`` signed vote envelopes); once approval
is impossible ``tx.rejected`` carries the reasons.

Signing: an attempt picks ``t`` approvers (rotating, skipping nodes that refused or timed out), claims
for each signer one pooled FROST nonce per input from KV ``presig`` by compare-and-set (a nonce is
claimed at most once, ever), and publishes ``tx.signing``. A refusal or a timeout starts the next
attempt with fresh nonces; after ``MAX_ATTEMPTS`` the spend ends ``failed``.

DKG: a ``dkg.<session>`` request in KV ``config`` (written by ``mpcw dkg start``) makes this service the
(untrusted) ChillDKG coordinator. It is stateless: on every participant message it reads the round's
messages back from the stream and, once all ``n`` are there, computes and broadcasts its message; the
public result goes to KV ``keys``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from schemas import kv as K
from schemas.messages import (
    REGISTRY,
    DkgMessage,
    DkgStart,
    NonceRef,
    SigningRefused,
    TxApproved,
    TxFailed,
    TxRejected,
    TxRequested,
    TxSigning,
    TxVoting,
    Violation,
    Vote,
)
from schemas.names import (
    BUCKET_BANS,
    BUCKET_CONFIG,
    BUCKET_KEYS,
    BUCKET_ROUNDS,
    proto_subject,
    tx_subject,
    violation_subject,
)
from services.consensus import tally
from services.runtime.bus import CasConflict, Received
from services.runtime.lookup import last_message
from services.runtime.nonce_pool import NoncePool
from services.runtime.service import ServiceContext, run_service
from tss import chilldkg
from wallet.threshold_account import dkg_chain_code

SIGNING_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 5


RoundChange = Callable[[K.RoundRecord], bool]


def now_ms() -> int:
    return int(time.time() * 1000)


class Consensus:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.bus = ctx.bus
        self.cfg = ctx.cfg
        self.log = ctx.log
        self.nodes = list(self.cfg.nodes)
        self.pool = NoncePool(self.bus)
        self.active: dict[str, tuple[int, float]] = {}  # tx_id -> (attempt, started monotonic)
        self.rounds: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # tx_id -> (revision, record)
        self.bans: dict[str, int] = {}  # node -> banned until (ms), mirrored from KV bans

    # ---- rounds in KV -------------------------------------------------------------------------------
    async def _update(self, tx_id: str, change: RoundChange) -> K.RoundRecord:
        """Apply ``change`` to the round by compare-and-set, starting from the cached copy (one round trip
        when this instance was the last writer), re-reading on a conflict."""
        kv = await self.bus.kv(BUCKET_ROUNDS)
        cached = self.rounds.get(tx_id)
        while True:
            if cached is not None:
                revision, raw = cached
                cached = None
                rnd = msgspec.msgpack.decode(raw, type=K.RoundRecord)
                if not change(rnd):
                    continue  # nothing to do on the cached copy: decide on a fresh read
                try:
                    rev = await kv.update_cas(tx_id, rnd, revision)
                    self._cache(tx_id, rev, rnd)
                    return rnd
                except CasConflict:
                    continue
            entry = await kv.get(tx_id)
            if entry is None:
                rnd = tally.new_round(tx_id, self.cfg.n, self.cfg.t, self.nodes)
                change(rnd)
                try:
                    rev = await kv.create(tx_id, rnd)
                    self._cache(tx_id, rev, rnd)
                    return rnd
                except CasConflict:
                    continue
            rnd = entry.decode(K.RoundRecord)
            if not change(rnd):
                self._cache(tx_id, entry.revision, rnd)
                return rnd
            try:
                rev = await kv.update_cas(tx_id, rnd, entry.revision)
                self._cache(tx_id, rev, rnd)
                return rnd
            except CasConflict:
                continue

    def _cache(self, tx_id: str, revision: int, rnd: K.RoundRecord) -> None:
        self.rounds[tx_id] = (revision, msgspec.msgpack.encode(rnd))
        self.rounds.move_to_end(tx_id)
        while len(self.rounds) > 10_000:
            self.rounds.popitem(last=False)

    # ---- voting -------------------------------------------------------------------------------------
    async def on_requested(self, rec: Received) -> None:
        req = rec.payload
        if not isinstance(req, TxRequested) or rec.sender != "intake":
            return

        def open_round(rnd: K.RoundRecord) -> bool:
            if rnd.opened:
                return False
            rnd.opened = True
            rnd.amount = req.amount
            rnd.inputs = len(req.inputs)
            return True

        # announce first, then mark opened: a crash in between re-announces (de-duplicated by msg id)
        await self.bus.publish(
            tx_subject("voting", req.tx_id),
            TxVoting(tx_id=req.tx_id, round_id=req.tx_id, threshold=self.cfg.t, total_nodes=self.cfg.n),
            f"voting.{req.tx_id}",
        )
        rnd = await self._update(req.tx_id, open_round)
        await self._decide(rnd)

    async def on_votes(self, batch: list[Received]) -> None:
        """A fetched batch of votes: each transaction's votes go into its round with one compare-and-set."""
        by_tx: dict[str, list[tuple[Received, Vote]]] = {}
        for rec in batch:
            vote = rec.payload
            if not isinstance(vote, Vote):
                continue
            tx_id = rec.subject.split(".")[1]
            if vote.node != rec.sender or vote.tx_id != tx_id:
                await self._violation(rec.sender, "bad-vote", "vote body does not match its subject", tx_id)
                continue
            by_tx.setdefault(tx_id, []).append((rec, vote))
        for tx_id, votes in by_tx.items():
            equivocators: list[str] = []
            add = _vote_adder(votes, equivocators)
            rnd = await self._update(tx_id, add)
            for node in equivocators:
                await self._violation(node, "equivocation", "voted both ways", tx_id)
            await self._decide(rnd)

    async def _decide(self, rnd: K.RoundRecord) -> None:
        if not rnd.opened or rnd.outcome != "open":
            if rnd.outcome == "approved" and rnd.attempt == 0 and not rnd.done:
                await self._next_attempt(rnd.tx_id, from_attempt=0)
            return
        out = tally.outcome(rnd)
        if out is tally.Outcome.APPROVED:
            cert = tally.certificate(rnd)
            await self.bus.publish(
                tx_subject("approved", rnd.tx_id),
                TxApproved(tx_id=rnd.tx_id, round_id=rnd.tx_id, certificate=cert),
                f"approved.{rnd.tx_id}",
            )
            await self._update(rnd.tx_id, lambda r: _set(r, outcome="approved"))
            await self._next_attempt(rnd.tx_id, from_attempt=0)
        elif out is tally.Outcome.REJECTED:
            reasons = tally.rejection_reasons(rnd)
            cert = [rnd.votes[n] for n in rnd.nodes if rnd.approve.get(n) is False]
            await self.bus.publish(
                tx_subject("rejected", rnd.tx_id),
                TxRejected(tx_id=rnd.tx_id, reasons=reasons, certificate=cert),
                f"rejected.{rnd.tx_id}",
            )
            await self._update(rnd.tx_id, lambda r: _set(r, outcome="rejected", done=True))

    # ---- signing attempts ---------------------------------------------------------------------------
    async def _next_attempt(
        self, tx_id: str, failed: str | None = None, from_attempt: int | None = None
    ) -> None:
        started: list[int] = []

        def bump(rnd: K.RoundRecord) -> bool:
            if rnd.done or rnd.outcome != "approved":
                return False
            if from_attempt is not None and rnd.attempt != from_attempt:
                return False  # somebody already moved on
            if failed and failed not in rnd.failed_signers:
                rnd.failed_signers.append(failed)
            rnd.attempt += 1
            rnd.attempt_started_ms = now_ms()
            started.append(rnd.attempt)
            return True

        rnd = await self._update(tx_id, bump)
        if not started:
            return
        attempt = started[0]
        if attempt > MAX_ATTEMPTS:
            await self._fail(tx_id, f"no signer set completed after {MAX_ATTEMPTS} attempts")
            return
        approvers = tally.approvers(rnd)
        banned = {n for n, until in self.bans.items() if until > now_ms()}
        await self.pool.loaded.wait()
        # nodes without a nonce per input right now are passed over (claiming some would burn them)
        short = {n for n in approvers if self.pool.level(n) < rnd.inputs}
        signers = tally.choose_signers(approvers, rnd.t, set(rnd.failed_signers) | banned | short, attempt)
        if signers is None:
            # everybody failed once: try again with every approver that is not banned
            signers = tally.choose_signers(approvers, rnd.t, banned | short, attempt)
        if signers is None:
            if tally.choose_signers(approvers, rnd.t, banned, attempt) is None:
                await self._fail(tx_id, "fewer than t approving signers available")
                return
            self.log.warning("nonce pools too low for a signer set; retrying shortly", tx_id=tx_id)
            self.active[tx_id] = (attempt, time.monotonic() - SIGNING_TIMEOUT_S + 1.0)
            return
        claims = await asyncio.gather(*(self.pool.claim(n, rnd.inputs, tx_id, attempt) for n in signers))
        nonces: dict[str, list[NonceRef]] = {}
        for node, got in zip(signers, claims, strict=True):
            if got is None:
                self.log.warning("nonce pool empty", node=node, tx_id=tx_id)
                self.active[tx_id] = (attempt, time.monotonic() - SIGNING_TIMEOUT_S + 1.0)
                await self._update(tx_id, functools.partial(_add_failed, node=node))
                return
            nonces[node] = got
        session_id = f"{tx_id}-a{attempt}"
        await self.bus.publish(
            tx_subject("signing", tx_id),
            TxSigning(
                tx_id=tx_id,
                attempt=attempt,
                session_id=session_id,
                signers=signers,
                signer_ids=[self.nodes.index(s) for s in signers],
                nonces=nonces,
                certificate=tally.certificate(rnd),
            ),
            f"signing.{tx_id}.{attempt}",
        )
        self.active[tx_id] = (attempt, time.monotonic())

    async def _fail(self, tx_id: str, reason: str) -> None:
        """Give up on a spend: the round is closed first (late refusals and timeouts then do nothing),
        and nothing is reported failed once it is signed (the broadcaster finishes it)."""
        self.active.pop(tx_id, None)
        await self._update(tx_id, lambda r: _set(r, done=True))
        if await last_message(self.bus, tx_subject("signed", tx_id)) is not None:
            return
        await self.bus.publish(
            tx_subject("failed", tx_id), TxFailed(tx_id=tx_id, reason=reason), f"failed.{tx_id}"
        )

    async def on_tx_event(self, rec: Received) -> None:
        event, tx_id = rec.subject.split(".")[1:3]
        if event in ("signed", "failed"):
            self.active.pop(tx_id, None)
            await self._update(tx_id, lambda r: not r.done and _set(r, done=True))

    async def on_refused(self, rec: Received) -> None:
        msg = rec.payload
        if not isinstance(msg, SigningRefused) or msg.node != rec.sender:
            return
        current = await last_message(self.bus, tx_subject("signing", msg.tx_id))
        if (
            current is None
            or not isinstance(current.payload, TxSigning)
            or current.payload.session_id != msg.session_id
            or msg.node not in current.payload.signers
        ):
            return  # not a signer of the current attempt: a refusal from it changes nothing
        self.log.warning("signer refused", tx_id=msg.tx_id, node=msg.node, reason=msg.reason)
        await self._next_attempt(msg.tx_id, failed=msg.node, from_attempt=msg.attempt)

    async def on_violation(self, rec: Received) -> None:
        """The broadcaster blamed a signer for an invalid partial signature: retry without it now."""
        v = rec.payload
        if not isinstance(v, Violation) or rec.sender != "broadcaster" or v.kind != "invalid-partial-sig":
            return
        current = self.active.get(v.tx_id)
        if current is not None:
            await self._next_attempt(v.tx_id, failed=v.offender, from_attempt=current[0])

    async def watch_bans(self) -> None:
        kv = await self.bus.kv(BUCKET_BANS)
        async for entry in kv.watch():
            if entry is None:
                continue
            if entry.operation != "PUT":
                self.bans.pop(entry.key, None)
                continue
            try:
                ban = entry.decode(K.BanRecord)
            except (msgspec.DecodeError, msgspec.ValidationError):
                continue
            self.bans[ban.node] = ban.until_ms
            self.log.warning("node banned: not chosen as a signer", node=ban.node, until_ms=ban.until_ms)

    async def watch_timeouts(self) -> None:
        while not self.ctx.stop.is_set():
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for tx_id, (attempt, started) in list(self.active.items()):
                if now - started > SIGNING_TIMEOUT_S:
                    self.active.pop(tx_id, None)
                    self.log.warning("signing attempt timed out", tx_id=tx_id, attempt=attempt)
                    try:
                        await self._next_attempt(tx_id, from_attempt=attempt)
                    except Exception as exc:
                        self.log.error("retry failed", tx_id=tx_id, error=repr(exc)[:200])

    async def resume(self) -> None:
        """After a restart: every approved, unfinished round gets its timer back."""
        kv = await self.bus.kv(BUCKET_ROUNDS)
        for key in await kv.keys():
            entry = await kv.get(key)
            if entry is None:
                continue
            rnd = entry.decode(K.RoundRecord)
            if rnd.outcome == "approved" and not rnd.done:
                self.active[rnd.tx_id] = (rnd.attempt, time.monotonic())

    async def _violation(self, offender: str, kind: str, detail: str, tx_id: str = "") -> None:
        v = Violation(offender=offender, kind=kind, detail=detail, reporter=self.cfg.identity, tx_id=tx_id)
        await self.bus.publish(violation_subject(offender), v, f"viol.{kind}.{offender}.{tx_id}")

    # ---- DKG coordinator ----------------------------------------------------------------------------
    async def watch_dkg_requests(self) -> None:
        kv = await self.bus.kv(BUCKET_CONFIG)
        async for entry in kv.watch("dkg.>"):
            if entry is None or entry.operation != "PUT":
                continue
            try:
                req = entry.decode(K.DkgRequest)
                await self._dkg_start(req)
            except Exception as exc:
                self.log.error("dkg request failed", key=entry.key, error=repr(exc)[:300])

    async def _dkg_start(self, req: K.DkgRequest) -> None:
        keys = await self.bus.kv(BUCKET_KEYS)
        if await keys.get(K.key_record_key(req.scheme, req.key_id)) is not None:
            self.log.info("key exists; dkg request ignored", key_id=req.key_id)
            return
        hostpubkeys = []
        for node in req.nodes:
            e = await keys.get(K.hostpubkey_key(node))
            if e is None:
                raise RuntimeError(f"{node} has not published its host public key yet")
            hostpubkeys.append(e.decode(K.HostPubkey).hostpubkey)
        start = DkgStart(
            session_id=req.session_id,
            scheme=req.scheme,
            nodes=list(req.nodes),
            threshold=req.threshold,
            hostpubkeys=hostpubkeys,
            key_id=req.key_id,
        )
        await self.bus.publish(
            proto_subject("chilldkg", req.session_id, 0, "consensus"), start, f"dkg.{req.session_id}.0"
        )

    async def on_dkg(self, rec: Received) -> None:
        msg = rec.payload
        if not isinstance(msg, DkgMessage) or msg.round not in (1, 3):
            return
        start_msg = await last_message(self.bus, proto_subject("chilldkg", msg.session_id, 0, "consensus"))
        if start_msg is None or not isinstance(start_msg.payload, DkgStart):
            return
        start: DkgStart = start_msg.payload
        round1 = await self._gather(start, 1)
        if round1 is None:
            return
        params = chilldkg.SessionParams(list(start.hostpubkeys), start.threshold)
        try:
            state, cmsg1 = chilldkg.coordinator_step1(round1, params)
        except chilldkg.FaultyParticipantError as exc:
            culprit = (
                start.nodes[exc.participant_id] if 0 <= exc.participant_id < len(start.nodes) else "unknown"
            )
            await self._violation(culprit, "dkg-invalid-message", str(exc)[:200])
            return
        if msg.round == 1:
            await self._dkg_send(start, 2, cmsg1)
            return
        round3 = await self._gather(start, 3)
        if round3 is None:
            return
        try:
            cmsg2, output, recovery = chilldkg.coordinator_finalize(state, round3)
        except chilldkg.FaultyParticipantError as exc:
            culprit = (
                start.nodes[exc.participant_id] if 0 <= exc.participant_id < len(start.nodes) else "unknown"
            )
            await self._violation(culprit, "dkg-invalid-signature", str(exc)[:200])
            return
        record = K.KeyRecord(
            key_id=start.key_id,
            scheme=start.scheme,
            threshold_pubkey=output.thresh_pk,
            pubshares=list(output.pubshares),
            chain_code=dkg_chain_code(chilldkg.params_hash(params), output.thresh_pk),
            nodes=list(start.nodes),
            n=len(start.nodes),
            t=start.threshold,
            session_id=start.session_id,
            hostpubkeys=list(start.hostpubkeys),
            recovery_data=bytes(recovery),
            created_ms=now_ms(),
        )
        keys = await self.bus.kv(BUCKET_KEYS)
        try:
            await keys.create(K.key_record_key(start.scheme, start.key_id), record)
        except CasConflict:
            stored = await keys.get(K.key_record_key(start.scheme, start.key_id))
            if stored is None or stored.decode(K.KeyRecord).session_id != start.session_id:
                # another session produced this key first: finishing this one would leave the nodes
                # holding shares of a key nobody can see
                self.log.error(
                    "dkg session lost the race for the key; not finished", session=start.session_id
                )
                return
        await self._dkg_send(start, 4, cmsg2)

    async def _gather(self, start: DkgStart, round_: int) -> list[bytes] | None:
        out = []
        for node in start.nodes:
            m = await last_message(self.bus, proto_subject("chilldkg", start.session_id, round_, node))
            if m is None or not isinstance(m.payload, DkgMessage) or m.sender != node:
                return None
            out.append(m.payload.data)
        return out

    async def _dkg_send(self, start: DkgStart, round_: int, data: bytes) -> None:
        await self.bus.publish(
            proto_subject("chilldkg", start.session_id, round_, "consensus"),
            DkgMessage(session_id=start.session_id, round=round_, data=data),
            f"dkg.{start.session_id}.{round_}",
        )


def _vote_adder(votes: list[tuple[Received, Vote]], equivocators: list[str]) -> RoundChange:
    """A round change adding ``votes`` (first vote counts); equivocating nodes are collected."""

    def add(rnd: K.RoundRecord) -> bool:
        equivocators.clear()
        counted = False
        for rec, vote in votes:
            r = tally.add_vote(rnd, vote.node, vote.approve, list(vote.reasons), rec.envelope_raw)
            counted |= r is tally.VoteResult.COUNTED
            if r is tally.VoteResult.EQUIVOCATION:
                equivocators.append(vote.node)
        return counted

    return add


def _set(rnd: K.RoundRecord, **fields: object) -> bool:
    for k, v in fields.items():
        setattr(rnd, k, v)
    return True


def _add_failed(rnd: K.RoundRecord, node: str) -> bool:
    if node in rnd.failed_signers:
        return False
    rnd.failed_signers.append(node)
    return True


async def serve(ctx: ServiceContext) -> None:
    c = Consensus(ctx)
    bus = ctx.bus
    tasks = [
        asyncio.create_task(c.pool.run()),
        asyncio.create_task(c.watch_timeouts()),
        asyncio.create_task(c.watch_dkg_requests()),
        asyncio.create_task(c.watch_bans()),
        bus.start_consumer("tx.requested.>", "consensus-requested", c.on_requested),
        bus.start_batch_consumer("vote.>", "consensus-votes", c.on_votes, batch=64),
        # only the events that end a round's signing: verifying every tx.* event here was a third of
        # this service's work
        bus.start_consumer("tx.signed.>", "consensus-signed", c.on_tx_event),
        bus.start_consumer("tx.failed.>", "consensus-failed", c.on_tx_event),
        bus.start_consumer("proto.frost.*.refused.*", "consensus-refusals", c.on_refused),
        bus.start_consumer("proto.chilldkg.*.*.*", "consensus-dkg", c.on_dkg),
        bus.start_consumer("node.violation.*", "consensus-violations", c.on_violation),
    ]
    await c.resume()
    ctx.ready()
    await ctx.stopped()
    for t in tasks:
        t.cancel()


def main() -> None:
    run_service("consensus", serve, registry=REGISTRY)


if __name__ == "__main__":
    main()
