"""``python -m services.monitor --data-dir DIR [--durable-prefix P]``: runs until SIGTERM/SIGINT.

The monitor: liveness from heartbeats, byzantine violations, bans.

- ``node.heartbeat.<identity>`` -> ``node_status`` (status ``up``, last heartbeat = the heartbeat's own
  time, never later than now, never moving backwards; version; ready and detail). A sweep marks nodes
  whose last heartbeat is older than ``DOWN_AFTER`` seconds ``down``.
- ``node.violation.<offender>`` (``Violation`` or the bus's ``BusRejection``) -> one
  ``byzantine_violations`` row per stream message (UNIQUE(stream, stream_seq): a redelivery is a no-op).
  A report *counts* toward a ban when a service or the operator filed it, or its evidence envelope
  verifiably carries the offender's signature (a node cannot get another banned by reporting it);
  ``timeout`` reports never count (``schemas.kinds.NOT_COUNTING_VIOLATIONS``). Every report's evidence
  (the signed message that shows it) is kept in ``byzantine_violations.evidence``.
  ``BAN_AFTER`` counting violations of one offender within ``WINDOW`` -> ban for ``BAN_FOR``:
  ``node_status.status = 'banned'``, ``banned_until``, and KV ``bans`` ``<offender>`` -> :class:`BanRecord`
  signed by the monitor (consensus acts only on signed bans: ``services.runtime.signed_kv``).
- ``node.unban.<node>`` (:class:`NodeUnban`, only ``admin`` may publish it): the operator lifts a ban:
  ``node_status`` back to ``up``, ``unbanned_at`` set (only violations after it count toward the next
  ban), and KV ``bans`` ``<node>`` -> a signed :class:`BanRecord` that ended now. The recorder audits it.

The KV ``nodes`` bucket is written by each identity for itself (publish rights ``$KV.nodes.{self}``); the
monitor keeps its own entry there.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import asyncpg
import msgspec
from prometheus_client import Counter, Gauge

from schemas.envelope import EVIDENCE_MAX, BusRejection
from schemas.kinds import NOT_COUNTING_VIOLATIONS
from schemas.kv import BanRecord
from schemas.messages import REGISTRY, Heartbeat, NodeUnban, Violation
from schemas.names import (
    BUCKET_BANS,
    BUCKET_NODES,
    SERVICE_IDENTITIES,
    UNKNOWN,
    check_token,
    consumers_with_prefix,
)
from services.runtime.bus import Bus, Received
from services.runtime.config import ServiceConfig
from services.runtime.logging import get_logger
from services.runtime.seal import EnvelopeError
from services.runtime.service import ServiceContext, run_service, service_argparser
from services.runtime.signed_kv import SignedKV

BAN_AFTER = 5
WINDOW = dt.timedelta(hours=24)
BAN_FOR = dt.timedelta(hours=24)
DOWN_AFTER = 30.0
SWEEP_EVERY = 5.0

HEARTBEATS = Counter("mpcw_monitor_heartbeats_total", "Heartbeats recorded", ["identity"])
VIOLATIONS = Counter("mpcw_monitor_violations_total", "Violations recorded", ["kind", "counts"])
BANS = Counter("mpcw_monitor_bans_total", "Bans issued")
UNBANS = Counter("mpcw_monitor_unbans_total", "Bans lifted by the operator")
NODES_UP = Gauge("mpcw_monitor_nodes_up", "Identities with a recent heartbeat")
NODES_BANNED = Gauge("mpcw_monitor_nodes_banned", "Identities currently banned")


def _ts(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


def _now() -> dt.datetime:
    return dt.datetime.now(tz=dt.UTC)


def _clamp(ts_ms: int) -> dt.datetime:
    """A sender's timestamp, never in the future (a wrong clock cannot extend liveness)."""
    now = _now()
    if ts_ms <= 0:
        return now
    return min(_ts(ts_ms), now)


class Monitor:
    def __init__(self, cfg: ServiceConfig, bus: Bus, pool: asyncpg.Pool) -> None:
        self.cfg = cfg
        self.bus = bus
        self.pool = pool
        self.log = get_logger(cfg.name)

    def start(self, durable_prefix: str = "monitor") -> list[asyncio.Task[Any]]:
        consumers = {
            name.removeprefix(f"{durable_prefix}-"): (subject, name)
            for name, subject in consumers_with_prefix(self.cfg.identity, durable_prefix).items()
        }
        return [
            self.bus.start_consumer(*consumers["heartbeat"], self.on_heartbeat),
            self.bus.start_consumer(*consumers["violation"], self.on_violation),
            self.bus.start_consumer(*consumers["unban"], self.on_unban),
            asyncio.create_task(self.sweep_forever(), name="monitor-sweep"),
        ]

    # ---- heartbeats -------------------------------------------------------------------------------------

    async def on_heartbeat(self, rec: Received) -> None:
        hb = rec.payload
        identity = rec.subject.rsplit(".", 1)[-1]
        if not isinstance(hb, Heartbeat) or identity != rec.sender:
            return  # the bus already checked the sender's right to this subject
        at = _clamp(hb.ts_ms)
        detail = {"ready": hb.ready, **{k: int(v) for k, v in hb.detail.items()}}
        await self.pool.execute(
            """INSERT INTO node_status (node_id, status, last_heartbeat, version, detail, updated_at)
               VALUES ($1, 'up', $2, $3, $4::jsonb, now())
               ON CONFLICT (node_id) DO UPDATE SET
                   status = CASE WHEN node_status.banned_until > now() THEN 'banned' ELSE 'up' END,
                   last_heartbeat = GREATEST(node_status.last_heartbeat, EXCLUDED.last_heartbeat),
                   version = EXCLUDED.version,
                   detail = EXCLUDED.detail,
                   updated_at = now()
               WHERE node_status.last_heartbeat IS NULL
                  OR node_status.last_heartbeat <= EXCLUDED.last_heartbeat""",
            identity,
            at,
            hb.version,
            msgspec.json.encode(detail).decode(),
        )
        HEARTBEATS.labels(identity).inc()

    async def sweep(self) -> None:
        cutoff = _now() - dt.timedelta(seconds=DOWN_AFTER)
        await self.pool.execute(
            """UPDATE node_status SET status = 'down', updated_at = now()
               WHERE status = 'up' AND (last_heartbeat IS NULL OR last_heartbeat < $1)""",
            cutoff,
        )
        await self.pool.execute(
            """UPDATE node_status SET status = CASE WHEN last_heartbeat >= $1 THEN 'up' ELSE 'down' END,
                   updated_at = now()
               WHERE status = 'banned' AND banned_until <= now()""",
            cutoff,
        )
        row = await self.pool.fetchrow(
            """SELECT count(*) FILTER (WHERE status = 'up') AS up,
                      count(*) FILTER (WHERE status = 'banned') AS banned FROM node_status"""
        )
        if row is not None:
            NODES_UP.set(row["up"])
            NODES_BANNED.set(row["banned"])

    async def sweep_forever(self) -> None:
        nodes_kv = None
        while not self.bus.stopping.is_set():
            try:
                await self.sweep()
                if nodes_kv is None:
                    nodes_kv = await self.bus.kv(BUCKET_NODES)
                now_ms = int(time.time() * 1000)
                hb = Heartbeat(node=self.cfg.identity, ts_ms=now_ms, ready=True)
                await nodes_kv.put(self.cfg.identity, hb)
            except Exception as exc:
                self.log.warning("sweep failed", error=repr(exc)[:200])
            try:
                await asyncio.wait_for(self.bus.stopping.wait(), SWEEP_EVERY)
            except TimeoutError:
                pass

    # ---- violations -------------------------------------------------------------------------------------

    def counts(self, offender: str, p: Violation | BusRejection) -> bool:
        """Whether a report may count toward a ban (see the module docstring)."""
        if p.kind in NOT_COUNTING_VIOLATIONS:
            return False
        if p.reporter in SERVICE_IDENTITIES:
            return True
        if isinstance(p, BusRejection) and p.evidence:
            try:
                env = self.bus.verify_envelope(p.evidence)
            except EnvelopeError:
                return False
            except Exception:
                return False
            return env.sender == offender
        return False

    async def on_violation(self, rec: Received) -> None:
        p = rec.payload
        if not isinstance(p, Violation | BusRejection):
            return
        offender = rec.subject.split(".", 2)[2] if rec.subject.count(".") >= 2 else UNKNOWN
        try:
            check_token(offender)
        except ValueError:
            offender = UNKNOWN
        counts = offender != UNKNOWN and (p.reporter == rec.sender) and self.counts(offender, p)
        at = _clamp(rec.envelope.ts_ms)
        evidence = p.evidence[:EVIDENCE_MAX] or None
        tx_id = p.tx_id if isinstance(p, Violation) else ""
        async with self.pool.acquire() as conn, conn.transaction():
            inserted = await conn.fetchval(
                """INSERT INTO byzantine_violations
                       (node_id, kind, detail, reporter, subject, tx_id, evidence, stream, stream_seq,
                        created_at, counts)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                   ON CONFLICT (stream, stream_seq) DO NOTHING RETURNING id""",
                offender,
                p.kind[:100],
                p.detail[:1000],
                rec.sender,
                p.subject[:500],
                tx_id[:100],
                evidence,
                rec.stream,
                rec.seq,
                at,
                counts,
            )
            if inserted is None:
                return  # redelivered
            VIOLATIONS.labels(p.kind[:40], str(counts).lower()).inc()
            self.log.warning(
                "violation", offender=offender, kind=p.kind, reporter=rec.sender, counts=counts, seq=rec.seq
            )
            if offender == UNKNOWN:
                return
            recent = int(
                await conn.fetchval(
                    """SELECT count(*) FROM byzantine_violations
                       WHERE node_id = $1 AND counts AND created_at > now() - $2::interval
                         AND created_at > coalesce(
                             (SELECT unbanned_at FROM node_status WHERE node_id = $1), '-infinity')""",
                    offender,
                    WINDOW,
                )
            )
            row = await conn.fetchrow(
                """INSERT INTO node_status (node_id, violations) VALUES ($1, $2)
                   ON CONFLICT (node_id) DO UPDATE SET violations = EXCLUDED.violations, updated_at = now()
                   RETURNING banned_until""",
                offender,
                recent,
            )
            already = row is not None and row["banned_until"] is not None and row["banned_until"] > _now()
            if not counts or recent < BAN_AFTER or already:
                return
            until = _now() + BAN_FOR
            await conn.execute(
                """UPDATE node_status SET status = 'banned', banned_until = $2, updated_at = now()
                   WHERE node_id = $1""",
                offender,
                until,
            )
            ban = BanRecord(
                node=offender,
                until_ms=int(until.timestamp() * 1000),
                banned_at_ms=int(time.time() * 1000),
                violations=recent,
                reason=f"{recent} violations within {int(WINDOW.total_seconds() // 3600)} h (last: {p.kind})",
            )
            # the KV write inside the DB transaction: if it fails, the row rolls back and the message
            # is redelivered, so the ban is never recorded in one place only
            await (await SignedKV.open(self.bus, BUCKET_BANS)).put(offender, ban)  # signed: readers check
        BANS.inc()
        self.log.warning("banned", node=offender, until_ms=ban.until_ms, violations=recent)

    # ---- unban ------------------------------------------------------------------------------------------

    async def on_unban(self, rec: Received) -> None:
        """The operator lifts a ban (see the module docstring). Idempotent: a redelivery writes the same."""
        p = rec.payload
        node = rec.subject.split(".", 2)[2] if rec.subject.count(".") >= 2 else ""
        if not isinstance(p, NodeUnban) or rec.sender != "admin" or p.node != node:
            # the broker lets only admin publish here; anything else is dropped and reported
            await self.bus.report(
                rec.sender,
                "sender-not-allowed" if rec.sender != "admin" else "bad-recipient",
                f"unban of {node[:64]!r} not accepted",
                rec.subject,
                rec.stream,
                rec.seq,
                rec.envelope_raw,
            )
            return
        at = _clamp(rec.envelope.ts_ms)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO node_status (node_id, status, violations, banned_until, unbanned_at)
                   VALUES ($1, 'unknown', 0, NULL, $2)
                   ON CONFLICT (node_id) DO UPDATE SET
                       status = CASE WHEN node_status.status = 'banned' THEN 'up' ELSE node_status.status END,
                       violations = 0, banned_until = NULL,
                       unbanned_at = GREATEST(node_status.unbanned_at, EXCLUDED.unbanned_at),
                       updated_at = now()""",
                node,
                at,
            )
            now_ms = int(time.time() * 1000)
            lifted = BanRecord(
                node=node,
                until_ms=now_ms,
                banned_at_ms=now_ms,
                violations=0,
                reason=f"lifted: {p.reason[:200]}",
            )
            await (await SignedKV.open(self.bus, BUCKET_BANS)).put(node, lifted)
        UNBANS.inc()
        self.log.warning("unbanned", node=node, reason=p.reason[:200])


async def serve(ctx: ServiceContext) -> None:
    monitor = Monitor(ctx.cfg, ctx.bus, ctx.pool)
    tasks = monitor.start(durable_prefix=ctx.args.durable_prefix)
    ctx.ready()
    await ctx.stopped()
    for t in tasks:
        t.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = service_argparser("monitor")
    parser.add_argument(
        "--durable-prefix",
        default="monitor",
        help="consumer names <prefix>-heartbeat, ... (for tests: mpcw up's broker admits the default only)",
    )
    run_service("monitor", serve, argv=argv, registry=REGISTRY, use_db=True, parser=parser)
