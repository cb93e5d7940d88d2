"""The intake's PostgreSQL side: spend requests, UTXO reservations (``db/040_intake_spends.sql``) and the
read views over the recorder's projection.

Reservations: :func:`reserve` takes one round trip when nothing conflicts, and no lock. The caller selects
coins (leaving out what this process knows to be reserved), and the request and its reservations are
inserted in ONE statement. The primary key of ``utxo_reservations`` (one in-flight spend per outpoint) and
the unique idempotency key are the guards: when a chosen outpoint is reserved already (by another intake
process, or by this one before a restart; its own concurrent requests are kept apart by the ``claiming``
set), the statement fails whole, and the choice is made again knowing which of the candidates are
reserved (a read, then the insert); when it took the idempotency key, that request is the answer.
Two spends therefore never reserve the same outpoint, and a repeated idempotency key never creates a
second transaction.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncpg
from prometheus_client import Counter

from schemas.kinds import TxState
from schemas.rest import TransactionView, TransitionView, VoteView

RESERVE_CHOICES = Counter(
    "mpcw_intake_reserve_choices_total",
    "Coin choices made for spend requests: first (optimistic), again (after a read), lost (the insert hit a"
    " reserved outpoint)",
    ["kind"],
)
RESERVE_ATTEMPTS = 8  # choices made again because another intake took a chosen outpoint meanwhile
IDEMPOTENCY_CONSTRAINT = "spend_requests_idempotency_key_key"
T = TypeVar("T")


def ms(ts: dt.datetime | None) -> int:
    return int(ts.timestamp() * 1000) if ts is not None else 0


@dataclass(frozen=True)
class Existing:
    """A spend request already stored under the idempotency key."""

    tx_id: str
    request_hash: bytes
    published: bool
    message: bytes


async def find_by_idempotency_key(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> Existing | None:
    row = await conn.fetchrow(
        "SELECT tx_id, request_hash, published_at, message FROM spend_requests WHERE idempotency_key = $1",
        key,
    )
    if row is None:
        return None
    return Existing(
        row["tx_id"], bytes(row["request_hash"]), row["published_at"] is not None, bytes(row["message"])
    )


@dataclass(frozen=True)
class NewRequest:
    tx_id: str
    idempotency_key: str | None
    request_hash: bytes
    api_key_id: str
    recipient: str
    amount: int
    fee: int
    fee_rate: float
    memo: str
    message: bytes
    outpoints: list[tuple[str, int, int]]  # txid, vout, amount
    created_at_ms: int

    def view(self) -> TransactionView:
        """What ``get_transaction`` answers for it until the recorder has projected it."""
        return TransactionView(
            id=self.tx_id,
            state=TxState.PENDING,
            recipient=self.recipient,
            amount_sats=self.amount,
            fee_sats=self.fee,
            fee_rate=self.fee_rate,
            txid=None,
            reasons=[],
            created_at_ms=self.created_at_ms,
            updated_at_ms=self.created_at_ms,
            timeline=[TransitionView(state=TxState.PENDING, at_ms=self.created_at_ms)],
        )


class ReservationConflict(Exception):
    """Other requests kept reserving the outpoints chosen for this one (``RESERVE_ATTEMPTS`` times)."""


_RESERVED_AMONG = """SELECT r.txid, r.vout FROM utxo_reservations r
    JOIN unnest($1::text[], $2::int[]) AS c(txid, vout) ON r.txid = c.txid AND r.vout = c.vout"""

# the request and its reservations in one statement: all of it is stored, or (a taken outpoint or key)
# none of it. The foreign key of the reservations is checked at the end of the statement, when the
# request row is there.
_INSERT_REQUEST = """WITH req AS (
    INSERT INTO spend_requests (tx_id, idempotency_key, request_hash, api_key_id, recipient, amount, fee,
        fee_rate, memo, message, created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, to_timestamp($11::bigint / 1000.0))
    RETURNING tx_id)
INSERT INTO utxo_reservations (txid, vout, tx_id, amount)
SELECT c.txid, c.vout, req.tx_id, c.amount
FROM req, unnest($12::text[], $13::int[], $14::bigint[]) AS c(txid, vout, amount)"""


async def reserve(
    pool: asyncpg.Pool,
    idempotency_key: str | None,
    candidates: list[tuple[str, int]],
    select: Callable[[set[tuple[str, int]]], NewRequest],
    claiming: set[tuple[str, int]],
    on_stored: Callable[[NewRequest], None] | None = None,
) -> NewRequest | Existing:
    """The existing request for ``idempotency_key``, or ``select(reserved)`` (which may raise to abort)
    stored with its reservations. ``reserved`` is ``claiming`` (the outpoints this process's other
    requests are storing right now, shared by the caller's concurrent calls; each call adds its choice
    while it stores it) and, once a first choice hit a reserved outpoint, the reserved part of
    ``candidates`` (the outpoints the caller may pick from: the table also keeps reservations of spends
    confirmed a while ago, which no current UTXO list holds, so it is not read whole). Raises
    :class:`ReservationConflict` when the chosen outpoints were taken ``RESERVE_ATTEMPTS`` times in a
    row. ``on_stored(request)`` runs the moment the request is stored, while its outpoints are still
    claimed (releasing the connection takes an await, in which other requests choose)."""
    txids = [t for t, _ in candidates]
    vouts = [v for _, v in candidates]
    async with pool.acquire() as conn:
        for attempt in range(RESERVE_ATTEMPTS):
            if attempt == 0:  # optimistic: the caller's candidates leave out what it knows is taken
                RESERVE_CHOICES.labels("first").inc()
                try:
                    req = select(set(claiming))
                except Exception:
                    continue  # a refusal is decided knowing what is reserved (and says so)
            else:
                RESERVE_CHOICES.labels("again").inc()
                rows = await conn.fetch(_RESERVED_AMONG, txids, vouts)
                req = select({(r["txid"], r["vout"]) for r in rows} | claiming)
            mine = {(txid, vout) for txid, vout, _ in req.outpoints} - claiming
            claiming |= mine
            try:
                await conn.execute(
                    _INSERT_REQUEST,
                    req.tx_id,
                    req.idempotency_key,
                    req.request_hash,
                    req.api_key_id,
                    req.recipient,
                    req.amount,
                    req.fee,
                    req.fee_rate,
                    req.memo,
                    req.message,
                    req.created_at_ms,
                    [o[0] for o in req.outpoints],
                    [o[1] for o in req.outpoints],
                    [o[2] for o in req.outpoints],
                )
                if on_stored is not None:
                    on_stored(req)
                return req
            except asyncpg.UniqueViolationError as exc:
                if idempotency_key is not None and exc.constraint_name == IDEMPOTENCY_CONSTRAINT:
                    existing = await find_by_idempotency_key(conn, idempotency_key)
                    if existing is not None:
                        return existing
                RESERVE_CHOICES.labels("lost").inc()  # a chosen outpoint is reserved: choose again
            finally:
                claiming -= mine
    raise ReservationConflict(
        f"the chosen outpoints were reserved by other requests {RESERVE_ATTEMPTS} times"
    )


async def mark_published(pool: asyncpg.Pool, tx_ids: list[str]) -> None:
    await pool.execute(
        """UPDATE spend_requests SET published_at = now()
           WHERE tx_id = ANY($1::text[]) AND published_at IS NULL""",
        tx_ids,
    )


async def unpublished(pool: asyncpg.Pool) -> list[tuple[str, bytes]]:
    rows = await pool.fetch(
        "SELECT tx_id, message FROM spend_requests WHERE published_at IS NULL ORDER BY created_at"
    )
    return [(r["tx_id"], bytes(r["message"])) for r in rows]


async def prune_reservations(pool: asyncpg.Pool, older_than_s: float) -> int:
    """Forget the reservations of spends confirmed more than ``older_than_s`` ago: their outpoints are
    spent on chain and have long left every UTXO list intake may still hold."""
    status = await pool.execute(
        """DELETE FROM utxo_reservations r USING transactions t
           WHERE r.tx_id = t.id AND t.state = 'confirmed'
             AND t.updated_at < now() - make_interval(secs => $1)""",
        older_than_s,
    )
    return int(status.split()[-1])


async def reserved_total(pool: asyncpg.Pool) -> tuple[set[tuple[str, int]], int]:
    rows = await pool.fetch("SELECT txid, vout, amount FROM utxo_reservations")
    return {(r["txid"], r["vout"]) for r in rows}, sum(int(r["amount"]) for r in rows)


# ---- views ----------------------------------------------------------------------------------------------

_LIST_SQL = """
SELECT * FROM (
    SELECT t.id, t.state, t.recipient, t.amount, t.fee, t.fee_rate, t.txid, t.reasons,
           t.created_at, t.updated_at
    FROM transactions t
    UNION ALL
    SELECT s.tx_id, 'pending', s.recipient, s.amount, s.fee, s.fee_rate, NULL, '{}'::text[],
           s.created_at, s.created_at
    FROM spend_requests s
    WHERE NOT EXISTS (SELECT 1 FROM transactions t WHERE t.id = s.tx_id)
) v
WHERE ($1::text IS NULL OR v.state = $1)
ORDER BY v.created_at DESC, v.id
LIMIT $2 OFFSET $3
"""


def _view(row: asyncpg.Record, **more: Any) -> TransactionView:
    return TransactionView(
        id=row["id"],
        state=TxState(row["state"]),
        recipient=row["recipient"],
        amount_sats=int(row["amount"]),
        fee_sats=row["fee"],
        fee_rate=row["fee_rate"],
        txid=row["txid"],
        reasons=list(row["reasons"] or []),
        created_at_ms=ms(row["created_at"]),
        updated_at_ms=ms(row["updated_at"]),
        **more,
    )


async def list_transactions(
    pool: asyncpg.Pool, state: str | None, limit: int, offset: int
) -> list[TransactionView]:
    return [_view(r) for r in await pool.fetch(_LIST_SQL, state, limit, offset)]


async def get_transaction(pool: asyncpg.Pool, tx_id: str) -> TransactionView | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            """SELECT id, state, recipient, amount, fee, fee_rate, txid, signed_tx, reasons, created_at,
                      updated_at FROM transactions WHERE id = $1""",
            tx_id,
        )
        if row is None:
            pending = await conn.fetchrow(
                """SELECT tx_id AS id, 'pending' AS state, recipient, amount, fee, fee_rate, NULL AS txid,
                          '{}'::text[] AS reasons, created_at, created_at AS updated_at
                   FROM spend_requests WHERE tx_id = $1""",
                tx_id,
            )
            if pending is None:
                return None
            created = TransitionView(state=TxState.PENDING, at_ms=ms(pending["created_at"]))
            return _view(pending, timeline=[created])
        timeline = [
            TransitionView(state=TxState(r["to_state"]), at_ms=ms(r["at"]), detail=r["detail"])
            for r in await conn.fetch(
                "SELECT to_state, at, detail FROM transaction_transitions WHERE tx_id = $1 ORDER BY id", tx_id
            )
        ]
        votes = [
            VoteView(node=r["node_id"], approve=r["approve"], reasons=list(r["reasons"]))
            for r in await conn.fetch(
                "SELECT node_id, approve, reasons FROM votes WHERE tx_id = $1 ORDER BY node_id", tx_id
            )
        ]
        signed = row["signed_tx"]
        return _view(
            row,
            timeline=timeline,
            votes=votes,
            signed_tx_hex=bytes(signed).hex() if signed is not None else None,
        )


async def transitions_after(pool: asyncpg.Pool, after: int, limit: int) -> list[asyncpg.Record]:
    """The projection's state changes with an id above ``after``, oldest first. Only the recorder's one
    transaction consumer writes them, one batch after another, so ids become visible in order and an id
    is a cursor that skips nothing."""
    return list(
        await pool.fetch(
            """SELECT id, tx_id, from_state, to_state, event, detail, at FROM transaction_transitions
               WHERE id > $1 ORDER BY id LIMIT $2""",
            after,
            limit,
        )
    )


async def last_transition_id(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT coalesce(max(id), 0) FROM transaction_transitions"))


async def node_rows(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await pool.fetch(
        """SELECT node_id, status, last_heartbeat, version, violations, banned_until, detail
           FROM node_status ORDER BY node_id"""
    )
    return rows
