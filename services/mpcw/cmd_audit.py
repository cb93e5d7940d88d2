"""``mpcw audit show|verify``: the append-only, hash-chained audit log in PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import asyncpg
import click

from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import cluster_of, with_admin_bus


def _url(ctx: click.Context) -> str:
    url = cluster_of(data_dir_of(ctx)).get("database_url")
    if not url:
        raise click.ClickException("cluster.json has no database_url")
    return str(url)


@main.group()
def audit() -> None:
    """Every step of every spend, append-only, each entry hashing the one before."""


@audit.command("show")
@click.option("--tx", "tx_id", default=None, help="only this transaction")
@click.option("--limit", type=click.IntRange(1, 10_000), default=30, show_default=True)
@click.pass_context
def audit_show(ctx: click.Context, tx_id: str | None, limit: int) -> None:
    """The newest entries (oldest first)."""
    url = _url(ctx)

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url)
        try:
            if tx_id:
                q = (
                    "SELECT * FROM (SELECT * FROM audit_log WHERE entity_id = $1 ORDER BY id DESC LIMIT $2)"
                    " a ORDER BY id"
                )
                return list(await conn.fetch(q, tx_id, limit))
            q = "SELECT * FROM (SELECT * FROM audit_log ORDER BY id DESC LIMIT $1) a ORDER BY id"
            return list(await conn.fetch(q, limit))
        finally:
            await conn.close()

    for r in asyncio.run(run()):
        details = r["details"] if isinstance(r["details"], str) else json.dumps(r["details"])
        when = r["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        click.echo(f"#{r['id']:<6} {when}  {r['actor']:<12} {r['action']:<22} {r['entity_id']}  "
                   f"{details[:120]}  hash={bytes(r['hash']).hex()[:16]}")  # fmt: skip


@audit.command("verify")
@click.option(
    "--no-anchors",
    is_flag=True,
    help="only recompute the chain in PostgreSQL, without NATS (a rewritten chain then goes unnoticed)",
)
@click.pass_context
def audit_verify(ctx: click.Context, no_anchors: bool) -> None:
    """Recompute the hash chain and check it against every signed anchor on the AUDIT stream; exit 1
    naming the first entry that does not verify."""
    if no_anchors:
        from services.recorder.project import verify_audit

        ok, bad = asyncio.run(verify_audit(_url(ctx)))
        if not ok:
            click.echo(f"audit chain BROKEN at entry #{bad}", err=True)
            ctx.exit(1)
        click.echo("audit chain verifies (in PostgreSQL only: not checked against its anchors)")
        return

    from services.recorder.anchor import AnchorsUnavailable, AuditReport, verify_anchored

    url = _url(ctx)

    async def run(bus: Any) -> AuditReport:
        conn = await asyncpg.connect(url)
        try:
            return await verify_anchored(conn, bus)
        finally:
            await conn.close()

    try:
        report = with_admin_bus(data_dir_of(ctx), run)
    except AnchorsUnavailable as exc:
        raise click.ClickException(f"cannot read the audit anchors: {exc}") from None
    for ignored in report.ignored:
        click.echo(
            f"WARNING: ignored a message on the anchor subjects (stream seq {ignored.stream_seq}, "
            f"claimed sender {ignored.sender or '?'}): {ignored.reason}",
            err=True,
        )
    if not report.ok:
        click.echo(f"audit chain BROKEN at entry #{report.first_bad}", err=True)
        for p in report.chain_problems:
            click.echo(f"  #{p.id}: {p.reason}", err=True)
        for a in report.anchor_problems:
            when = dt.datetime.fromtimestamp(a.anchor.ts_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
            click.echo(
                f"  #{a.first_bad}..#{a.seq}: {a.reason} (anchor signed by {a.anchor.sender} at {when} UTC, "
                f"stream seq {a.anchor.stream_seq})",
                err=True,
            )
        ctx.exit(1)
    tail = f"; {report.unanchored} rows after it not anchored yet" if report.unanchored else ""
    click.echo(
        f"audit chain verifies: {report.rows} rows, anchored up to #{report.anchored_to} "
        f"by {len(report.anchors)} signed anchors{tail}"
    )
