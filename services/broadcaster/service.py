"""``python -m services.broadcaster --data-dir DIR``: aggregate, verify, broadcast, follow confirmations.

Theory of operation
-------------------
The streams are the truth; memory is a fast path. Partial signatures are collected per signing session
(only the newest attempt, ``tx.signing.<tx>``, counts). When a session is complete the broadcaster
combines them through the spend's scheme (:meth:`core.scheme.SigningScheme.combine`; FROST aggregates
optimistically and checks each input's signature against its output key, and only if that fails
verifies each partial signature); a contribution blamed on a signer becomes a violation (consensus
retries without it) and the session stops. The witnesses are assembled and
``verify_transaction`` checks the whole transaction before ``tx.signed`` is published; it is handed to the
chain backend at once (a transaction the backend already knows counts as broadcast) and ``tx.broadcast``
follows. Confirmations: a follower reads each new block's txids (not one status request per waiting
spend) and publishes ``tx.confirmed`` for the spends waiting in this process; ``tx.broadcast`` stays
unacked until its block is seen, looked at again every ``CONFIRMATION_POLL_S`` (a safety net: after a
restart, or for a block the follower missed).

Final outcome: before ``tx.signed`` the broadcaster creates KV ``rounds`` ``final.<tx>`` = ``signed``
(create-only); consensus does the same with ``failed`` before ``tx.failed``. Whoever comes second stands
down, so a spend is never both signed and reported failed.

Nothing is lost to a restart or to several broadcaster instances sharing the work: a session still
incomplete ``READ_BACK_AFTER_S`` after its first partial signature (at once on a redelivery) is completed
from the stream. ``tx.signed`` is
consumed too, so a crash between signing and broadcasting is finished later. A rejected broadcast ends
the spend ``failed`` only when the transaction can never confirm (its inputs are gone or it is invalid,
and the backend does not already know it); anything else is retried. All publishes use a
``Nats-Msg-Id`` derived from the transaction, so repeats are de-duplicated.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

from core.scheme import Attempt, InvalidPartialSignature, SchemeError, UnknownScheme, scheme_for
from schemas import kv as K
from schemas.envelope import EVIDENCE_MAX
from schemas.kv import FinalOutcome
from schemas.messages import (
    REGISTRY,
    PartialSignatures,
    TxBroadcast,
    TxConfirmed,
    TxFailed,
    TxRequested,
    TxSigned,
    TxSigning,
    Violation,
)
from schemas.names import BUCKET_ROUNDS, proto_subject, tx_subject, violation_subject
from schemas.names import durable as consumer
from services.chain.esplora import BroadcastRejected, EsploraClient, EsploraError, TxNotFound
from services.runtime.bus import CasConflict, Received, RetryLater
from services.runtime.key_proof import ProvenKeys
from services.runtime.lookup import last_message
from services.runtime.service import ServiceContext, run_service
from wallet.threshold_account import ThresholdAccount
from wallet.transaction import Prevout, parse_transaction, serialize, txid, with_witnesses
from wallet.verify import TransactionInvalid, verify_transaction

READ_BACK_AFTER_S = 0.5  # an incomplete session is completed from the stream after this
# a spend waiting for its block is looked at again this often (no HTTP): only a safety net, the block
# follower announces the confirmation the moment it reads the block
CONFIRMATION_POLL_S = 10.0
BLOCK_POLL_S = 0.5  # the chain tip is read this often
SCAN_BACK_BLOCKS = 100  # at most this many blocks are read after a gap
REBROADCAST_AFTER_S = 60.0  # an unconfirmed spend the backend forgot is broadcast again after this
BROADCAST_RETRY_S = 5.0
# reject reasons after which a signed transaction can never confirm (anything else is retried): its
# inputs are spent elsewhere or missing, or the backend finds it invalid
PERMANENT = ("missingorspent", "mempool-conflict", "script-verify", "bad-txns", "txn-same-nonwitness")
CACHE_ENTRIES = 10_000


ALREADY_KNOWN = ("already in block chain", "txn-already-known", "txn-already-in-mempool")


class Broadcaster:
    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.bus = ctx.bus
        self.cfg = ctx.cfg
        self.log = ctx.log
        url = self.cfg.esplora_url or self.cfg.devchain_url
        if not url:
            raise SystemExit("no chain backend configured (esplora_url / devchain_url in cluster.json)")
        self.chain = EsploraClient(url)
        self.accounts: dict[str, tuple[K.KeyRecord, ThresholdAccount]] = {}
        self.keys: ProvenKeys | None = None  # the key records, proven (services.runtime.key_proof)
        # in-memory fast path; the streams stay the truth (see on_psig)
        self.signing: dict[str, TxSigning] = {}  # tx_id -> newest attempt seen
        self.psigs: dict[str, dict[str, list[bytes]]] = {}  # session -> node -> psigs
        self.signed: dict[str, None] = {}  # tx_ids aggregated by this process
        self.requests: dict[str, asyncio.Future[TxRequested | None]] = {}  # tx_id -> its request, fetching
        self.read_backs: dict[str, asyncio.Future[None]] = {}  # session -> delayed read-back
        self.aggregating: set[str] = set()  # sessions being aggregated now
        self.broadcasting: set[str] = set()  # tx_ids whose transaction is being handed to the chain now
        # tx_ids this process announced as broadcast -> whether the block follower was running by then
        self.broadcast_done: dict[str, bool] = {}
        # block following (follow_blocks): txid -> height of the block that confirmed it
        self.confirmed_in: dict[str, int] = {}
        self.watching: dict[str, float] = {}  # unconfirmed txids -> when last checked to be known
        self.awaiting: dict[str, str] = {}  # txid -> tx_id of spends waiting here for their block
        self.announced: dict[str, None] = {}  # tx_ids whose tx.confirmed this process published
        self.scanned_height = -1
        self.tip_height = 0

    async def account(self, scheme: str, key_id: str) -> tuple[K.KeyRecord, ThresholdAccount]:
        got = self.accounts.get(f"{scheme}.{key_id}")
        if got is None:
            if self.keys is None:
                self.keys = await ProvenKeys.open(self.bus, self.cfg.nodes, self.cfg.t)
            rec = await self.keys.get(scheme, key_id)  # KeyNotProven: never used unproven
            if rec is None:
                raise RuntimeError(f"no key record for {key_id!r}")
            got = (rec, ThresholdAccount(rec.threshold_pubkey, rec.chain_code, self.cfg.network))
            self.accounts[f"{scheme}.{key_id}"] = got
        return got

    # ---- aggregation --------------------------------------------------------------------------------
    async def on_psig(self, rec: Received) -> None:
        msg = rec.payload
        if not isinstance(msg, PartialSignatures) or msg.node != rec.sender or msg.tx_id in self.signed:
            return
        signing = self.signing.get(msg.tx_id)
        if signing is None or signing.session_id != msg.session_id:
            signing_msg = await last_message(self.bus, tx_subject("signing", msg.tx_id))
            if signing_msg is None or signing_msg.sender != "consensus":
                return
            if not isinstance(signing_msg.payload, TxSigning):
                return
            signing = signing_msg.payload
            self.signing[msg.tx_id] = signing
            self._trim(self.signing)
        if signing.session_id != msg.session_id or msg.node not in signing.signers:
            return  # an older attempt, or not a signer of this one
        got = self.psigs.setdefault(msg.session_id, {})
        got[msg.node] = list(msg.psigs)
        self._trim(self.psigs)
        if msg.tx_id not in self.requests:  # fetched while the other partial signatures arrive
            self.requests[msg.tx_id] = asyncio.ensure_future(self._request_of(msg.tx_id))
            self._trim(self.requests)
        if len(got) < len(signing.signers):
            protocol = rec.subject.split(".")[1]  # proto.<scheme>.<session>.2.<node>
            if rec.num_delivered > 1:
                await self._read_back(msg.tx_id, msg.session_id, protocol)  # a redelivery: look now
            elif msg.session_id not in self.read_backs:
                # the others are normally on their way to this process; if some went to another
                # broadcaster instance, or were acked before a restart, they are read back from the
                # stream after a moment (not on every partial signature: that cost a lookup each)
                self.read_backs[msg.session_id] = asyncio.ensure_future(
                    self._read_back_later(msg.tx_id, msg.session_id, protocol)
                )
            return
        await self._complete(msg.tx_id, signing, got)

    async def _request_of(self, tx_id: str) -> TxRequested | None:
        m = await last_message(self.bus, tx_subject("requested", tx_id))
        if m is None or not isinstance(m.payload, TxRequested) or m.sender != "intake":
            return None
        return m.payload

    async def _read_back_later(self, tx_id: str, session_id: str, protocol: str) -> None:
        try:
            await asyncio.sleep(READ_BACK_AFTER_S)
            await self._read_back(tx_id, session_id, protocol)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next delivery or redelivery tries again
            self.log.warning("reading partial signatures back failed", tx_id=tx_id, error=repr(exc)[:200])
        finally:
            self.read_backs.pop(session_id, None)

    async def _read_back(self, tx_id: str, session_id: str, protocol: str) -> None:
        """Complete a session from the stream: the partial signatures this process has not seen (on
        ``proto.<protocol>.<session>.2.<node>``, the subject family the first one came on)."""
        signing = self.signing.get(tx_id)
        got = self.psigs.get(session_id)
        if tx_id in self.signed or signing is None or signing.session_id != session_id or got is None:
            return
        for node in signing.signers:
            if node in got:
                continue
            m = await last_message(self.bus, proto_subject(protocol, session_id, 2, node))
            if m is None or not isinstance(m.payload, PartialSignatures) or m.sender != node:
                return  # not all there yet (or this signer refused: consensus retries)
            got[node] = list(m.payload.psigs)
        await self._complete(tx_id, signing, got)

    async def _complete(self, tx_id: str, signing: TxSigning, got: dict[str, list[bytes]]) -> None:
        """Every partial signature of the session is here: aggregate (once per process at a time)."""
        if tx_id in self.signed or signing.session_id in self.aggregating:
            return
        self.aggregating.add(signing.session_id)
        try:
            pending = self.requests.get(tx_id)
            try:
                req = await pending if pending is not None else await self._request_of(tx_id)
            except Exception:
                self.requests.pop(tx_id, None)  # looked up again on the redelivery
                raise
            if req is None:
                self.requests.pop(tx_id, None)  # looked up again next time
                return
            done = await self._aggregate(req, signing, got)
            if done:
                self.signed[tx_id] = None
                self._trim(self.signed)
            self.psigs.pop(signing.session_id, None)
            self.signing.pop(tx_id, None)
            self.requests.pop(tx_id, None)
        finally:
            self.aggregating.discard(signing.session_id)

    @staticmethod
    def _trim(d: dict[str, Any]) -> None:
        while len(d) > CACHE_ENTRIES:
            d.pop(next(iter(d)))

    async def _aggregate(self, req: TxRequested, signing: TxSigning, psigs: dict[str, list[bytes]]) -> bool:
        """True when the transaction is signed and published; False when a signer is blamed (consensus
        retries) or the spend failed."""
        try:
            scheme = scheme_for(req.scheme)
        except UnknownScheme as exc:
            await self._fail(req.tx_id, str(exc))
            return False
        key, account = await self.account(scheme.name, req.key_id)
        tx = parse_transaction(req.unsigned_tx)
        prevouts = [Prevout(i.amount, i.script_pubkey) for i in req.inputs]
        sighashes = scheme.sighashes(tx, prevouts)
        inputs = [
            scheme.spend_input(account, ref.derivation, sighash)
            for ref, sighash in zip(req.inputs, sighashes, strict=True)
        ]
        try:
            attempt = Attempt(
                tuple(signing.signers),
                tuple(signing.signer_ids),
                {s: [ref.pubnonce for ref in signing.nonces[s]] for s in signing.signers},
            )
            sigs = scheme.combine(key, attempt, inputs, psigs)
        except InvalidPartialSignature as exc:
            await self._blame(exc.signer, req, signing.session_id, f"input {exc.input_index}: {exc.reason}")
            return False
        except SchemeError as exc:
            await self._fail(req.tx_id, str(exc))
            return False
        witnesses = [scheme.witness(sig) for sig in sigs]
        signed = with_witnesses(tx, witnesses)
        try:
            verify_transaction(signed, prevouts)
        except TransactionInvalid as exc:
            await self._fail(req.tx_id, f"signed transaction does not verify: {exc}")
            return False
        if not await self._claim_final(req.tx_id, FinalOutcome.SIGNED):
            self.log.warning("consensus gave up on this spend first; not publishing it", tx_id=req.tx_id)
            return False
        raw = serialize(signed)
        out = TxSigned(tx_id=req.tx_id, txid=txid(signed), signed_tx=raw, attempt=signing.attempt)
        # tx.signed is stored while the chain backend takes the transaction (both are idempotent; a
        # crash in between repeats them); nothing else is announced before tx.signed is in the stream
        signed_stored = asyncio.ensure_future(
            self.bus.publish(tx_subject("signed", req.tx_id), out, f"signed.{req.tx_id}")
        )
        self.log.info("signed", tx_id=req.tx_id, txid=out.txid, attempt=signing.attempt)
        await self._broadcast(out, signed_stored)  # now, not a hop later; on_signed repeats it after a crash
        return True

    async def _claim_final(self, tx_id: str, outcome: FinalOutcome) -> bool:
        """Create the spend's final-outcome arbiter (KV ``rounds`` ``final.<tx>``) with ``outcome``; True
        when it now says ``outcome`` (created here, or earlier by this service), False when consensus
        decided otherwise first. Nothing is signed after ``failed`` and nothing failed after ``signed``."""
        kv = await self.bus.kv(BUCKET_ROUNDS)
        key = K.final_key(tx_id)
        record = K.FinalRecord(outcome=outcome, by=self.cfg.identity, at_ms=int(time.time() * 1000))
        try:
            await kv.create(key, record)
            return True
        except CasConflict:
            entry = await kv.get(key)
            return entry is not None and entry.decode(K.FinalRecord).outcome == outcome

    async def _blame(self, node: str, req: TxRequested, session_id: str, detail: str) -> None:
        """Report ``node``'s invalid partial signatures, its own signed message as the evidence."""
        tx_id = req.tx_id
        self.log.warning("invalid partial signature", node=node, tx_id=tx_id, detail=detail)
        evidence = b""
        with contextlib.suppress(Exception):  # the report goes out without it rather than not at all
            m = await last_message(self.bus, proto_subject(req.scheme, session_id, 2, node))
            if m is not None and m.sender == node:
                evidence = m.envelope_raw[:EVIDENCE_MAX]
        v = Violation(
            offender=node,
            kind="invalid-partial-sig",
            detail=detail,
            reporter=self.cfg.identity,
            tx_id=tx_id,
            evidence=evidence,
        )
        await self.bus.publish(violation_subject(node), v, f"viol.psig.{node}.{session_id}")

    async def _fail(self, tx_id: str, reason: str, *, signed: bool = False) -> None:
        """Report the spend failed; before it was signed only if the arbiter agrees (``signed``: a signed
        transaction the chain refused for good, after the arbiter already said signed)."""
        if not signed and not await self._claim_final(tx_id, FinalOutcome.FAILED):
            return  # signed by another instance: the broadcast path finishes it
        self.log.error("spend failed", tx_id=tx_id, reason=reason)
        await self.bus.publish(
            tx_subject("failed", tx_id), TxFailed(tx_id=tx_id, reason=reason), f"failed.{tx_id}"
        )

    # ---- broadcast and confirmations ----------------------------------------------------------------
    async def on_signed(self, rec: Received) -> None:
        msg = rec.payload
        if not isinstance(msg, TxSigned) or rec.sender != "broadcaster":
            return
        if msg.tx_id in self.broadcast_done or msg.tx_id in self.broadcasting:
            return  # done, or being done right now by the aggregation (which is redelivered if it fails)
        if await last_message(self.bus, tx_subject("broadcast", msg.tx_id)) is not None:
            return  # broadcast right after signing (by this or an earlier run of this service)
        await self._broadcast(msg)

    async def _broadcast(self, msg: TxSigned, signed_stored: Awaitable[Any] | None = None) -> None:
        self.broadcasting.add(msg.tx_id)
        try:
            await self._hand_over(msg, signed_stored)
        finally:
            self.broadcasting.discard(msg.tx_id)

    async def _hand_over(self, msg: TxSigned, signed_stored: Awaitable[Any] | None) -> None:
        """Hand the transaction to the chain backend (a backend that already has it counts as done) and
        announce ``tx.broadcast``; idempotent. ``signed_stored``: the publish of ``tx.signed``, awaited
        before anything else is announced."""
        fresh = self.scanned_height >= 0  # accepted now, while the follower runs: it sees the block
        rejected: BroadcastRejected | None = None
        try:
            got = await self.chain.broadcast(msg.signed_tx.hex())
            if got != msg.txid:
                raise RuntimeError(f"backend answered txid {got}, expected {msg.txid}")
        except BroadcastRejected as exc:
            rejected = exc
        finally:
            if signed_stored is not None:
                await signed_stored
        if rejected is not None:
            fresh = False  # known before (maybe confirmed before the follower started): look it up
            if not _already_known(rejected) and not await self._chain_has(msg.txid):
                if not _permanent(rejected):
                    raise RetryLater(BROADCAST_RETRY_S, f"broadcast refused for now: {rejected}")
                # the inputs are gone or the transaction is invalid: it can never confirm
                await self._fail(msg.tx_id, f"broadcast rejected: {rejected}", signed=True)
                return
        await self.bus.publish(
            tx_subject("broadcast", msg.tx_id),
            TxBroadcast(tx_id=msg.tx_id, txid=msg.txid),
            f"broadcast.{msg.tx_id}",
        )
        self.broadcast_done[msg.tx_id] = fresh
        self._trim(self.broadcast_done)
        self.log.info("broadcast", tx_id=msg.tx_id, txid=msg.txid)

    async def _recheck(self, msg: TxBroadcast) -> tuple[int | None, bool]:
        """A spend unconfirmed for ``REBROADCAST_AFTER_S`` by the block follower's account: read its
        status (the follower may have missed its block: a gap longer than ``SCAN_BACK_BLOCKS``, a reorg)
        and return its height if it is confirmed; hand it over again if the backend forgot it. The flag
        says it was reported failed (refused for good)."""
        status = await self.chain.tx_status(msg.txid)
        if status.confirmed and status.block_height is not None:
            return status.block_height, False
        return None, await self._rebroadcast_if_dropped(msg)

    async def _rebroadcast_if_dropped(self, msg: TxBroadcast) -> bool:
        """If the backend no longer knows the spend (evicted from a mempool, a backend that lost its
        mempool), hand it over again. True when the chain refuses it for good (its inputs went
        elsewhere): then it is reported failed."""
        if await self._chain_has(msg.txid):
            return False
        signed = await last_message(self.bus, tx_subject("signed", msg.tx_id))
        if signed is None or signed.sender != "broadcaster" or not isinstance(signed.payload, TxSigned):
            return False
        self.log.warning(
            "transaction left the mempool; broadcasting it again", tx_id=msg.tx_id, txid=msg.txid
        )
        try:
            got = await self.chain.broadcast(signed.payload.signed_tx.hex())
            if got != msg.txid:
                raise RuntimeError(f"backend answered txid {got}, expected {msg.txid}")
        except BroadcastRejected as exc:
            if _already_known(exc) or not _permanent(exc):
                return False  # known after all, or refused for now: looked at again later
            if await self._chain_has(msg.txid):
                return False  # it confirmed (and its outputs were spent) in the meantime
            await self._fail(msg.tx_id, f"dropped from the mempool and refused again: {exc}", signed=True)
            return True
        return False

    async def _chain_has(self, txid: str) -> bool:
        """Whether the backend knows this transaction (in its mempool or a block): then it was broadcast
        before, and a rejection of the repeat means nothing."""
        try:
            await self.chain.tx(txid)
        except TxNotFound:
            return False
        return True

    async def follow_blocks(self) -> None:
        """Learn which transactions each new block confirmed: one tip read per ``BLOCK_POLL_S`` and two
        reads per new block, however many spends wait for a confirmation (polling each of them cost an
        HTTP request per spend per second). Starts at the current tip; older confirmations are found by
        the one status read :meth:`on_broadcast` does for a transaction it has not seen before."""
        while not self.ctx.stop.is_set():
            try:
                tip = await self.chain.tip_height()
                if self.scanned_height < 0:
                    self.scanned_height = tip
                found: list[tuple[str, str, int]] = []
                for height in range(max(self.scanned_height + 1, tip - SCAN_BACK_BLOCKS + 1), tip + 1):
                    block_hash = await self.chain.block_hash_at(height)
                    for t in await self.chain.block_txids(block_hash):
                        self.confirmed_in[t] = height
                        tx_id = self.awaiting.pop(t, None)
                        if tx_id is not None:
                            found.append((tx_id, t, height))
                    self._trim(self.confirmed_in)
                    self.scanned_height = height
                self.tip_height = tip
                # announced now, not when each waiting tx.broadcast comes back (CONFIRMATION_POLL_S)
                await asyncio.gather(*(self._confirmed(tx_id, t, h, tip) for tx_id, t, h in found))
            except EsploraError as exc:
                self.log.warning("following blocks failed; retrying", error=str(exc)[:200])
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.ctx.stop.wait(), BLOCK_POLL_S)

    async def on_broadcast(self, rec: Received) -> None:
        msg = rec.payload
        if not isinstance(msg, TxBroadcast) or rec.sender != "broadcaster":
            return
        height = self.confirmed_in.get(msg.txid)
        tip = self.tip_height
        now = time.monotonic()
        checked = self.watching.get(msg.txid)
        if height is None and checked is None:
            if self.broadcast_done.get(msg.tx_id):
                # broadcast here while the follower ran: its block is bound to be seen
                self.watching[msg.txid] = now
            else:  # first sight in this process: it may have confirmed before the follower started
                status = await self.chain.tx_status(msg.txid)
                if status.confirmed and status.block_height is not None:
                    height, tip = status.block_height, max(tip, status.block_height)
                else:
                    self.watching[msg.txid] = now
            self._trim(self.watching)
        elif height is None and checked is not None and now - checked >= REBROADCAST_AFTER_S:
            self.watching[msg.txid] = now
            height, failed = await self._recheck(msg)
            if failed:
                self.watching.pop(msg.txid, None)
                return  # it can never confirm: reported failed
            tip = max(tip, height or 0)
        if height is None:
            self.awaiting[msg.txid] = msg.tx_id  # the block follower announces it
            self._trim(self.awaiting)
            raise RetryLater(CONFIRMATION_POLL_S, "not confirmed yet")
        self.watching.pop(msg.txid, None)
        self.awaiting.pop(msg.txid, None)
        if msg.tx_id not in self.announced:
            await self._confirmed(msg.tx_id, msg.txid, height, tip)

    async def _confirmed(self, tx_id: str, txid: str, height: int, tip: int) -> None:
        out = TxConfirmed(tx_id=tx_id, txid=txid, block_height=height, confirmations=max(1, tip - height + 1))
        await self.bus.publish(tx_subject("confirmed", tx_id), out, f"confirmed.{tx_id}")
        self.announced[tx_id] = None
        self._trim(self.announced)
        self.watching.pop(txid, None)
        self.log.info("confirmed", tx_id=tx_id, txid=txid, height=height)


def _already_known(exc: BroadcastRejected) -> bool:
    """The backend has the transaction already (mempool or chain): it counts as broadcast."""
    return any(k in str(exc) for k in ALREADY_KNOWN)


def _permanent(exc: BroadcastRejected) -> bool:
    """A refusal after which the transaction can never confirm."""
    return any(k in str(exc) for k in PERMANENT)


async def serve(ctx: ServiceContext) -> None:
    b = Broadcaster(ctx)
    bus = ctx.bus
    me = ctx.cfg.identity
    bus.start_consumer(*consumer(me, "broadcaster-psigs"), b.on_psig)
    bus.start_consumer(*consumer(me, "broadcaster-signed"), b.on_signed)
    # every broadcast spend stays unacked until its block: on a 10-minute chain that is many at once
    bus.start_consumer(*consumer(me, "broadcaster-confirm"), b.on_broadcast, max_ack_pending=100_000)
    follower = asyncio.create_task(b.follow_blocks(), name="follow-blocks")
    ctx.ready()
    await ctx.stopped()
    follower.cancel()
    for pending in list(b.read_backs.values()):
        pending.cancel()
    await b.chain.aclose()
    with contextlib.suppress(asyncio.CancelledError):
        await follower


def main() -> None:
    run_service("broadcaster", serve, registry=REGISTRY)
