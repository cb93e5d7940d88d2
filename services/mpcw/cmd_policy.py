"""``mpcw policy show|set`` (KV ``config``/``policy``) and ``mpcw presig pool-status``.

The policy is a value signed by ``admin`` (:mod:`services.runtime.signed_kv`); every node checks the
signature before it applies it and reports the digest of the signed value it applied in its heartbeats,
so ``policy set`` says "applied" only once every node runs exactly the value it wrote.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
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
from services.runtime.signed_kv import KvValueRejected, SignedKV, value_digest


@dataclass(frozen=True)
class StoredPolicy:
    policy: Policy  # the verified policy (or, with a warning, what an unsigned value holds; else defaults)
    revision: int | None  # None: no policy stored
    warning: str = ""  # the stored value does not verify


async def _read_policy(bus: Any) -> StoredPolicy:
    """The stored policy, verified as every node verifies it."""
    config = SignedKV(bus, await bus.kv(BUCKET_CONFIG))
    entry = await config.kv.get(K.POLICY_KEY)
    if entry is None:
        return StoredPolicy(Policy(), None)
    try:
        signed = await config.admit(entry, Policy)
    except KvValueRejected as why:
        try:  # a value written before policies were signed: its content, to build the signed one from
            legacy = msgspec.msgpack.decode(entry.value, type=Policy)
        except (msgspec.DecodeError, msgspec.ValidationError):
            legacy = Policy()
        warning = (
            f"the stored policy is not a valid admin-signed value ({why.kind}: {why.detail[:120]}); "
            "the nodes ignore it (a node with no policy in force refuses every spend) until "
            "`mpcw policy set` stores a signed one"
        )
        return StoredPolicy(legacy, entry.revision, warning)
    assert signed is not None  # a fresh reader has no value in force
    return StoredPolicy(signed.value, entry.revision)


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
    stored = with_admin_bus(data_dir_of(ctx), _read_policy)
    if stored.revision is None:
        click.echo("(defaults: no policy set)")
    if stored.warning:
        click.echo(f"warning: {stored.warning}", err=True)
        click.echo("(content of the unsigned value, not in force:)", err=True)
    _print(stored.policy)


@policy.command("set")
@click.option("--max-tx-btc", default=None, help="largest single spend")
@click.option("--daily-limit-btc", default=None, help="per node, rolling 24 h")
@click.option("--max-fee-rate", type=click.FloatRange(1.0, 100_000.0), default=None, help="sat/vB")
@click.option("--max-fee-sats", type=click.IntRange(0, 2_100_000_000_000_000), default=None)
@click.option("--allow", multiple=True, help="allowed destination (repeat); replaces the list")
@click.option("--deny", multiple=True, help="denied destination (repeat); replaces the list")
@click.option("--clear-allow", is_flag=True, help="allow any destination again")
@click.option("--clear-deny", is_flag=True, help="empty the deny list")
@click.option(
    "--wait", type=click.FloatRange(0.0, 3600.0), default=15.0, show_default=True,
    help="seconds to wait for every node to apply it",
)  # fmt: skip
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
    wait: float,
) -> None:
    """Change the policy (signed by admin; compare-and-set: a concurrent change is not overwritten), then
    wait until every node applied exactly this value."""
    d = data_dir_of(ctx)
    network = cluster_of(d).get("network", "regtest")
    from wallet.address import InvalidAddress, address_to_script

    for a in (*allow, *deny):
        try:
            address_to_script(a, network)
        except InvalidAddress as exc:
            raise click.BadParameter(f"{a}: {exc}") from None

    async def run(bus: Any) -> tuple[Policy, bytes]:
        stored = await _read_policy(bus)
        if stored.warning:
            click.echo(f"warning: {stored.warning}", err=True)
            click.echo("the new policy is built from that value: check every limit below", err=True)
        p, rev = stored.policy, stored.revision
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
        config = SignedKV(bus, await bus.kv(BUCKET_CONFIG))
        await config.write(K.POLICY_KEY, new, rev)
        written = await config.kv.get(K.POLICY_KEY)
        return new, written.value if written is not None else b""

    nodes = list(cluster_of(d).get("nodes") or [])

    async def set_and_wait(bus: Any) -> tuple[Policy, dict[str, Applied]]:
        new, raw = await run(bus)
        return new, await wait_applied(bus, nodes, value_digest(raw), wait)

    new, seen = with_admin_bus(d, set_and_wait)
    _print(new)
    applied = [n for n in nodes if seen[n].digest_ok]
    if len(applied) < len(nodes):
        late = ", ".join(f"{n} ({seen[n].describe()})" for n in nodes if not seen[n].digest_ok)
        click.echo(
            f"applied on {len(applied)}/{len(nodes)} nodes; not applied within {wait:g} s on: {late}",
            err=True,
        )
        ctx.exit(1)
    click.echo(f"applied on {len(applied)}/{len(nodes)} nodes")


@dataclass(frozen=True)
class Applied:
    """What a node's latest heartbeat says about the policy it runs."""

    digest_ok: bool  # it applied exactly the value written
    version: int | None = None  # the version it reports (None: no heartbeat)

    def describe(self) -> str:
        return "no heartbeat" if self.version is None else f"runs policy version {self.version}"


async def wait_applied(bus: Any, nodes: list[str], digest: int, timeout: float) -> dict[str, Applied]:
    """Per node, whether its latest heartbeat reports the policy with ``digest`` (the signed value just
    written); waits up to ``timeout`` seconds for all of them."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        seen: dict[str, Applied] = {}
        for node in nodes:
            hb = await last_message(bus, heartbeat_subject(node))
            if hb is None or not isinstance(hb.payload, Heartbeat) or hb.sender != node:
                seen[node] = Applied(False)
                continue
            detail = hb.payload.detail
            seen[node] = Applied(detail.get("policy_digest") == digest, detail.get("policy_version", 0))
        if all(a.digest_ok for a in seen.values()) or asyncio.get_running_loop().time() > deadline:
            return seen
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
