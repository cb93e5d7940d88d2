"""``python -m services.consensus --data-dir DIR``: voting rounds, signer sets, retries, DKG coordination.

Theory of operation
-------------------
Voting: ``tx.requested.<tx>`` opens a round (KV ``rounds``, create-only, so a replayed request opens
nothing new) and announces ``tx.voting``; every ``vote.<tx>.<node>`` is added by compare-and-set on the
round's revision (:mod:`core.tally`: first vote counts, equivocation is reported). Approvals
count per sighash list: at ``t`` approvals of the same sighashes the round is approved, and only that
group (the quorum) goes into the certificate and the signer sets; an approver of other sighashes is
reported (``sighash-mismatch``). Once no group can reach ``t`` any more, ``tx.rejected`` carries the reasons.

Signing: the write that adds the deciding vote also marks the round approved and starts attempt 1
(``attempt``, ``attempt_started_ms``), so nothing is lost between them. An attempt picks ``t`` signers
of the quorum (rotating, skipping nodes that refused, timed out or are banned) and claims for each one
pooled FROST nonce per input from KV ``presig`` by compare-and-set (a nonce is claimed at most once,
ever) while ``tx.approved`` (the quorum certificate) is published, then publishes ``tx.signing``. A
refusal, a blamed partial signature or a timeout starts the next attempt with fresh nonces; after
``MAX_ATTEMPTS`` the spend ends ``failed``. When no signer set has a nonce per input, the attempt is not
used up: it is retried about every second until ``NONCE_WAIT_MAX_S`` after approval, then fails.

Timers: an attempt times out ``SIGNING_TIMEOUT_S`` after its ``attempt_started_ms`` in KV (wall clock),
so after a restart (or on another instance that sees the round) the remaining time is the real one; the
``active`` map is only a cache of which rounds to check. The next attempt is started by compare-and-set
from the expired one, so however many instances notice, one retry happens. An attempt that never got as
far as ``tx.signing`` (a crash right after the approving write) times out like any other, and its
successor publishes ``tx.approved`` first if it is missing.

Final outcome: the create-only KV entry ``final.<tx>`` (bucket ``rounds``) is the single arbiter between
consensus giving up and the broadcaster finishing: consensus publishes ``tx.failed`` only if it created it
(or it already says ``failed``), the broadcaster ``tx.signed`` only if it created it with ``signed``.
Giving up claims it first and closes the round last; every retry or timeout reads it first (and again
just before ``tx.signing`` of a retry), so a crash while giving up is finished later and no attempt is
started for a spend already signed.

Bans (KV ``bans``, signed by the monitor), DKG requests and host keys are signed values
(:mod:`services.runtime.signed_kv`): what does not verify is reported and ignored.

DKG: this service is also the (untrusted) ChillDKG coordinator, :mod:`services.consensus.dkg_coordinator`.

Every change of a round is a step of the spend lifecycle (:mod:`core.lifecycle`), applied to the round
record by the pure core (:mod:`core.round`, :mod:`core.tally`, :mod:`core.signer_set`); this service
reads and writes KV and the bus around those steps. A step the lifecycle refuses
(:class:`core.lifecycle.IllegalTransition`) changes nothing and is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from core import signer_set, tally
from core.lifecycle import Event, IllegalTransition, TxEvent, TxState
from core.round import close, round_state
from schemas import kv as K
from schemas.envelope import EVIDENCE_MAX
from schemas.kinds import ViolationKind
from schemas.kv import FinalOutcome, RoundOutcome
from schemas.messages import (
    REGISTRY,
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
    BUCKET_ROUNDS,
    durable,
    proto_subject,
    tx_subject,
    violation_subject,
)
from services.consensus.dkg_coordinator import DkgCoordinator
from services.runtime.bus import CasConflict, KvEntry, Received
from services.runtime.lookup import last_message
from services.runtime.nonce_pool import NoncePool
from services.runtime.service import ServiceContext, run_service
from services.runtime.signed_kv import Removed, Signed, SignedKV

SIGNING_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 5
NONCE_RETRY_S = 1.0  # an attempt waiting for nonces tries again this often (it is not used up)
NONCE_WAIT_MAX_S = 120.0  # ... until this long after approval; then the spend fails
TIMER_TICK_S = 0.25
ERROR_RETRY_S = 2.0  # a timer whose handling raised is checked again after this


RoundChange = Callable[[K.RoundRecord], bool]


def now_ms() -> int:
    return int(time.time() * 1000)


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


@dataclass(frozen=True, slots=True)
class Timer:
    """What to check for one round: its attempt ``attempt`` at ``due_ms`` (wall clock)."""

    attempt: int
    due_ms: int
    nonce_wait: bool = False  # True: retry the same attempt (waiting for nonces); False: signing timeout


class Consensus:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.bus = ctx.bus
        self.cfg = ctx.cfg
        self.log = ctx.log
        self.nodes = list(self.cfg.nodes)
        self.pool = NoncePool(self.bus, follow_claims=False)
        self.active: dict[str, Timer] = {}  # tx_id -> what to check next (a cache of the KV timers)
        self.rounds: OrderedDict[str, tuple[int, bytes]] = OrderedDict()  # tx_id -> (revision, record)
        self.bans: dict[str, int] = {}  # node -> banned until (ms), mirrored from KV bans

    # ---- rounds in KV -------------------------------------------------------------------------------
    async def _update(
        self, tx_id: str, change: RoundChange, *, fresh: bool = False, new: bool = False
    ) -> K.RoundRecord:
        """Apply ``change`` to the round by compare-and-set, starting from the cached copy (one round trip
        when this instance was the last writer; ``fresh``: read first), re-reading on a conflict.
        ``new``: the round is probably not in KV yet, so without a cached copy the first try is to
        create it (one round trip instead of a read and a create).

        ``change`` may run several times, each time on a different record: it must depend on nothing
        but the record it is given (and reset whatever it reports)."""
        kv = await self.bus.kv(BUCKET_ROUNDS)
        cached = None if fresh else self.rounds.get(tx_id)
        guess_absent = new and cached is None  # a failed create (votes came first) reads as usual
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
            entry = None if guess_absent else await kv.get(tx_id)
            guess_absent = False
            if entry is None:
                rnd = tally.new_round(tx_id, self.cfg.n, self.cfg.t, self.nodes)
                if not change(rnd):
                    return rnd  # nothing to record: no round is created for it
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
        fx = tally.RoundChange()

        def open_round(rnd: K.RoundRecord) -> bool:
            nonlocal fx
            fx = self._step(rnd, lambda: tally.open_round(rnd, req.amount, len(req.inputs), now_ms()))
            return fx.changed

        # announce first, then mark opened: a crash in between re-announces (de-duplicated by msg id).
        # Not concurrently: once the round is marked opened, another instance may approve it and publish
        # tx.approved, which must not overtake tx.voting on the stream.
        await self.bus.publish(
            tx_subject(TxEvent.VOTING, req.tx_id),
            TxVoting(tx_id=req.tx_id, round_id=req.tx_id, threshold=self.cfg.t, total_nodes=self.cfg.n),
            f"voting.{req.tx_id}",
        )
        rnd = await self._update(req.tx_id, open_round, new=True)
        await self._after_change(rnd, fx)

    async def on_votes(self, batch: list[Received]) -> None:
        """A fetched batch of votes: each transaction's votes go into its round with one compare-and-set
        (which also approves the round and starts attempt 1 when they complete the quorum)."""
        by_tx: dict[str, list[tuple[Received, Vote]]] = {}
        for rec in batch:
            vote = rec.payload
            if not isinstance(vote, Vote):
                continue
            tx_id = rec.subject.split(".")[1]
            if vote.node != rec.sender or vote.tx_id != tx_id:
                await self._violation(
                    rec.sender,
                    "bad-vote",
                    "vote body does not match its subject",
                    tx_id,
                    evidence=rec.envelope_raw,
                )
                continue
            by_tx.setdefault(tx_id, []).append((rec, vote))
        for tx_id, votes in by_tx.items():
            cast = [
                tally.CastVote(v.node, v.approve, v.reasons, rec.envelope_raw, v.sighashes)
                for rec, v in votes
            ]
            fx = tally.RoundChange()

            def add(rnd: K.RoundRecord, cast: list[tally.CastVote] = cast) -> bool:
                nonlocal fx
                fx = self._step(rnd, lambda: tally.add_votes(rnd, cast, now_ms()))
                return fx.changed

            rnd = await self._update(tx_id, add)
            await self._after_change(rnd, fx, {v.node: rec.envelope_raw for rec, v in votes})

    def _step(self, rnd: K.RoundRecord, change: Callable[[], tally.RoundChange]) -> tally.RoundChange:
        """Run a round change of the core; a step the lifecycle refuses changes nothing and is logged."""
        try:
            return change()
        except IllegalTransition as exc:
            self._refused(rnd, exc)
            return tally.RoundChange()

    def _refused(self, rnd: K.RoundRecord, exc: IllegalTransition) -> None:
        state = exc.state.value if exc.state is not None else None
        self.log.warning("lifecycle refused a step", tx_id=rnd.tx_id, state=state, event=exc.event.value)

    async def _after_change(
        self, rnd: K.RoundRecord, fx: tally.RoundChange, evidence: dict[str, bytes] | None = None
    ) -> None:
        """Act on a round write: report what it found (``evidence``: each node's vote envelope that showed
        it) and, if it approved the round, run attempt 1."""
        reports = [
            self._violation(
                node,
                kind.value,
                tally.VIOLATION_DETAIL[kind],
                rnd.tx_id,
                evidence=(evidence or {}).get(node, b""),
            )
            for node, kind in fx.reports
        ]
        if fx.approved:
            self._watch(rnd)  # before anything can fail: the timeout re-drives this attempt
            await asyncio.gather(self._run_attempt(rnd, 1, fresh_approval=True), *reports)
            return
        await asyncio.gather(*reports)
        await self._decide(rnd)

    async def _decide(self, rnd: K.RoundRecord) -> None:
        state = round_state(rnd)
        if state is TxState.APPROVED:  # approved by a version that started attempts separately
            await self._next_attempt(rnd.tx_id, from_attempt=0)
            return
        if state is TxState.SIGNING:
            self._watch(rnd)  # e.g. a redelivered vote after a crash: make sure somebody watches it
            return
        if state is not TxState.VOTING:
            return
        out = tally.outcome(rnd)
        if out is RoundOutcome.APPROVED:
            # only a round written before approvals started attempt 1 in the same write gets here
            fx = tally.RoundChange()

            def approve(r: K.RoundRecord) -> bool:
                nonlocal fx
                fx = self._step(r, lambda: tally.approve_if_decided(r, now_ms()))
                return fx.changed

            rnd = await self._update(rnd.tx_id, approve)
            if fx.approved:
                await self._after_change(rnd, fx)
            else:
                self._watch(rnd)
        elif out is RoundOutcome.REJECTED:
            # announce first, then end the round: a crash in between announces again (same msg id)
            reasons = tally.rejection_reasons(rnd)
            cert = [rnd.votes[n] for n in rnd.nodes if rnd.approve.get(n) is False]
            await self.bus.publish(
                tx_subject(TxEvent.REJECTED, rnd.tx_id),
                TxRejected(tx_id=rnd.tx_id, reasons=reasons, certificate=cert),
                f"rejected.{rnd.tx_id}",
            )
            await self._update(rnd.tx_id, lambda r: tally.reject_if_decided(r, now_ms()))

    # ---- signing attempts ---------------------------------------------------------------------------
    async def _next_attempt(
        self,
        tx_id: str,
        cause: Event | None = None,
        *,
        failed: str | None = None,
        from_attempt: int | None = None,
    ) -> None:
        """Start the next attempt by compare-and-set (:func:`core.signer_set.next_attempt`): only from
        ``from_attempt`` (if given) and, for a timeout, only if that attempt's ``attempt_started_ms`` in
        KV is older than the timeout. ``cause``: why the attempt before failed (``failed``: whom it
        blames)."""
        if await self._settled(tx_id):
            return
        started: int | None = None
        expired = cause is Event.ATTEMPT_TIMED_OUT

        def bump(rnd: K.RoundRecord) -> bool:
            nonlocal started
            started = None
            try:
                started = signer_set.next_attempt(
                    rnd,
                    now_ms(),
                    _ms(SIGNING_TIMEOUT_S),
                    cause=cause,
                    failed=failed,
                    from_attempt=from_attempt,
                )
            except IllegalTransition as exc:
                self._refused(rnd, exc)
            return started is not None

        rnd = await self._update(tx_id, bump, fresh=expired)
        if started is None:
            self._watch(rnd)
            return
        attempt = started
        if expired:
            self.log.warning("signing attempt timed out", tx_id=tx_id, attempt=attempt - 1)
            await self._report_timeouts(tx_id, attempt - 1)  # by the one instance whose retry won
        if signer_set.exhausted(attempt, MAX_ATTEMPTS):
            await self._fail(tx_id, f"no signer set completed after {MAX_ATTEMPTS} attempts")
            return
        self._watch(rnd)
        await self._run_attempt(rnd, attempt, fresh_approval=False)

    async def _retry_attempt(self, tx_id: str, attempt: int) -> None:
        """Try attempt ``attempt`` (waiting for nonces) again: restart its clock in KV (which also tells
        other instances it is alive), unless the round moved on."""
        refreshed = False

        def refresh(rnd: K.RoundRecord) -> bool:
            nonlocal refreshed
            refreshed = signer_set.wait_for_nonces(rnd, attempt, now_ms())
            return refreshed

        rnd = await self._update(tx_id, refresh)
        if not refreshed:
            self._watch(rnd)
            return
        await self._run_attempt(rnd, attempt, fresh_approval=False)

    async def _run_attempt(self, rnd: K.RoundRecord, attempt: int, *, fresh_approval: bool) -> None:
        """Pick the signers of ``attempt`` (started in KV by the caller), claim their nonces while
        ``tx.approved`` goes out, publish ``tx.signing``. ``fresh_approval``: this instance just approved
        the round (publish ``tx.approved``); otherwise it is published only if it is not there yet."""
        tx_id = rnd.tx_id
        quorum = tally.quorum(rnd) or []
        banned = {n for n, until in self.bans.items() if until > now_ms()}
        await self.pool.loaded.wait()
        # nodes without a nonce per input right now are passed over (claiming some would burn them)
        short = {n for n in quorum if self.pool.level(n) < rnd.inputs}
        signers = signer_set.signer_set(
            quorum, rnd.t, attempt, failed=rnd.failed_signers, banned=banned, short=short
        )
        if isinstance(signers, signer_set.NoSignerSet):
            await self._announce_approved(rnd, fresh_approval)
            if signers is signer_set.NoSignerSet.TOO_FEW:
                await self._fail(tx_id, "fewer than t approving signers available")
                return
            await self._wait_for_nonces(rnd, attempt, short=sorted(short))
            return

        async def claim_all() -> list[list[NonceRef] | None]:
            return await asyncio.gather(*(self.pool.claim(n, rnd.inputs, tx_id, attempt) for n in signers))

        _, claims = await asyncio.gather(self._announce_approved(rnd, fresh_approval), claim_all())
        empty = [node for node, got in zip(signers, claims, strict=True) if got is None]
        if empty:
            self.log.warning("nonce pool empty", nodes=empty, tx_id=tx_id, attempt=attempt)

            # passed over next time (unless nobody else is left)
            await self._update(tx_id, lambda r: signer_set.mark_failed(r, empty))
            await self._wait_for_nonces(rnd, attempt, short=empty)
            return
        nonces = {node: got for node, got in zip(signers, claims, strict=True) if got is not None}
        if attempt > 1 and await self._settled(tx_id):
            return  # signed (or given up) while this retry claimed its nonces: they are burned, no more
        session_id = f"{tx_id}-a{attempt}"
        await self.bus.publish(
            tx_subject(TxEvent.SIGNING, tx_id),
            TxSigning(
                tx_id=tx_id,
                attempt=attempt,
                session_id=session_id,
                signers=signers,
                signer_ids=[self.nodes.index(s) for s in signers],
                nonces=nonces,
                certificate=tally.signing_certificate(rnd, signers),
            ),
            f"signing.{tx_id}.{attempt}",
        )
        self.log.info("attempt started", tx_id=tx_id, attempt=attempt, signers=",".join(signers))
        current = self.active.get(tx_id)
        if current is None or current.attempt <= attempt:  # not if a later attempt started meanwhile
            self.active[tx_id] = Timer(attempt, rnd.attempt_started_ms + _ms(SIGNING_TIMEOUT_S))

    async def _announce_approved(self, rnd: K.RoundRecord, fresh: bool) -> None:
        subject = tx_subject(TxEvent.APPROVED, rnd.tx_id)
        if not fresh and await last_message(self.bus, subject) is not None:
            return
        await self.bus.publish(
            subject,
            TxApproved(tx_id=rnd.tx_id, round_id=rnd.tx_id, certificate=tally.certificate(rnd)),
            f"approved.{rnd.tx_id}",
        )

    async def _wait_for_nonces(self, rnd: K.RoundRecord, attempt: int, *, short: list[str]) -> None:
        """No signer set has a nonce per input: retry this same attempt shortly (it is not used up),
        until ``NONCE_WAIT_MAX_S`` after approval."""
        now = now_ms()
        waited = now - (rnd.approved_ms or rnd.attempt_started_ms)
        if signer_set.nonce_wait_over(rnd, now, _ms(NONCE_WAIT_MAX_S)):
            await self._fail(
                rnd.tx_id,
                f"no signer set had a nonce per input within {NONCE_WAIT_MAX_S:.0f} s of approval "
                f"(short: {', '.join(short) or 'none'})",
            )
            return
        self.log.warning(
            "nonce pools too low for a signer set; retrying shortly",
            tx_id=rnd.tx_id,
            attempt=attempt,
            short=short,
            waited_s=round(waited / 1000, 1),
        )
        current = self.active.get(rnd.tx_id)
        if current is None or current.attempt <= attempt:  # not if a later attempt started meanwhile
            self.active[rnd.tx_id] = Timer(attempt, now_ms() + _ms(NONCE_RETRY_S), nonce_wait=True)

    def _watch(self, rnd: K.RoundRecord) -> None:
        """Keep checking an approved, unfinished round: its current attempt times out at
        ``attempt_started_ms + SIGNING_TIMEOUT_S`` (KV, wall clock). A pending nonce-wait retry of the
        same attempt stays as it is."""
        if round_state(rnd) not in (TxState.APPROVED, TxState.SIGNING):
            self.active.pop(rnd.tx_id, None)
            return
        current = self.active.get(rnd.tx_id)
        if current is not None and (
            current.attempt > rnd.attempt or (current.attempt == rnd.attempt and current.nonce_wait)
        ):
            return
        self.active[rnd.tx_id] = Timer(rnd.attempt, rnd.attempt_started_ms + _ms(SIGNING_TIMEOUT_S))

    async def _fail(self, tx_id: str, reason: str) -> None:
        """Give up on a spend. The final outcome is claimed in KV first (``final.<tx>``, create-only):
        ``tx.failed`` goes out only if the claim is ours (or it already said ``failed``), never once the
        broadcaster claimed ``signed``; the round is closed last. A crash anywhere in between is finished
        by the next retry or timeout of the round (:meth:`_settled`), which finds the claim."""
        self.active.pop(tx_id, None)
        kv = await self.bus.kv(BUCKET_ROUNDS)
        record = K.FinalRecord(
            outcome=FinalOutcome.FAILED, by=self.cfg.identity, at_ms=now_ms(), reason=reason
        )
        try:
            await kv.create(K.final_key(tx_id), record)
        except CasConflict:
            entry = await kv.get(K.final_key(tx_id))
            if entry is not None:
                record = entry.decode(K.FinalRecord)
            if record.outcome == FinalOutcome.SIGNED:
                self.log.info("signed before it could fail; the broadcaster finishes it", tx_id=tx_id)
        await self._finish(tx_id, record)

    async def _finish(self, tx_id: str, final: K.FinalRecord) -> None:
        """Act on the final outcome: ``failed`` is announced (again: de-duplicated by message id); either
        way the round is closed, so late refusals and timeouts do nothing."""
        if final.outcome == FinalOutcome.FAILED:
            await self.bus.publish(
                tx_subject(TxEvent.FAILED, tx_id),
                TxFailed(tx_id=tx_id, reason=final.reason or "gave up"),
                f"failed.{tx_id}",
            )
        self.active.pop(tx_id, None)
        await self._close(tx_id, FinalOutcome(final.outcome))

    async def _close(self, tx_id: str, final: FinalOutcome) -> None:
        """End the round with the spend's final outcome (nothing to write if it ended already)."""

        def end(rnd: K.RoundRecord) -> bool:
            try:
                return close(rnd, final, now_ms())
            except IllegalTransition as exc:
                self._refused(rnd, exc)
                return False

        await self._update(tx_id, end)

    async def _settled(self, tx_id: str) -> bool:
        """Whether the spend's final outcome is already claimed (then it is acted on, and no attempt is
        started): read on every retry, never on a first attempt."""
        entry = await (await self.bus.kv(BUCKET_ROUNDS)).get(K.final_key(tx_id))
        if entry is None:
            return False
        await self._finish(tx_id, entry.decode(K.FinalRecord))
        return True

    async def on_tx_event(self, rec: Received) -> None:
        event, tx_id = rec.subject.split(".")[1:3]
        if event in (TxEvent.SIGNED, TxEvent.FAILED):
            self.active.pop(tx_id, None)
            await self._close(tx_id, FinalOutcome(event))

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
        await self._next_attempt(msg.tx_id, Event.ATTEMPT_REFUSED, failed=msg.node, from_attempt=msg.attempt)

    async def on_violation(self, rec: Received) -> None:
        """The broadcaster blamed a signer for an invalid partial signature: retry without it now."""
        v = rec.payload
        if not isinstance(v, Violation) or rec.sender != "broadcaster" or v.kind != "invalid-partial-sig":
            return
        # the current attempt from the stream, not from memory: any instance may get this report
        current = await last_message(self.bus, tx_subject("signing", v.tx_id))
        if (
            current is None
            or not isinstance(current.payload, TxSigning)
            or v.offender not in current.payload.signers
        ):
            return
        await self._next_attempt(
            v.tx_id, Event.ATTEMPT_BLAMED, failed=v.offender, from_attempt=current.payload.attempt
        )

    async def watch_bans(self) -> None:
        """Bans signed by the monitor (``bans.<node>``); anything else there is reported and ignored."""
        bans = await SignedKV.open(self.bus, BUCKET_BANS)
        async for item in bans.watch(">", K.BanRecord):
            if isinstance(item, Removed):
                self.bans.pop(item.key, None)
            elif isinstance(item, Signed):
                ban = item.value
                if ban.node != item.key:
                    self.log.warning(
                        "ban record names another node; ignored", kv_entry=item.key, node=ban.node
                    )
                    continue
                self.bans[ban.node] = ban.until_ms
                if ban.until_ms > now_ms():
                    self.log.warning(
                        "node banned: not chosen as a signer", node=ban.node, until_ms=ban.until_ms
                    )
                else:
                    self.log.info("ban ended or lifted", node=ban.node, reason=ban.reason[:200])

    async def watch_timeouts(self) -> None:
        while not self.ctx.stop.is_set():
            await asyncio.sleep(TIMER_TICK_S)
            await self.check_timers()

    async def check_timers(self) -> None:
        """Handle every due timer: a nonce wait retries its attempt; a timeout starts the next attempt if
        the attempt in KV really expired (if not, the round is simply watched again)."""
        now = now_ms()
        for tx_id, timer in list(self.active.items()):
            if timer.due_ms > now or self.active.get(tx_id) is not timer:
                continue
            del self.active[tx_id]
            try:
                if timer.nonce_wait:
                    await self._retry_attempt(tx_id, timer.attempt)
                else:
                    await self._next_attempt(tx_id, Event.ATTEMPT_TIMED_OUT, from_attempt=timer.attempt)
            except Exception as exc:
                self.log.error("retry failed", tx_id=tx_id, attempt=timer.attempt, error=repr(exc)[:200])
                self.active.setdefault(
                    tx_id, Timer(timer.attempt, now_ms() + _ms(ERROR_RETRY_S), timer.nonce_wait)
                )

    async def resume(self) -> None:
        """After a restart: every approved, unfinished round is watched again, with the time its attempt
        really has left (KV ``attempt_started_ms``); a round whose outcome is certain but was not acted
        upon (a crash in between) is decided now."""
        kv = await self.bus.kv(BUCKET_ROUNDS)
        undecided: list[K.RoundRecord] = []
        # one watch streams every round's current value (a get per key took a round trip each)
        async with contextlib.aclosing(kv.watch()) as current:
            async for entry in current:
                if entry is None:
                    break  # every current value seen
                if entry.operation == "PUT" and not entry.key.startswith(K.FINAL_KEY_PREFIX):
                    self._resume_round(entry, undecided)
        for rnd in undecided:
            try:
                await self._decide(rnd)
            except Exception as exc:
                self.log.error("could not decide a round on resume", tx_id=rnd.tx_id, error=repr(exc)[:200])

    def _resume_round(self, entry: KvEntry, undecided: list[K.RoundRecord]) -> None:
        try:
            rnd = entry.decode(K.RoundRecord)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.log.warning("not a round record; skipped", kv_entry=entry.key)
            return
        state = round_state(rnd)
        if state in (TxState.APPROVED, TxState.SIGNING):
            self._cache(entry.key, entry.revision, rnd)
            self._watch(rnd)
        elif state is TxState.VOTING and tally.outcome(rnd) is not RoundOutcome.OPEN:
            undecided.append(rnd)

    async def _report_timeouts(self, tx_id: str, attempt: int) -> None:
        """After attempt ``attempt`` of ``tx_id`` timed out: report (``timeout``, never counted toward a
        ban) each of its signers that sent neither partial signatures nor a refusal, with the ``tx.signing``
        it did not answer as evidence. Best effort: a report that cannot be made is logged."""
        try:
            signing = await last_message(self.bus, tx_subject("signing", tx_id))
            req = await last_message(self.bus, tx_subject("requested", tx_id))
            if signing is None or req is None:
                return
            s, r = signing.payload, req.payload
            if not isinstance(s, TxSigning) or not isinstance(r, TxRequested) or s.attempt != attempt:
                return
            for node in s.signers:
                answers = [
                    await last_message(self.bus, proto_subject(r.scheme, s.session_id, round_, node))
                    for round_ in (2, "refused")  # partial signatures, or the signer's refusal
                ]
                if any(m is not None and m.sender == node for m in answers):
                    continue
                detail = f"no partial signature for attempt {attempt} within {SIGNING_TIMEOUT_S:g} s"
                await self._violation(
                    node, "timeout", detail, tx_id, evidence=signing.envelope_raw, key=f"{tx_id}.{attempt}"
                )
        except Exception as exc:
            self.log.warning("could not tell who timed out", tx_id=tx_id, error=repr(exc)[:200])

    async def _violation(
        self,
        offender: str,
        kind: ViolationKind,
        detail: str,
        tx_id: str = "",
        *,
        evidence: bytes = b"",
        key: str = "",
    ) -> None:
        """Report ``offender`` with ``evidence`` (the signed message that shows it)."""
        v = Violation(
            offender=offender,
            kind=kind,
            detail=detail,
            reporter=self.cfg.identity,
            tx_id=tx_id,
            evidence=evidence[:EVIDENCE_MAX],
        )
        await self.bus.publish(violation_subject(offender), v, f"viol.{kind}.{offender}.{key or tx_id}")


async def serve(ctx: ServiceContext) -> None:
    c = Consensus(ctx)
    dkg = DkgCoordinator(ctx.cfg, ctx.bus, ctx.log)
    bus = ctx.bus
    me = ctx.cfg.identity
    tasks = [
        asyncio.create_task(c.pool.run()),
        asyncio.create_task(c.watch_timeouts()),
        asyncio.create_task(dkg.watch_requests()),
        asyncio.create_task(c.watch_bans()),
        bus.start_consumer(*durable(me, "consensus-requested"), c.on_requested),
        bus.start_batch_consumer(*durable(me, "consensus-votes"), c.on_votes, batch=64, linger=0.002),
        # only the events that end a round's signing: verifying every tx.* event here was a third of
        # this service's work
        bus.start_consumer(*durable(me, "consensus-signed"), c.on_tx_event),
        bus.start_consumer(*durable(me, "consensus-failed"), c.on_tx_event),
        bus.start_consumer(*durable(me, "consensus-refusals"), c.on_refused),
        bus.start_consumer(*durable(me, "consensus-dkg"), dkg.on_message),
        bus.start_consumer(*durable(me, "consensus-violations"), c.on_violation),
    ]
    await c.resume()
    ctx.ready()
    await ctx.stopped()
    for t in tasks:
        t.cancel()


def main() -> None:
    run_service("consensus", serve, registry=REGISTRY)
