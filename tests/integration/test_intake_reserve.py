"""``services.intake.store.reserve`` against a real PostgreSQL: one round trip when nothing conflicts (an
optimistic insert), a read and another insert when it does, and no lock, so what keeps two spends off
one outpoint is the table's primary key. These tests make another intake process hold a coin or win the
race on purpose (its insert lands between this one's read and insert) and check that the choice is made
again, that a taken idempotency key answers with the existing request, that a process's own concurrent
requests never choose the same coins, and that endless losing ends in ``ReservationConflict``."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from services.intake import store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="session")]

COINS = [(hashlib.sha256(bytes([i])).hexdigest(), i % 3, 10_000 + i) for i in range(12)]
CANDIDATES = [(txid, vout) for txid, vout, _ in COINS]


def request(outpoint: tuple[str, int], key: str | None = None) -> store.NewRequest:
    txid, vout = outpoint
    amount = next(a for t, v, a in COINS if (t, v) == outpoint)
    return store.NewRequest(
        tx_id=uuid.uuid4().hex,
        idempotency_key=key,
        request_hash=hashlib.sha256(b"request").digest(),
        api_key_id="test",
        recipient="bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        amount=amount - 500,
        fee=500,
        fee_rate=2.0,
        memo="",
        message=b"\x80",
        outpoints=[(txid, vout, amount)],
        created_at_ms=1_700_000_000_000,
    )


class FirstFree:
    """A coin choice: the first candidate not reserved; remembers what it was shown each time."""

    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.seen: list[set[tuple[str, int]]] = []

    def __call__(self, reserved: set[tuple[str, int]]) -> store.NewRequest:
        self.seen.append(set(reserved))
        return request(next(c for c in CANDIDATES if c not in reserved), self.key)


async def store_other(conn: asyncpg.Connection, outpoint: tuple[str, int] | None, key: str | None) -> str:
    """What another intake process stores: a request (with ``key``) reserving ``outpoint``."""
    other = request(outpoint or CANDIDATES[-1], key)
    await conn.execute(
        """INSERT INTO spend_requests (tx_id, idempotency_key, request_hash, api_key_id, recipient, amount,
               fee, fee_rate, message) VALUES ($1, $2, $3, 'other', 'x', 1, 0, 1.0, '\\x80')""",
        other.tx_id,
        key,
        other.request_hash,
    )
    if outpoint is not None:
        await conn.execute(
            "INSERT INTO utxo_reservations (txid, vout, tx_id, amount) VALUES ($1, $2, $3, 1)",
            *outpoint,
            other.tx_id,
        )
    return other.tx_id


class RacedConnection:
    """A real connection whose reads of the reservations are each followed, before they return, by another
    intake's insert (through ``other``): of the coin this read says is free (``take_coin``) or of the
    idempotency key. ``races`` bounds how many reads are raced."""

    def __init__(self, conn: Any, other: asyncpg.Connection, races: int, take_coin: bool, key: str | None):
        self.conn, self.other, self.races, self.take_coin, self.key = conn, other, races, take_coin, key
        self.winners: list[str] = []
        self.reads = 0

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.reads += 1
        rows = await self.conn.fetch(sql, *args)
        if self.races > 0:
            self.races -= 1
            reserved = {(r["txid"], r["vout"]) for r in rows}
            coin = next(c for c in CANDIDATES if c not in reserved) if self.take_coin else None
            self.winners.append(await store_other(self.other, coin, self.key))
        return rows

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class RacedPool:
    def __init__(self, pool: asyncpg.Pool, raced: RacedConnection) -> None:
        self.pool, self.raced = pool, raced

    def acquire(self) -> Any:
        raced = self.raced

        class _Acquire:
            async def __aenter__(self) -> RacedConnection:
                self.cm = pool.acquire()
                raced.conn = await self.cm.__aenter__()
                return raced

            async def __aexit__(self, *exc: Any) -> None:
                await self.cm.__aexit__(*exc)

        pool = self.pool
        return _Acquire()


@pytest_asyncio.fixture
async def db(fresh_database_url: str) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Connection]]:
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=8)
    other = await asyncpg.connect(fresh_database_url)
    try:
        yield pool, other
    finally:
        await other.close()
        await pool.close()


async def reservations(conn: asyncpg.Connection) -> dict[tuple[str, int], str]:
    rows = await conn.fetch("SELECT txid, vout, tx_id FROM utxo_reservations")
    return {(r["txid"], r["vout"]): r["tx_id"] for r in rows}


async def test_an_uncontended_reservation_is_one_insert(db: tuple[asyncpg.Pool, asyncpg.Connection]) -> None:
    pool, other = db
    raced = RacedConnection(None, other, races=0, take_coin=False, key=None)
    choose = FirstFree()
    got = await store.reserve(RacedPool(pool, raced), None, CANDIDATES, choose, set())  # type: ignore[arg-type]
    assert isinstance(got, store.NewRequest) and raced.reads == 0 and choose.seen == [set()]
    assert (await reservations(other)) == {CANDIDATES[0]: got.tx_id}


async def test_a_coin_reserved_elsewhere_is_chosen_again(db: tuple[asyncpg.Pool, asyncpg.Connection]) -> None:
    pool, other = db
    elsewhere = await store_other(other, CANDIDATES[0], None)  # unknown to this process's choice
    raced = RacedConnection(None, other, races=0, take_coin=False, key=None)
    choose = FirstFree()
    got = await store.reserve(RacedPool(pool, raced), None, CANDIDATES, choose, set())  # type: ignore[arg-type]
    assert isinstance(got, store.NewRequest)
    assert choose.seen == [set(), {CANDIDATES[0]}] and raced.reads == 1
    held = await reservations(other)
    assert held == {CANDIDATES[0]: elsewhere, CANDIDATES[1]: got.tx_id}
    # nothing of the losing attempt was stored: exactly one request under our tx id
    assert await other.fetchval("SELECT count(*) FROM spend_requests WHERE tx_id = $1", got.tx_id) == 1


async def test_a_coin_taken_between_read_and_insert_is_chosen_again(
    db: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, other = db
    elsewhere = await store_other(other, CANDIDATES[0], None)  # the optimistic insert loses on this one
    raced = RacedConnection(None, other, races=1, take_coin=True, key=None)
    choose = FirstFree()
    got = await store.reserve(RacedPool(pool, raced), None, CANDIDATES, choose, set())  # type: ignore[arg-type]
    assert isinstance(got, store.NewRequest)
    # the second choice (read before the other insert) lost too; the third saw both coins reserved
    assert choose.seen == [set(), {CANDIDATES[0]}, {CANDIDATES[0], CANDIDATES[1]}]
    held = await reservations(other)
    assert held == {CANDIDATES[0]: elsewhere, CANDIDATES[1]: raced.winners[0], CANDIDATES[2]: got.tx_id}
    assert await other.fetchval("SELECT count(*) FROM spend_requests WHERE tx_id = $1", got.tx_id) == 1


async def test_a_taken_idempotency_key_answers_with_that_request(
    db: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, other = db
    winner = await store_other(other, None, "order-7")
    got = await store.reserve(pool, "order-7", CANDIDATES, FirstFree("order-7"), set())
    assert isinstance(got, store.Existing) and got.tx_id == winner
    assert await other.fetchval("SELECT count(*) FROM spend_requests") == 1
    assert await reservations(other) == {}


async def test_an_idempotency_key_taken_after_a_read_answers_with_that_request(
    db: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, other = db
    await store_other(other, CANDIDATES[0], None)  # the optimistic insert loses: a read follows
    raced = RacedConnection(None, other, races=1, take_coin=False, key="order-8")
    got = await store.reserve(RacedPool(pool, raced), "order-8", CANDIDATES, FirstFree("order-8"), set())  # type: ignore[arg-type]
    assert isinstance(got, store.Existing) and got.tx_id == raced.winners[0]
    assert await other.fetchval("SELECT count(*) FROM spend_requests WHERE idempotency_key = 'order-8'") == 1


async def test_losing_every_time_ends_in_a_conflict_and_stores_nothing(
    db: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, other = db
    elsewhere = await store_other(other, CANDIDATES[0], None)
    raced = RacedConnection(None, other, races=100, take_coin=True, key=None)
    choose = FirstFree()
    claiming: set[tuple[str, int]] = set()
    with pytest.raises(store.ReservationConflict):
        await store.reserve(RacedPool(pool, raced), None, CANDIDATES, choose, claiming)  # type: ignore[arg-type]
    assert len(choose.seen) == store.RESERVE_ATTEMPTS
    held = await reservations(other)
    assert set(held.values()) == {elsewhere, *raced.winners}  # only the other process's reservations
    assert claiming == set()  # nothing left claimed


async def test_concurrent_requests_of_one_process_choose_different_coins(
    db: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, other = db
    claiming: set[tuple[str, int]] = set()
    got = await asyncio.gather(
        *(store.reserve(pool, None, CANDIDATES, FirstFree(), claiming) for _ in range(8))
    )
    assert all(isinstance(g, store.NewRequest) for g in got)
    held = await reservations(other)
    assert len(held) == 8 and set(held.values()) == {g.tx_id for g in got}
    assert claiming == set()
    # and a ninth with every candidate reserved or claimed gets nothing (the choice raises, as the
    # intake's does on insufficient funds), storing nothing
    claiming |= set(CANDIDATES) - set(held)

    def nothing_free(reserved: set[tuple[str, int]]) -> store.NewRequest:
        assert set(CANDIDATES) <= reserved
        raise LookupError("no coin")

    with pytest.raises(LookupError):
        await store.reserve(pool, None, CANDIDATES, nothing_free, claiming)
    assert len(await reservations(other)) == 8


async def test_claimed_coins_are_not_chosen_and_a_choice_is_claimed_while_it_is_stored(
    db: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, other = db
    claiming = {CANDIDATES[0]}  # another request of this process is storing it
    during: list[set[tuple[str, int]]] = []

    class Watching(RacedConnection):
        async def execute(self, sql: str, *args: Any) -> Any:
            during.append(set(claiming))
            return await self.conn.execute(sql, *args)

    raced = Watching(None, other, races=0, take_coin=False, key=None)
    choose = FirstFree()
    got = await store.reserve(RacedPool(pool, raced), None, CANDIDATES, choose, claiming)  # type: ignore[arg-type]
    assert isinstance(got, store.NewRequest)
    assert choose.seen == [{CANDIDATES[0]}] and got.outpoints[0][:2] == CANDIDATES[1]
    assert during == [{CANDIDATES[0], CANDIDATES[1]}]  # claimed while its insert ran
    assert claiming == {CANDIDATES[0]}  # and released after; the other request's claim is untouched


async def test_on_stored_runs_while_the_choice_is_still_claimed(
    db: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    """Releasing the connection takes an await: the caller learns of the stored request before that, so
    no other request of the process can see the coin neither claimed nor known reserved."""
    pool, _ = db
    claiming: set[tuple[str, int]] = set()
    seen: list[tuple[store.NewRequest, set[tuple[str, int]]]] = []
    got = await store.reserve(
        pool, None, CANDIDATES, FirstFree(), claiming, lambda r: seen.append((r, set(claiming)))
    )
    assert isinstance(got, store.NewRequest) and len(seen) == 1
    stored, claimed_then = seen[0]
    assert stored is got and got.outpoints[0][:2] in claimed_then
    assert claiming == set()
