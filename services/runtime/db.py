"""PostgreSQL: asyncpg pool, migrations (``db/NNN_*.sql``), audit-log helpers, API keys, stream positions.

Audit log: append with :func:`audit_append` (or a plain INSERT without ``hash``: the trigger chains it);
check with :func:`verify_audit_chain`, which recomputes every hash in Python and also asks the database's
``audit_verify()``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from .config import ServiceConfig

MIGRATION_RE = re.compile(r"^(\d{3,})_[A-Za-z0-9_\-]+\.sql\Z")
MIGRATE_LOCK = 7405310113870
ZERO_HASH = bytes(32)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def migrations_dir() -> Path:
    env = os.environ.get("MPCW_MIGRATIONS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "db"


def list_migrations(directory: Path | None = None) -> list[tuple[int, str, Path]]:
    d = directory or migrations_dir()
    out = []
    for p in sorted(d.iterdir()):
        m = MIGRATION_RE.match(p.name)
        if m:
            out.append((int(m.group(1)), p.name, p))
    versions = [v for v, _, _ in out]
    if len(versions) != len(set(versions)):
        raise ValueError(f"duplicate migration numbers in {d}")
    return sorted(out)


async def migrate(database_url: str, directory: Path | None = None) -> list[str]:
    """Apply the pending migrations in order, each in its own transaction; returns the applied names.

    Idempotent and safe to run concurrently (an advisory lock serializes migrators).
    """
    conn = await asyncpg.connect(database_url)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATE_LOCK)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    integer PRIMARY KEY,
                       name       text NOT NULL,
                       checksum   text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
            done = {
                r["version"]: r
                for r in await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
            }
            for version, name, path in list_migrations(directory):
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if version in done:
                    if done[version]["checksum"] != checksum:
                        raise RuntimeError(
                            f"migration {name} changed after it was applied (checksum differs)"
                        )
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                        version,
                        name,
                        checksum,
                    )
                applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATE_LOCK)
    finally:
        await conn.close()
    return applied


async def create_pool(
    cfg_or_url: ServiceConfig | str, *, min_size: int = 1, max_size: int = 10
) -> asyncpg.Pool:
    url = cfg_or_url if isinstance(cfg_or_url, str) else cfg_or_url.database_url
    if not url:
        raise ValueError("no database_url configured (cluster.json or MPCW_DATABASE_URL)")
    pool = await asyncpg.create_pool(url, min_size=min_size, max_size=max_size)
    assert pool is not None
    return pool


# ---- exactly-once stream positions ----------------------------------------------------------------------


async def advance_stream_position(
    conn: asyncpg.Connection, stream: str, seq: int, consumer: str = "recorder"
) -> bool:
    """Inside the caller's transaction: move ``stream``'s position to ``seq``. Returns False (and
    changes nothing) when ``seq`` was already applied, so the caller skips the effect."""
    row = await conn.fetchrow(
        """INSERT INTO stream_positions (consumer, stream, last_seq) VALUES ($1, $2, $3)
           ON CONFLICT (consumer, stream) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()
               WHERE stream_positions.last_seq < EXCLUDED.last_seq
           RETURNING last_seq""",
        consumer,
        stream,
        seq,
    )
    return row is not None


async def stream_position(
    conn: asyncpg.Connection | asyncpg.Pool, stream: str, consumer: str = "recorder"
) -> int:
    v = await conn.fetchval(
        "SELECT last_seq FROM stream_positions WHERE consumer = $1 AND stream = $2", consumer, stream
    )
    return int(v or 0)


# ---- audit log ------------------------------------------------------------------------------------------


async def audit_append(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    actor: str,
    action: str,
    entity_type: str = "",
    entity_id: str = "",
    details: Mapping[str, Any] | None = None,
    stream: str = "",
    stream_seq: int = 0,
) -> tuple[int, bytes]:
    """Append one audit entry (the trigger chains it). Returns (id, hash). No secrets in ``details``."""
    row = await conn.fetchrow(
        """INSERT INTO audit_log (actor, action, entity_type, entity_id, details, stream, stream_seq)
           VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7) RETURNING id, hash""",
        actor,
        action,
        entity_type,
        entity_id,
        json.dumps(dict(details or {}), sort_keys=True, default=str),
        stream,
        stream_seq,
    )
    assert row is not None
    return int(row["id"]), bytes(row["hash"])


def audit_canonical(row: Mapping[str, Any]) -> bytes:
    """The same bytes as SQL ``audit_canonical``: ``details`` must be the server's jsonb text."""
    created: dt.datetime = row["created_at"]
    micros = (created - EPOCH) // dt.timedelta(microseconds=1)
    parts = [
        str(row["id"]),
        str(micros),
        row["actor"],
        row["action"],
        row["entity_type"],
        row["entity_id"],
        row["details"],
        row["stream"],
        str(row["stream_seq"]),
    ]
    return "|".join(parts).encode()


@dataclass(frozen=True)
class AuditProblem:
    id: int
    reason: str


async def verify_audit_chain(conn: asyncpg.Connection | asyncpg.Pool) -> list[AuditProblem]:
    """Every row whose link or hash is wrong (empty list: the chain verifies). Recomputed in Python,
    then cross-checked with the SQL ``audit_verify()``; both must agree."""
    rows = await conn.fetch(
        """SELECT id, created_at, actor, action, entity_type, entity_id, details::text AS details,
                  stream, stream_seq, prev_hash, hash FROM audit_log ORDER BY id"""
    )
    problems: list[AuditProblem] = []
    prev = ZERO_HASH
    for r in rows:
        if bytes(r["prev_hash"]) != prev:
            problems.append(AuditProblem(r["id"], "prev_hash does not link to the previous row"))
        elif hashlib.sha256(bytes(r["prev_hash"]) + audit_canonical(r)).digest() != bytes(r["hash"]):
            problems.append(AuditProblem(r["id"], "hash does not match the row content"))
        prev = bytes(r["hash"])
    sql = [AuditProblem(r["bad_id"], r["reason"]) for r in await conn.fetch("SELECT * FROM audit_verify()")]
    if sql != problems:
        problems.append(AuditProblem(0, f"python and SQL verification disagree: {sql!r}"))
    return problems


# ---- API keys -------------------------------------------------------------------------------------------


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_api_key() -> tuple[str, str]:
    """A fresh key ``mpcw_<key_id>_<secret>``; returns (key_id, key). Store only its hash."""
    key_id = secrets.token_hex(6)
    return key_id, f"mpcw_{key_id}_{secrets.token_urlsafe(32)}"


async def store_api_key(
    conn: asyncpg.Connection | asyncpg.Pool, key: str, name: str, role: str = "operator"
) -> str:
    key_id = key.split("_")[1] if key.startswith("mpcw_") else hashlib.sha256(key.encode()).hexdigest()[:12]
    await conn.execute(
        """INSERT INTO api_keys (key_id, key_hash, name, role) VALUES ($1, $2, $3, $4)
           ON CONFLICT (key_id) DO NOTHING""",
        key_id,
        hash_api_key(key),
        name,
        role,
    )
    return key_id


async def list_api_keys(conn: asyncpg.Connection | asyncpg.Pool) -> list[asyncpg.Record]:
    """Every API key's id, name, role, creation and revocation time (never the key or its hash)."""
    return list(
        await conn.fetch(
            "SELECT key_id, name, role, created_at, revoked_at FROM api_keys ORDER BY created_at"
        )
    )


async def revoke_api_key(conn: asyncpg.Connection | asyncpg.Pool, key_id: str) -> str:
    """Revoke a key by its id: "revoked", "already" (revoked before) or "unknown"."""
    revoked = await conn.fetchval(
        "UPDATE api_keys SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL RETURNING key_id",
        key_id,
    )
    if revoked is not None:
        return "revoked"
    known = await conn.fetchval("SELECT 1 FROM api_keys WHERE key_id = $1", key_id)
    return "already" if known else "unknown"


async def lookup_api_key(conn: asyncpg.Connection | asyncpg.Pool, key: str) -> asyncpg.Record | None:
    """The api_keys row (key_id, name, role) of a presented key, None when unknown or revoked."""
    return await conn.fetchrow(
        "SELECT key_id, name, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        hash_api_key(key),
    )
