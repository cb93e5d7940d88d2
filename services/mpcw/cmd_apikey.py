"""``mpcw apikey create|list|revoke``: the REST API's keys (PostgreSQL ``api_keys``, only a hash stored).

Roles: ``viewer`` reads, ``operator`` also requests spends, ``admin`` is the key ``mpcw up`` made. Creating
and revoking a key are written to the audit log (actor ``admin``, action ``apikey.create`` /
``apikey.revoke``, the key id, role and name; never the key) in the same transaction as the change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import click

from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import cluster_of
from services.runtime.db import audit_append, list_api_keys, new_api_key, revoke_api_key, store_api_key

T = TypeVar("T")
ROLES = ("viewer", "operator", "admin")


def _with_db(ctx: click.Context, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    url = cluster_of(data_dir_of(ctx)).get("database_url")
    if not url:
        raise click.ClickException("cluster.json has no database_url: is the cluster up?")

    async def run() -> T:
        try:
            conn = await asyncpg.connect(str(url), timeout=10)
        except (OSError, asyncpg.PostgresError) as exc:
            why = type(exc).__name__
            raise click.ClickException(f"PostgreSQL unreachable ({why}): is the cluster up?") from None
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


async def _audit(conn: asyncpg.Connection, action: str, key_id: str, details: dict[str, str]) -> None:
    await audit_append(
        conn, actor="admin", action=action, entity_type="api_key", entity_id=key_id, details=details
    )


@main.group()
def apikey() -> None:
    """API keys for the REST API: any key reads, operator and admin keys request spends."""


@apikey.command("create")
@click.option("--name", required=True, help="who or what uses it (in mpcw apikey list and the audit log)")
@click.option("--role", type=click.Choice(ROLES), default="viewer", show_default=True)
@click.pass_context
def apikey_create(ctx: click.Context, name: str, role: str) -> None:
    """Create a key and print it: it is shown this once (only its hash is stored)."""
    name = name.strip()
    if not name or len(name) > 200:
        raise click.BadParameter("1 to 200 characters", param_hint="--name")
    _, key = new_api_key()

    async def create(conn: asyncpg.Connection) -> str:
        async with conn.transaction():
            key_id = await store_api_key(conn, key, name, role)
            await _audit(conn, "apikey.create", key_id, {"role": role, "name": name})
            return key_id

    key_id = _with_db(ctx, create)
    click.echo(f"key id  {key_id}\nrole    {role}\nname    {name}")
    click.echo(f"key     {key}")
    click.echo("(shown once: store it now; send it as 'X-API-Key: <key>' or 'Authorization: Bearer <key>')")


@apikey.command("list")
@click.pass_context
def apikey_list(ctx: click.Context) -> None:
    """Every key's id, role, name and state (never the key)."""
    rows = _with_db(ctx, list_api_keys)
    click.echo(f"{'key id':<14} {'role':<9} {'created':<20} {'state':<28} name")
    for r in rows:
        state = f"revoked {r['revoked_at']:%Y-%m-%d %H:%M:%S}" if r["revoked_at"] else "active"
        click.echo(
            f"{r['key_id']:<14} {r['role']:<9} {r['created_at']:%Y-%m-%d %H:%M:%S}  {state:<28} {r['name']}"
        )


@apikey.command("revoke")
@click.argument("key_id")
@click.pass_context
def apikey_revoke(ctx: click.Context, key_id: str) -> None:
    """Revoke a key by its id: spends with it are refused at once, reads within seconds."""

    async def revoke(conn: asyncpg.Connection) -> str:
        async with conn.transaction():
            outcome = await revoke_api_key(conn, key_id)
            if outcome == "revoked":
                await _audit(conn, "apikey.revoke", key_id, {})
            return outcome

    outcome = _with_db(ctx, revoke)
    if outcome == "unknown":
        raise click.ClickException(f"no API key {key_id!r} (mpcw apikey list shows them)")
    click.echo(f"{key_id} revoked" if outcome == "revoked" else f"{key_id} was already revoked")
