"""The recorder process: durable consumers on ``tx.>``, ``vote.>`` and ``node.violation.>`` feeding
:func:`services.recorder.project.record`.

Ordering is what makes the stored stream position an exactly-once guard: a message is applied only if
its sequence is beyond the stored one, so a later message must never be applied before an earlier one.
Each consumer therefore runs with ``max_ack_pending = 1`` (the server hands out the next message only
after the previous one was acked, and redelivers an unacked one first) and the handler never fails a
message: database errors are retried (with backoff) until they pass, so nothing is nak'ed with a delay
that would let a later message overtake it. A message that fails the same way a few times although the
database is reachable (a bug, not an outage) is recorded as a ``record.failed`` audit entry, its
position advanced, and the stream moves on.

Protocol subjects (``proto.>``) are not recorded: their payloads are encrypted or secret-adjacent, and
the lifecycle events already carry what an auditor needs. Heartbeats belong to the monitor.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter, Gauge

from schemas.names import violation_subject
from services.runtime.bus import Bus, Received
from services.runtime.config import ServiceConfig
from services.runtime.db import advance_stream_position, audit_append
from services.runtime.logging import get_logger

from .project import CONSUMER, Message, Outcome, record

RECORDED = Counter(
    "mpcw_recorder_messages_total", "Messages the recorder handled, by outcome", ["stream", "status"]
)
POSITION = Gauge("mpcw_recorder_stream_position", "Last stream sequence applied", ["stream"])
DB_RETRIES = Counter("mpcw_recorder_db_retries_total", "Database attempts retried", ["stream"])


@dataclass(frozen=True)
class Subscription:
    subject: str
    durable: str


SUBSCRIPTIONS: tuple[Subscription, ...] = (
    Subscription("tx.>", "tx"),
    Subscription("vote.>", "vote"),
    Subscription("node.violation.>", "violation"),
)

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
    def __init__(self, cfg: ServiceConfig, bus: Bus, pool: asyncpg.Pool) -> None:
        self.cfg = cfg
        self.bus = bus
        self.pool = pool
        self.log = get_logger(cfg.name)
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, *, ack_wait: float = 10.0, durable_prefix: str = "recorder") -> None:
        """Start the consumers (durables ``<prefix>-tx``, ``-vote``, ``-violation``)."""
        for s in SUBSCRIPTIONS:
            self.tasks.append(
                self.bus.start_consumer(
                    s.subject,
                    f"{durable_prefix}-{s.durable}",
                    self.handle,
                    batch=1,
                    max_ack_pending=1,
                    ack_wait=ack_wait,
                    ack_sync=True,
                )
            )
        self.log.info("recorder consuming", subjects=[s.subject for s in SUBSCRIPTIONS])

    async def handle(self, rec: Received) -> None:
        msg = Message(
            stream=rec.stream,
            seq=rec.seq,
            subject=rec.subject,
            sender=rec.sender,
            payload=rec.payload,
            msg_id=rec.msg_id,
            envelope_raw=rec.envelope_raw,
            ts_ms=rec.envelope.ts_ms,
        )
        outcome = await self._record_until_done(msg)
        RECORDED.labels(msg.stream, outcome.status).inc()
        POSITION.labels(msg.stream).set(msg.seq)
        if outcome.status == "refused":
            self.log.warning(
                "refused", subject=msg.subject, seq=msg.seq, sender=msg.sender, reason=outcome.detail[:300]
            )
        if outcome.violation is not None:
            try:
                await self.bus.publish(
                    violation_subject(outcome.violation.offender),
                    outcome.violation,
                    f"recorder.{msg.stream}.{msg.seq}",
                )
            except Exception as exc:  # best effort: the refusal is already in the audit log
                self.log.error("could not report a violation", subject=msg.subject, error=repr(exc)[:300])

    async def _record_until_done(self, msg: Message) -> Outcome:
        delay = 0.1
        bug_attempts = 0
        while True:
            try:
                async with self.pool.acquire() as conn:
                    return await record(conn, msg)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                DB_RETRIES.labels(msg.stream).inc()
                if not is_transient(exc):
                    bug_attempts += 1
                    if bug_attempts >= MAX_BUG_ATTEMPTS:
                        return await self._record_failure(msg, exc)
                self.log.warning(
                    "recording failed; retrying",
                    subject=msg.subject,
                    seq=msg.seq,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
                if self.bus.stopping.is_set():
                    # shutting down: leave the message unacked; it is redelivered first next time
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
                    audit_id, _ = await audit_append(
                        conn,
                        actor=msg.sender,
                        action="record.failed",
                        entity_type="message",
                        entity_id=msg.subject,
                        details={"error": type(exc).__name__, "msg_id": msg.msg_id},
                        stream=msg.stream,
                        stream_seq=msg.seq,
                    )
                    return Outcome("failed", type(exc).__name__, audit_id=audit_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc2:
                self.log.warning("recording the failure failed; retrying", error=repr(exc2)[:200])
                await asyncio.sleep(1.0)
