"""The audit chain's anchors outside PostgreSQL: signed checkpoints on JetStream, and the chain checked
against them.

Theory of operation
-------------------
The hash chain of ``audit_log`` (``db/001_init.sql``) shows a row changed in place, but whoever owns the
database can delete, reorder or rewrite rows and recompute every later hash, and the chain verifies
again. Keying the hashes (an HMAC) would not stop that: the key sits on the recorder's host. What the
database owner cannot rewrite is the ``AUDIT`` stream: created with ``deny_delete`` and ``deny_purge`` and
without rollups (``nats/jetstream.json``; the server refuses to lift either flag later), published to only
by the recorder (``schemas.names.PUBLISH_RIGHTS``), every message an envelope signed with the recorder's
Ed25519 identity key.

Anchoring (:class:`Anchorer`, in the recorder): after each commit the recorder notes the highest audit
row it wrote and the hash the database gave it (``INSERT ... RETURNING`` in that transaction: what was
committed, never a later read that a database owner could have prepared). A background task publishes an
:class:`~schemas.messages.AuditAnchor` ``(chain, seq, hash)`` on ``audit.anchor.<recorder>.<chain>`` when
the head moved, ``interval`` seconds (default 1) after the first commit it has not anchored, and once more
when the recorder stops. The spend path pays one comparison per recorded message; the bus carries at most
one anchor per ``interval`` however many spends go through (under load, thousands of audit rows per
anchor). ``<chain>`` names the database (``current_database()``), so recorders of different databases on
one broker never mix their anchors; the verifier takes the name from its own connection.

The tail: rows committed after the last anchor are protected by the chain alone. While the recorder runs,
every row is anchored within ``interval`` plus one publish; a tail deleted before its anchor arrives is
caught by that anchor (its row is missing). Only a crash leaves rows unanchored: at most the last
``interval`` seconds of commits, until the first anchor after the restart covers them as the database
holds them then. Rows other writers append (``mpcw apikey``) are covered by the recorder's next anchor.
``verify`` reports how many rows follow the last anchor.

Verifying (:func:`check_anchors`, pure; :func:`verify_anchored` reads both sides): the chain is
recomputed (``services.runtime.db.verify_audit_chain``); every message on the chain's anchor subjects is
opened like any bus message: signed by a known identity, for that very subject, by a sender allowed to
publish there (only a recorder). One that does not open (unsigned, signed by another identity, for
another subject or chain) is ignored and reported, never trusted and never fatal: the stream cannot be
purged, so a junk message must not fail every later verification. Then each valid anchor's row must
exist with the anchored hash. Each hash covers every row before it, so a matching anchor vouches for
the whole chain up to its row, and a failing one means that a row up to it was deleted, reordered or
rewritten (or, its row missing, the tail truncated): the first bad sequence reported is the one after the
last matching anchor below it (with an anchor after every commit, the bad row itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from prometheus_client import Counter, Gauge

from schemas.messages import AuditAnchor
from schemas.names import STREAM_AUDIT, audit_anchor_filter, audit_anchor_subject, check_token
from services.runtime.bus import Bus, StoredUnreadable, read_stored
from services.runtime.db import AuditProblem, verify_audit_chain
from services.runtime.logging import Logger
from services.runtime.seal import EnvelopeError, Identities, check_delivery, verify_envelope

from .project import Outcome

ANCHOR_INTERVAL_S = 1.0  # the longest a committed audit row waits for its anchor
RETRY_S = 1.0  # after a failed publish (the broker unreachable), the least wait before the next try
READ_BATCH = 1000  # anchors per fetch when verifying

ANCHORED = Gauge("mpcw_recorder_audit_anchored", "Audit row of the last published anchor")
ANCHOR_FAILURES = Counter("mpcw_recorder_audit_anchor_failures_total", "Anchor publishes that failed")


def chain_name(database: str) -> str:
    """The ``<chain>`` token of a database's audit chain: the database name when it is a valid subject
    token, else a digest of it."""
    try:
        return check_token(database)
    except ValueError:
        return "db-" + hashlib.sha256(database.encode()).hexdigest()[:16]


async def chain_of(conn: asyncpg.Connection | asyncpg.Pool) -> str:
    return chain_name(str(await conn.fetchval("SELECT current_database()")))


# ---- anchoring (the recorder) ------------------------------------------------------------------------------


class Anchorer:
    """Publishes the recorder's committed audit head, at most once per ``interval`` (see the module)."""

    def __init__(
        self, bus: Bus, pool: asyncpg.Pool, log: Logger, *, interval: float = ANCHOR_INTERVAL_S
    ) -> None:
        self.bus = bus
        self.pool = pool
        self.interval = interval
        self.head: tuple[int, bytes] | None = None  # the highest committed audit row noted: (id, hash)
        self.anchored = 0  # the audit row of the last anchor published
        self.chain: str | None = None
        self.log = log
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def note(self, outcomes: Iterable[Outcome]) -> None:
        """After a commit: remember its highest audit row (nothing else; the publishing is the task's)."""
        for o in outcomes:
            if o.audit_id is not None and o.audit_hash is not None:
                if self.head is None or o.audit_id > self.head[0]:
                    self.head = (o.audit_id, o.audit_hash)
                    self._moved.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-anchor")

    async def _run(self) -> None:
        while True:
            await self._moved.wait()
            await asyncio.sleep(self.interval)  # what commits meanwhile rides on the same anchor
            self._moved.clear()
            if not await self.publish():
                self._moved.set()
                await asyncio.sleep(max(RETRY_S - self.interval, 0.0))

    async def publish(self) -> bool:
        """Anchor the head if it moved since the last anchor; False when that failed (logged)."""
        head = self.head
        if head is None or head[0] <= self.anchored:
            return True
        seq, digest = head
        try:
            if self.chain is None:
                self.chain = await chain_of(self.pool)
            anchor = AuditAnchor(chain=self.chain, seq=seq, hash=digest)
            msg_id = f"anchor.{self.chain}.{seq}.{digest[:8].hex()}"
            await self.bus.publish(audit_anchor_subject(self.bus.identity, self.chain), anchor, msg_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ANCHOR_FAILURES.inc()
            self.log.warning("anchoring the audit chain failed; retrying", seq=seq, error=repr(exc)[:200])
            return False
        self.anchored = max(self.anchored, seq)
        ANCHORED.set(self.anchored)
        return True

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the task and anchor what the last commits wrote (call after the consumers stopped)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.publish(), timeout)


# ---- verifying ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAnchor:
    """One message as the ``AUDIT`` stream holds it."""

    stream_seq: int
    subject: str
    data: bytes


@dataclass(frozen=True)
class Anchor:
    """A valid anchor: ``sender`` signed that row ``seq`` of the chain had hash ``hash``."""

    stream_seq: int
    sender: str
    ts_ms: int
    seq: int
    hash: bytes


@dataclass(frozen=True)
class IgnoredAnchor:
    """A message on the anchor subjects that is not a valid anchor (never trusted)."""

    stream_seq: int
    sender: str  # as claimed; "" when even that is unreadable
    reason: str


@dataclass(frozen=True)
class AnchorProblem:
    """A valid anchor the database contradicts: rows ``first_bad`` .. ``seq`` are not what was anchored."""

    anchor: Anchor
    first_bad: int
    reason: str

    @property
    def seq(self) -> int:
        return self.anchor.seq


@dataclass
class AuditReport:
    """What ``mpcw audit verify`` found."""

    chain: str
    rows: int
    head: int  # the highest audit row (0: none)
    chain_problems: list[AuditProblem]
    anchors: list[Anchor] = field(default_factory=list)
    anchor_problems: list[AnchorProblem] = field(default_factory=list)
    ignored: list[IgnoredAnchor] = field(default_factory=list)
    anchored_to: int = 0  # the highest row a matching anchor vouches for (0: none)
    unanchored: int = 0  # rows after it

    @property
    def ok(self) -> bool:
        return not self.chain_problems and not self.anchor_problems

    @property
    def first_bad(self) -> int | None:
        """The first audit sequence that does not verify (None: all do)."""
        bad = [p.id for p in self.chain_problems if p.id] + [p.first_bad for p in self.anchor_problems]
        if not bad and self.chain_problems:
            return 0  # the recomputations disagree: no row to name
        return min(bad) if bad else None


def open_anchor(stored: StoredAnchor, chain: str, identities: Identities) -> Anchor:
    """The anchor in a stored message of ``chain``'s subjects; :class:`EnvelopeError` when it is none."""
    env = verify_envelope(stored.data, identities)
    check_delivery(env, stored.subject)  # signed for this subject, and its sender may publish there
    if env.type != AuditAnchor.__name__:
        raise EnvelopeError("unknown-type", f"type {env.type[:64]!r} on an anchor subject", env.sender, True)
    try:
        a = msgspec.msgpack.decode(env.payload, type=AuditAnchor)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EnvelopeError("bad-payload", str(exc)[:200], env.sender, True) from None
    if a.chain != chain or stored.subject != audit_anchor_subject(env.sender, chain):
        raise EnvelopeError("subject-mismatch", f"anchor of chain {a.chain[:64]!r}", env.sender, True)
    if a.seq < 1 or len(a.hash) != 32:
        raise EnvelopeError("bad-payload", "anchor sequence or hash out of range", env.sender, True)
    return Anchor(stored.stream_seq, env.sender, env.ts_ms, a.seq, a.hash)


def check_anchors(
    chain: str,
    rows: Mapping[int, bytes],
    chain_problems: list[AuditProblem],
    stored: Iterable[StoredAnchor],
    identities: Identities,
) -> AuditReport:
    """Check the database's chain (``rows``: audit id -> hash, ``chain_problems``: its recomputation)
    against every anchor stored for ``chain``."""
    report = AuditReport(
        chain=chain, rows=len(rows), head=max(rows, default=0), chain_problems=chain_problems
    )
    for s in stored:
        try:
            report.anchors.append(open_anchor(s, chain, identities))
        except EnvelopeError as exc:
            report.ignored.append(IgnoredAnchor(s.stream_seq, exc.sender or "", f"{exc.kind}: {exc.detail}"))
    report.anchors.sort(key=lambda a: (a.seq, a.stream_seq))
    matching = [a.seq for a in report.anchors if rows.get(a.seq) == a.hash]
    for a in report.anchors:
        held = rows.get(a.seq)
        if held == a.hash:
            continue
        last_good = max((s for s in matching if s < a.seq), default=0)
        if held is None:
            why = f"anchored row #{a.seq} is missing: rows deleted (or the tail truncated)"
        else:
            why = (
                f"row #{a.seq} does not hold the anchored hash: "
                "a row up to it was deleted, reordered or rewritten"
            )
        report.anchor_problems.append(AnchorProblem(a, last_good + 1, why))
    report.anchored_to = max(matching, default=0)
    report.unanchored = sum(1 for i in rows if i > report.anchored_to)
    return report


class AnchorsUnavailable(RuntimeError):
    """The anchors cannot be read (no ``AUDIT`` stream, or the broker does not answer)."""


async def read_anchors(js: JetStreamContext, chain: str, timeout: float = 10.0) -> list[StoredAnchor]:
    """Every message stored on ``chain``'s anchor subjects, in stream order (an ephemeral consumer)."""
    try:
        await js.stream_info(STREAM_AUDIT)
    except nats.js.errors.NotFoundError:
        raise AnchorsUnavailable(f"JetStream has no {STREAM_AUDIT} stream") from None
    try:
        stored = await read_stored(js, STREAM_AUDIT, audit_anchor_filter(chain), timeout, READ_BATCH)
    except StoredUnreadable as exc:
        raise AnchorsUnavailable(f"anchors: {exc}") from None
    return [StoredAnchor(m.stream_seq, m.subject, m.data) for m in stored]


async def verify_anchored(conn: asyncpg.Connection, bus: Bus) -> AuditReport:
    """Recompute the chain in PostgreSQL and check it against every anchor on the bus. The anchors are
    read first, the database after (one snapshot): every anchor read names a row committed before."""
    chain = await chain_of(conn)
    stored = await read_anchors(bus.js, chain)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        problems = await verify_audit_chain(conn)
        rows = {int(r["id"]): bytes(r["hash"]) for r in await conn.fetch("SELECT id, hash FROM audit_log")}
    return check_anchors(chain, rows, problems, stored, bus.identities)
