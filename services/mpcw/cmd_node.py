"""``mpcw node unban NODE --reason R``: the operator lifts a node's ban.

The CLI publishes a :class:`schemas.messages.NodeUnban` as ``admin`` on ``node.unban.<node>``; the monitor
clears the ban (KV ``bans`` gets a signed record that ended now, so consensus picks the node again) and
the recorder writes the ``node.unban`` audit entry. The command waits until the lifted ban is in KV.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import click

from schemas import kv as K
from schemas.messages import NodeUnban
from schemas.names import BUCKET_BANS, check_token, unban_subject
from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import cluster_of, with_admin_bus
from services.runtime.signed_kv import SignedKV


@main.group()
def node() -> None:
    """Signer nodes: lift a ban."""


@node.command("unban")
@click.argument("name")
@click.option("--reason", required=True, help="Why the ban is lifted (kept in the audit log).")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for the monitor.")
@click.pass_context
def node_unban(ctx: click.Context, name: str, reason: str, timeout: float) -> None:
    """Lift NAME's ban (audited); the node is chosen as a signer again."""
    d = data_dir_of(ctx)
    nodes = list(cluster_of(d).get("nodes", []))
    if name not in nodes:
        raise click.UsageError(f"{name!r} is not a node of this cluster ({', '.join(nodes)})")
    try:
        check_token(name)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if not reason.strip() or any(ord(c) < 0x20 for c in reason):
        raise click.UsageError("--reason must be a non-empty single line")

    async def go(bus: Any) -> K.BanRecord | None:
        bans = await SignedKV.open(bus, BUCKET_BANS)
        sent_ms = int(time.time() * 1000)
        await bus.publish(unban_subject(name), NodeUnban(node=name, reason=reason), f"unban.{name}.{sent_ms}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = await bans.get(name, K.BanRecord)
            if got is not None and got.sender == "monitor" and got.ts_ms >= sent_ms - 1000:
                if got.value.reason.startswith("lifted"):
                    return got.value
            await asyncio.sleep(0.3)
        return None

    lifted = with_admin_bus(d, go)
    if lifted is None:
        raise click.ClickException(f"the monitor did not confirm within {timeout:.0f} s: is it running?")
    click.echo(f"{name}: ban lifted ({reason}); recorded in the audit log")
