"""``python -m services.recorder --data-dir DIR [--ack-wait S] [--batch N] [--anchor-interval S]
[--durable-prefix P]``: runs until SIGTERM/SIGINT, finishes the batch in hand (committed and acked),
anchors the audit chain's head, exits 0.

The recorder service: durable consumers on ``tx.>``, ``vote.>`` and ``node.violation.>`` feeding
:func:`services.recorder.project.record`.

Ordering is what makes the stored stream position an exactly-once guard: a message is applied only if
its sequence is beyond the stored one, so a later message must never be applied before an earlier one.
Each consumer therefore fetches batches of ``batch`` messages with ``max_ack_pending = batch`` (the server
hands out the next batch only after the previous one was acked), is reset at every start (and
reconnect) to begin right after the stored position (``resume_from``: a crashed instance's unacked batch
can then never be overtaken by later messages; nothing before the position is needed again) and
applies a whole batch in ONE database transaction (:func:`~services.recorder.project.record`; with
``batch = 1`` every message is a batch of one), then acks it; the handler never fails a batch:
transient database errors are retried (with backoff) until they pass, so nothing is nak'ed with a delay
that would let a later message overtake it. When a batch of several fails otherwise (a bug, a
constraint nobody foresaw) it is recorded again as batches of one: a message that fails the same way a
few times although the database is reachable is recorded as a ``record.failed`` audit entry, its
position advanced, and the stream moves on.

After each commit the highest audit row written (and its hash) is handed to the
:class:`~services.recorder.anchor.Anchorer`, which signs it onto ``audit.anchor.<recorder>.<chain>`` at
most once per ``anchor_interval``, off the batch's path; at stop, after the consumers finished, the last
head is anchored.

Protocol subjects (``proto.>``) are not recorded: their payloads are encrypted or secret-adjacent, and
the lifecycle events already carry what an auditor needs. Heartbeats belong to the monitor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import OrderedDict
from collections.abc import Sequence

import asyncpg
import msgspec
from prometheus_client import Counter, Gauge

from schemas import envelope as E
from schemas.messages import REGISTRY, TxApproved, TxRejected
from schemas.names import consumers_with_prefix, stream_for, violation_subject
from services.runtime.bus import Bus, Received
from services.runtime.config import ServiceConfig
from services.runtime.db import advance_stream_position, audit_append, stream_position
from services.runtime.logging import get_logger
from services.runtime.service import ServiceContext, run_service, service_argparser

from .anchor import ANCHOR_INTERVAL_S, Anchorer
from .project import CONSUMER, Message, Outcome, record

RECORDED = Counter(
    "mpcw_recorder_messages_total", "Messages the recorder handled, by outcome", ["stream", "status"]
)
POSITION = Gauge("mpcw_recorder_stream_position", "Last stream sequence applied", ["stream"])
DB_RETRIES = Counter("mpcw_recorder_db_retries_total", "Database attempts retried", ["stream"])
BATCH_FALLBACKS = Counter(
    "mpcw_recorder_batch_fallbacks_total", "Batches recorded as batches of one after an error", ["stream"]
)
BATCH = 256  # messages per fetch and per database transaction
LINGER_S = 0.02  # a batch waits this long to fill: fewer, bigger transactions; views lag by as much
VOTES_WAIT_S = 0.5  # how long a decision waits for the votes it counted to be projected first
VOTES_DB_RECHECK_S = 0.1  # meanwhile the database is asked this often (votes committed before a restart)
RECENT_VOTES = 50_000  # committed votes remembered for that wait


TRANSIENT = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.AdminShutdownError,
)
MAX_BUG_ATTEMPTS = 3


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT)


class Recorder:
    def __init__(
        self, cfg: ServiceConfig, bus: Bus, pool: asyncpg.Pool, *, anchor_interval: float = ANCHOR_INTERVAL_S
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        # the projection applies every message in stream order (a nak would leave a gap): no flood delay
        # here; a flood is slowed at the services that act on it and lands in the audit log in full
        bus.sender_rate = None
        self.pool = pool
        self.log = get_logger(cfg.name)
        self.anchorer = Anchorer(bus, pool, self.log, interval=anchor_interval)
        self.tasks: list[asyncio.Task[None]] = []
        # (tx_id, node) of the votes this process committed lately: a decision's wait for its votes looks
        # here first and asks the database only for what it does not find (e.g. after a restart)
        self.recent_votes: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._votes_committed = asyncio.Event()  # set (and replaced) whenever votes are committed

    def start(self, *, ack_wait: float = 10.0, durable_prefix: str = "recorder", batch: int = BATCH) -> None:
        """Start the consumers (durables ``<prefix>-tx``, ``-vote``, ``-violation``: ``CONSUMERS`` of
        ``schemas.names``), ``batch`` messages per fetch and per database transaction."""
        subscriptions = consumers_with_prefix(self.cfg.identity, durable_prefix)
        for durable, subject in subscriptions.items():
            task = self.bus.start_batch_consumer(
                subject,
                durable,
                self.handle,
                batch=batch,
                max_ack_pending=batch,
                ack_wait=ack_wait,
                resume_from=functools.partial(self._resume_from, stream_for(subject)),
                linger=LINGER_S,
            )
            self.tasks.append(task)
        self.anchorer.start()
        self.log.info("recorder consuming", consumers=subscriptions, batch=batch)

    async def stop(self) -> None:
        """After SIGTERM: let the consumers finish the batch in hand, then anchor what they committed."""
        await self.bus.stop_consuming()
        await self.anchorer.close()

    async def _resume_from(self, stream: str) -> int:
        """Where a consumer (re)starts: right after the position stored with the last commit."""
        while True:
            try:
                return await stream_position(self.pool, stream, CONSUMER) + 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.log.warning("reading the stream position failed; retrying", error=repr(exc)[:200])
                await asyncio.sleep(1.0)

    async def handle(self, recs: list[Received]) -> None:
        """One fetched batch (stream order): recorded in one transaction, then acked by the bus."""
        if not recs:
            return
        msgs = [_message(r) for r in recs]
        await self._await_counted_votes(msgs)
        outcomes = await self._record_until_done(msgs)
        self._remember_votes(msgs, outcomes)
        await self._after(msgs, outcomes)

    def _remember_votes(self, msgs: list[Message], outcomes: list[Outcome]) -> None:
        added = False
        for msg, outcome in zip(msgs, outcomes, strict=True):
            if msg.stream == "VOTE" and outcome.status in ("applied", "replay"):
                _, tx_id, node = msg.subject.split(".", 2)
                self.recent_votes[(tx_id, node)] = None
                added = True
        while len(self.recent_votes) > RECENT_VOTES:
            self.recent_votes.popitem(last=False)
        if added:  # wake the decisions waiting for votes; later ones wait on a fresh event
            self._votes_committed.set()
            self._votes_committed = asyncio.Event()

    async def _await_counted_votes(self, msgs: list[Message]) -> None:
        """A batch holding an approval or rejection waits (up to ``VOTES_WAIT_S``) until the votes its
        certificate counts are projected: the vote stream is consumed apart from this one, and a view
        showing a spend rejected before the votes that rejected it would show it without them. The
        certificate is only read for who voted (the votes themselves come from the vote stream, verified);
        after the wait the batch is recorded whatever is missing."""
        wanted: set[tuple[str, str]] = set()
        for msg in msgs:
            if isinstance(msg.payload, TxApproved | TxRejected):
                for raw in msg.payload.certificate:
                    try:
                        wanted.add((msg.payload.tx_id, E.decode(raw).sender))
                    except (msgspec.DecodeError, msgspec.ValidationError):
                        continue  # not a vote anyone can wait for; the projection judges it
        wanted -= self.recent_votes.keys()
        if not wanted:
            return
        tx_ids = sorted({tx for tx, _ in wanted})
        deadline = time.monotonic() + VOTES_WAIT_S
        # this process's vote consumer usually commits them a moment later: wait for that first, and ask
        # the database (votes committed before a restart) only now and then
        next_query = time.monotonic() + LINGER_S
        while True:
            committed = self._votes_committed
            pause = max(0.0, min(next_query, deadline) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(committed.wait(), pause)
            wanted -= self.recent_votes.keys()
            if not wanted or time.monotonic() > deadline:
                return
            if time.monotonic() >= next_query:
                try:
                    rows = await self.pool.fetch(
                        "SELECT tx_id, node_id FROM votes WHERE tx_id = ANY($1::text[])", tx_ids
                    )
                except (OSError, asyncpg.PostgresError):
                    return  # the recording itself retries the database
                wanted -= {(r["tx_id"], r["node_id"]) for r in rows}
                if not wanted:
                    return
                next_query = time.monotonic() + VOTES_DB_RECHECK_S

    async def _after(self, msgs: list[Message], outcomes: list[Outcome]) -> None:
        """The audit head to anchor, metrics, refusal logs and violation reports of recorded (committed)
        messages."""
        self.anchorer.note(outcomes)
        for msg, outcome in zip(msgs, outcomes, strict=True):
            RECORDED.labels(msg.stream, outcome.status).inc()
            if outcome.status == "refused":
                self.log.warning(
                    "refused",
                    subject=msg.subject,
                    seq=msg.seq,
                    sender=msg.sender,
                    reason=outcome.detail[:300],
                )
        POSITION.labels(msgs[-1].stream).set(msgs[-1].seq)
        for msg, outcome in zip(msgs, outcomes, strict=True):
            if outcome.violation is None:
                continue
            try:
                await self.bus.publish(
                    violation_subject(outcome.violation.offender),
                    outcome.violation,
                    f"recorder.{msg.stream}.{msg.seq}",
                )
            except Exception as exc:  # best effort: the refusal is already in the audit log
                self.log.error("could not report a violation", subject=msg.subject, error=repr(exc)[:300])

    async def _record_until_done(self, msgs: Sequence[Message]) -> list[Outcome]:
        """:func:`record` ``msgs``, retrying transient errors until they pass. After any other error a
        batch of several is recorded again as batches of one, and a single message that keeps failing
        (``MAX_BUG_ATTEMPTS``) is given up on (:meth:`_record_failure`)."""
        stream = msgs[0].stream
        delay = 0.1
        bug_attempts = 0
        while True:
            try:
                async with self.pool.acquire() as conn:
                    return await record(conn, msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                DB_RETRIES.labels(stream).inc()
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                if not is_transient(exc):
                    if len(msgs) > 1:
                        BATCH_FALLBACKS.labels(stream).inc()
                        self.log.warning(
                            "batch failed; recording it message by message",
                            stream=stream,
                            first_seq=msgs[0].seq,
                            last_seq=msgs[-1].seq,
                            error=error,
                        )
                        return [o for msg in msgs for o in await self._record_until_done([msg])]
                    bug_attempts += 1
                    if bug_attempts >= MAX_BUG_ATTEMPTS:
                        return [await self._record_failure(msgs[0], exc)]
                self.log.warning(
                    "recording failed; retrying",
                    stream=stream,
                    first_seq=msgs[0].seq,
                    last_seq=msgs[-1].seq,
                    error=error,
                )
                if self.bus.stopping.is_set():
                    # shutting down: leave the batch unacked; it is redelivered first next time
                    raise asyncio.CancelledError from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _record_failure(self, msg: Message, exc: Exception) -> Outcome:
        """Give up on one message that fails deterministically: audit it, advance past it."""
        self.log.error("message cannot be recorded; skipped", subject=msg.subject, seq=msg.seq)
        while True:
            try:
                async with self.pool.acquire() as conn, conn.transaction():
                    if not await advance_stream_position(conn, msg.stream, msg.seq, CONSUMER):
                        return Outcome("duplicate")
                    audit_id, audit_hash = await audit_append(
                        conn,
                        actor=msg.sender,
                        action="record.failed",
                        entity_type="message",
                        entity_id=msg.subject,
                        details={"error": type(exc).__name__, "msg_id": msg.msg_id},
                        stream=msg.stream,
                        stream_seq=msg.seq,
                    )
                    return Outcome("failed", type(exc).__name__, audit_id=audit_id, audit_hash=audit_hash)
            except asyncio.CancelledError:
                raise
            except Exception as exc2:
                self.log.warning("recording the failure failed; retrying", error=repr(exc2)[:200])
                await asyncio.sleep(1.0)


def _message(rec: Received) -> Message:
    return Message(
        stream=rec.stream,
        seq=rec.seq,
        subject=rec.subject,
        sender=rec.sender,
        payload=rec.payload,
        msg_id=rec.msg_id,
        envelope_raw=rec.envelope_raw,
        ts_ms=rec.envelope.ts_ms,
    )


async def serve(ctx: ServiceContext) -> None:
    recorder = Recorder(ctx.cfg, ctx.bus, ctx.pool, anchor_interval=ctx.args.anchor_interval)
    recorder.start(ack_wait=ctx.args.ack_wait, durable_prefix=ctx.args.durable_prefix, batch=ctx.args.batch)
    ctx.ready()
    await ctx.stopped()
    await recorder.stop()


def main(argv: list[str] | None = None) -> None:
    parser = service_argparser("recorder")
    parser.add_argument("--ack-wait", type=float, default=10.0, help="unacked message returns after S")
    parser.add_argument(
        "--batch",
        type=int,
        default=BATCH,
        help="messages per fetch and per DB transaction (1: every message a transaction of its own)",
    )
    parser.add_argument(
        "--anchor-interval",
        type=float,
        default=ANCHOR_INTERVAL_S,
        help="the audit chain's head is anchored on the bus at most this often (seconds)",
    )
    parser.add_argument(
        "--durable-prefix",
        default="recorder",
        help="consumer names <prefix>-tx, -vote, ... (for tests: mpcw up's broker admits only the default)",
    )
    run_service("recorder", serve, argv=argv, registry=REGISTRY, use_db=True, parser=parser)
