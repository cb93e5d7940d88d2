"""``mpcw wallet address|balance`` and ``mpcw dev fund``."""

from __future__ import annotations

import click
import httpx

from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import Api, btc_to_sats, cluster_of, fmt_btc


@main.group()
def wallet() -> None:
    """The wallet's addresses and balance."""


@wallet.command("address")
@click.pass_context
def wallet_address(ctx: click.Context) -> None:
    """The wallet's receive address (P2TR, key path only)."""
    body = Api(data_dir_of(ctx)).request("GET", "/api/v1/wallet/address")
    click.echo(body["address"])


@wallet.command("balance")
@click.pass_context
def wallet_balance(ctx: click.Context) -> None:
    """Confirmed and unconfirmed balance."""
    body = Api(data_dir_of(ctx)).request("GET", "/api/v1/wallet/balance")
    click.echo(f"confirmed   {fmt_btc(int(body.get('confirmed_sats', 0)))}")
    click.echo(f"unconfirmed {fmt_btc(int(body.get('unconfirmed_sats', 0)))}")
    if "reserved_sats" in body:
        click.echo(f"reserved    {fmt_btc(int(body['reserved_sats']))} (in-flight spends)")


@main.group()
def dev() -> None:
    """Development chain helpers (devchain only)."""


@dev.command("fund")
@click.argument("address")
@click.argument("btc")
@click.pass_context
def dev_fund(ctx: click.Context, address: str, btc: str) -> None:
    """Send BTC from the devchain faucet to ADDRESS (confirmed at once)."""
    sats = btc_to_sats(btc)
    url = cluster_of(data_dir_of(ctx)).get("devchain_url")
    if not url:
        raise click.ClickException("this cluster has no devchain")
    try:
        r = httpx.post(f"{url}/dev/faucet", json={"address": address, "sats": sats}, timeout=30.0)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"devchain unreachable ({type(exc).__name__})") from None
    if r.status_code != 200:
        raise click.ClickException(f"faucet refused: {r.text.strip()[:300]}")
    body = r.json()
    outpoint = f"{body['txid']}:{body['vout']}"
    click.echo(f"funded {address} with {fmt_btc(sats)}: {outpoint} (block {body.get('block_height')})")


@dev.command("mine")
@click.argument("blocks", type=click.IntRange(1, 1000), default=1)
@click.pass_context
def dev_mine(ctx: click.Context, blocks: int) -> None:
    """Mine BLOCKS blocks on the devchain (confirms the mempool)."""
    url = cluster_of(data_dir_of(ctx)).get("devchain_url")
    r = httpx.post(f"{url}/dev/mine", json={"blocks": blocks}, timeout=30.0)
    if r.status_code != 200:
        raise click.ClickException(r.text.strip()[:300])
    click.echo(f"tip height {r.json()['height']}")
