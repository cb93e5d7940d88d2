"""``mpcw tx send|status|list``."""

from __future__ import annotations

import time
from typing import Any

import click

from core.lifecycle import TERMINAL, TxState
from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import Api, btc_to_sats, fmt_btc


@main.group()
def tx() -> None:
    """Spends."""


def _show(t: dict[str, Any]) -> None:
    click.echo(f"{t['id']}  {t['state']}")
    click.echo(
        f"  to {t.get('recipient')}  {fmt_btc(int(t.get('amount_sats', 0)))}"
        + (f"  fee {t['fee_sats']} sats" if t.get("fee_sats") is not None else "")
    )
    if t.get("txid"):
        click.echo(f"  bitcoin txid {t['txid']}")
    for r in t.get("reasons") or []:
        click.echo(f"  reason: {r}")
    for step in t.get("timeline") or []:
        when = (
            time.strftime("%H:%M:%S", time.localtime(step["at_ms"] / 1000)) + f".{step['at_ms'] % 1000:03d}"
        )
        click.echo(f"  {when}  {step['state']}" + (f"  {step['detail']}" if step.get("detail") else ""))
    for v in t.get("votes") or []:
        verdict = "approve" if v["approve"] else "reject: " + "; ".join(v.get("reasons") or [])
        click.echo(f"  vote {v['node']}: {verdict}")


@tx.command("send")
@click.argument("recipient")
@click.argument("btc")
@click.option(
    "--fee-rate", type=click.FloatRange(1.0, 10_000.0), default=None, help="sat/vB (default: estimate)"
)
@click.option("--idempotency-key", default=None, help="repeat-safe: the same key returns the same spend")
@click.option("--wait/--no-wait", default=False, help="follow the spend until it is confirmed or ends")
@click.option("--timeout", type=float, default=120.0, show_default=True)
@click.pass_context
def tx_send(
    ctx: click.Context,
    recipient: str,
    btc: str,
    fee_rate: float | None,
    idempotency_key: str | None,
    wait: bool,
    timeout: float,
) -> None:
    """Request a spend of BTC to RECIPIENT; every node checks it against the policy and votes."""
    api = Api(data_dir_of(ctx))
    body: dict[str, Any] = {"recipient": recipient, "amount_sats": btc_to_sats(btc)}
    if fee_rate is not None:
        body["fee_rate"] = fee_rate
    if idempotency_key:
        body["idempotency_key"] = idempotency_key
    created = api.request("POST", "/api/v1/transactions", json=body)
    tx_id = created["id"]
    click.echo(f"{tx_id} {created.get('state', 'pending')}")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        t = api.request("GET", f"/api/v1/transactions/{tx_id}")
        if t["state"] != last:
            click.echo(f"  {t['state']}" + (f"  {t['txid']}" if t.get("txid") else ""))
            last = t["state"]
        if TxState(t["state"]) in TERMINAL:
            _show(t)
            if t["state"] != "confirmed":
                ctx.exit(1)
            return
        if time.monotonic() > deadline:
            raise click.ClickException(f"still {t['state']} after {timeout:.0f}s")
        time.sleep(0.2)


@tx.command("status")
@click.argument("tx_id")
@click.pass_context
def tx_status(ctx: click.Context, tx_id: str) -> None:
    """A spend's state, timeline and votes."""
    _show(Api(data_dir_of(ctx)).request("GET", f"/api/v1/transactions/{tx_id}"))


@tx.command("list")
@click.option("--state", default=None)
@click.option("--limit", type=click.IntRange(1, 500), default=20, show_default=True)
@click.pass_context
def tx_list(ctx: click.Context, state: str | None, limit: int) -> None:
    """Recent spends, newest first."""
    params: dict[str, Any] = {"limit": limit}
    if state:
        params["state"] = state
    body = Api(data_dir_of(ctx)).request("GET", "/api/v1/transactions", params=params)
    items = body["transactions"] if isinstance(body, dict) else body
    for t in items:
        click.echo(
            f"{t['id']}  {t['state']:<10} {fmt_btc(int(t.get('amount_sats', 0)))}  {t.get('recipient')}"
        )
