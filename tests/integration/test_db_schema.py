"""db/ migrations against a real PostgreSQL: idempotence, constraints, append-only hash-chained audit log."""

from __future__ import annotations

import hashlib
import itertools

import asyncpg
import pytest

from services.runtime.db import (
    advance_stream_position,
    audit_append,
    lookup_api_key,
    migrate,
    new_api_key,
    store_api_key,
    verify_audit_chain,
)

TABLES = {
    "transactions",
    "transaction_transitions",
    "voting_rounds",
    "votes",
    "byzantine_violations",
    "presignature_usage",
    "node_status",
    "audit_log",
    "api_keys",
    "stream_positions",
    "schema_migrations",
}


async def test_migrations_idempotent(database_url: str) -> None:
    assert await migrate(database_url) == []  # already applied by the fixture
    assert await migrate(database_url) == []
    conn = await asyncpg.connect(database_url)
    try:
        names = {
            r["tablename"]
            for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")
        }
        assert TABLES <= names
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 1
    finally:
        await conn.close()


async def test_transaction_state_check(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO transactions (id, state, recipient, amount) VALUES ('t-ok', 'pending', 'bc1q', 1000)"
        )
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(
                "INSERT INTO transactions (id, state, recipient, amount) VALUES ('t-bad', 'sent', 'bc1q', 1)"
            )
        with pytest.raises(asyncpg.UniqueViolationError):
            for i in range(2):
                await conn.execute(
                    "INSERT INTO transactions (id, state, recipient, amount, idempotency_key)"
                    " VALUES ($1, 'pending', 'x', 1, 'idem-1')",
                    f"t-idem-{i}",
                )
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("t", "n", "ok"),
    [
        (4, 5, True),
        (3, 5, True),
        (2, 5, False),
        (3, 4, True),
        (2, 4, False),
        (2, 3, True),
        (1, 1, True),
        (6, 5, False),
    ],
)
async def test_voting_rounds_threshold_check(database_url: str, t: int, n: int, ok: bool) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        insert = (
            "INSERT INTO voting_rounds (round_id, tx_id, threshold, total_nodes) VALUES ($1, 'tx', $2, $3)"
        )
        if ok:
            await conn.execute(insert, f"r-{t}-{n}", t, n)
        else:
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(insert, f"r-{t}-{n}", t, n)
    finally:
        await conn.close()


async def test_votes_unique_per_round_and_node(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        q = "INSERT INTO votes (round_id, tx_id, node_id, approve, envelope) VALUES ('rv', 'tx', $1, 't', $2)"
        await conn.execute(q, "node-1", b"env1")
        await conn.execute(q, "node-2", b"env2")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(q, "node-1", b"env1-again")
    finally:
        await conn.close()


async def test_presignature_used_at_most_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        q = "INSERT INTO presignature_usage (presig_id, node_id, tx_id) VALUES ('nonce-1', 'node-1', $1)"
        await conn.execute(q, "tx-a")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute(q, "tx-b")
    finally:
        await conn.close()


async def test_stream_position_exactly_once(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            assert await advance_stream_position(conn, "TX-test", 5)
        async with conn.transaction():
            assert not await advance_stream_position(conn, "TX-test", 5)  # replay: skip the effect
            assert not await advance_stream_position(conn, "TX-test", 3)
        async with conn.transaction():
            assert await advance_stream_position(conn, "TX-test", 6)
    finally:
        await conn.close()


async def test_api_keys_hashed(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        _, key = new_api_key()
        key_id = await store_api_key(conn, key, "admin", "admin")
        row = await conn.fetchrow("SELECT * FROM api_keys WHERE key_id = $1", key_id)
        assert row is not None and bytes(row["key_hash"]) == hashlib.sha256(key.encode()).digest()
        assert key.encode() not in b"".join(str(v).encode() for v in row.values())
        found = await lookup_api_key(conn, key)
        assert found is not None and found["role"] == "admin"
        assert await lookup_api_key(conn, key + "x") is None
    finally:
        await conn.close()


async def test_audit_log_append_only(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        aid, _ = await audit_append(conn, actor="test", action="created", entity_type="tx", entity_id="a1")
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = $1", aid)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("DELETE FROM audit_log WHERE id = $1", aid)
        with pytest.raises(asyncpg.PostgresError, match="append-only"):
            await conn.execute("TRUNCATE audit_log")
        assert await conn.fetchval("SELECT actor FROM audit_log WHERE id = $1", aid) == "test"
    finally:
        await conn.close()


async def test_audit_chain_verifies_and_detects_a_bad_row(fresh_database_url: str) -> None:
    conn = await asyncpg.connect(fresh_database_url)
    try:
        for i in range(5):
            await audit_append(
                conn,
                actor="recorder",
                action="transition",
                entity_type="tx",
                entity_id=f"tx{i}",
                details={"to": "pending", "n": i, "ünï": "çødé"},
                stream="TX",
                stream_seq=i + 1,
            )
        # a plain INSERT without a hash is chained by the trigger too
        await conn.execute("INSERT INTO audit_log (actor, action) VALUES ('intake', 'api-key-used')")
        assert await verify_audit_chain(conn) == []
        rows = await conn.fetch("SELECT id, prev_hash, hash FROM audit_log ORDER BY id")
        assert bytes(rows[0]["prev_hash"]) == bytes(32)
        for a, b in itertools.pairwise(rows):
            assert bytes(b["prev_hash"]) == bytes(a["hash"])

        # a writer that lies about the hash (nothing disabled): the row is stored, verification names it
        bad_id = await conn.fetchval(
            "INSERT INTO audit_log (actor, action, hash) VALUES ('mallory', 'forged', $1) RETURNING id",
            hashlib.sha256(b"not the content").digest(),
        )
        await audit_append(conn, actor="recorder", action="after")
        problems = await verify_audit_chain(conn)
        assert [p.id for p in problems] == [bad_id]
        assert "hash does not match" in problems[0].reason
    finally:
        await conn.close()
