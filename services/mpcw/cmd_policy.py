"""``mpcw policy show|set`` (KV ``config``/``policy``) and ``mpcw presig pool-status``."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click
import msgspec

from schemas import kv as K
from schemas.messages import Heartbeat
from schemas.names import BUCKET_CONFIG, heartbeat_subject
from schemas.rest import Policy
from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import btc_to_sats, cluster_of, fmt_btc, with_admin_bus
from services.runtime.lookup import last_message
from services.runtime.nonce_pool import NoncePool


async def _read_policy(bus: Any) -> tuple[Policy, int | None]:
    kv = await bus.kv(BUCKET_CONFIG)
    entry = await kv.get(K.POLICY_KEY)
    if entry is None:
        return Policy(), None
    return msgspec.msgpack.decode(entry.value, type=Policy), entry.revision


def _print(p: Policy) -> None:
    click.echo(f"version          {p.version}")
    click.echo(f"max per spend    {fmt_btc(p.max_tx_sats)}")
    click.echo(f"daily limit      {fmt_btc(p.daily_limit_sats)}")
    click.echo(f"max fee rate     {p.max_fee_rate} sat/vB")
    click.echo(f"max fee          {p.max_fee_sats} sats")
    click.echo(f"allow list       {', '.join(p.allowlist) or '(any destination)'}")
    click.echo(f"deny list        {', '.join(p.denylist) or '(none)'}")


@main.group()
def policy() -> None:
    """The spending policy every node enforces on its own."""


@policy.command("show")
@click.pass_context
def policy_show(ctx: click.Context) -> None:
    p, rev = with_admin_bus(data_dir_of(ctx), _read_policy)
    if rev is None:
        click.echo("(defaults: no policy set)")
    _print(p)


@policy.command("set")
@click.option("--max-tx-btc", default=None, help="largest single spend")
@click.option("--daily-limit-btc", default=None, help="per node, rolling 24 h")
@click.option("--max-fee-rate", type=click.FloatRange(1.0, 100_000.0), default=None, help="sat/vB")
@click.option("--max-fee-sats", type=click.IntRange(0, 2_100_000_000_000_000), default=None)
@click.option("--allow", multiple=True, help="allowed destination (repeat); replaces the list")
@click.option("--deny", multiple=True, help="denied destination (repeat); replaces the list")
@click.option("--clear-allow", is_flag=True, help="allow any destination again")
@click.option("--clear-deny", is_flag=True, help="empty the deny list")
@click.pass_context
def policy_set(
    ctx: click.Context,
    max_tx_btc: str | None,
    daily_limit_btc: str | None,
    max_fee_rate: float | None,
    max_fee_sats: int | None,
    allow: tuple[str, ...],
    deny: tuple[str, ...],
    clear_allow: bool,
    clear_deny: bool,
) -> None:
    """Change the policy (compare-and-set: a concurrent change is not overwritten)."""
    d = data_dir_of(ctx)
    network = cluster_of(d).get("network", "regtest")
    from wallet.address import InvalidAddress, address_to_script

    for a in (*allow, *deny):
        try:
            address_to_script(a, network)
        except InvalidAddress as exc:
            raise click.BadParameter(f"{a}: {exc}") from None

    async def run(bus: Any) -> Policy:
        p, rev = await _read_policy(bus)
        changes: dict[str, Any] = {"version": p.version + 1}
        if max_tx_btc is not None:
            changes["max_tx_sats"] = btc_to_sats(max_tx_btc)
        if daily_limit_btc is not None:
            changes["daily_limit_sats"] = btc_to_sats(daily_limit_btc)
        if max_fee_rate is not None:
            changes["max_fee_rate"] = max_fee_rate
        if max_fee_sats is not None:
            changes["max_fee_sats"] = max_fee_sats
        if allow:
            changes["allowlist"] = list(allow)
        if clear_allow:
            changes["allowlist"] = []
        if deny:
            changes["denylist"] = list(deny)
        if clear_deny:
            changes["denylist"] = []
        new = msgspec.structs.replace(p, **changes)
        kv = await bus.kv(BUCKET_CONFIG)
        if rev is None:
            await kv.create(K.POLICY_KEY, new)
        else:
            await kv.update_cas(K.POLICY_KEY, new, rev)
        return new

    nodes = list(cluster_of(d).get("nodes") or [])

    async def set_and_wait(bus: Any) -> tuple[Policy, list[str]]:
        new = await run(bus)
        return new, await _wait_applied(bus, nodes, new.version, 10.0)

    new, applied = with_admin_bus(d, set_and_wait)
    _print(new)
    missing = [n for n in nodes if n not in applied]
    if missing:
        click.echo(f"applied on {len(applied)}/{len(nodes)} nodes; not yet on {', '.join(missing)}", err=True)
        ctx.exit(1)
    click.echo(f"applied on {len(applied)}/{len(nodes)} nodes")


async def _wait_applied(bus: Any, nodes: list[str], version: int, timeout: float) -> list[str]:
    """The nodes whose latest heartbeat reports policy ``version`` or newer (waits up to ``timeout``)."""
    deadline = asyncio.get_running_loop().time() + timeout
    applied: list[str] = []
    while True:
        applied = []
        for node in nodes:
            hb = await last_message(bus, heartbeat_subject(node))
            if hb is not None and isinstance(hb.payload, Heartbeat) and hb.sender == node:
                if hb.payload.detail.get("policy_version", 0) >= version:
                    applied.append(node)
        if len(applied) == len(nodes) or asyncio.get_running_loop().time() > deadline:
            return applied
        await asyncio.sleep(0.2)


@main.group()
def presig() -> None:
    """The FROST nonce pool."""


@presig.command("pool-status")
@click.pass_context
def presig_pool_status(ctx: click.Context) -> None:
    """Free precomputed nonces per node."""
    d = data_dir_of(ctx)
    c = cluster_of(d)
    nodes = list(c.get("nodes") or [])

    async def run(bus: Any) -> dict[str, int]:
        pool = NoncePool(bus)
        task = asyncio.create_task(pool.run())
        await asyncio.wait_for(pool.loaded.wait(), 10)
        # the watch can say "initial values done" a moment before the last of them arrive: read on
        # until it has been quiet for a while (bounded)
        deadline = time.monotonic() + 5.0
        while time.monotonic() - pool.last_update < 0.3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        task.cancel()
        return {n: pool.level(n) for n in nodes}

    for node, level in with_admin_bus(d, run).items():
        click.echo(f"{node:<8} {level} free")
