"""What the ``mpcw`` commands share: the cluster file, a REST client for intake, an admin bus session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

from services.runtime.config import load_config, read_cluster

T = TypeVar("T")
SATS_PER_BTC = 100_000_000


def cluster_of(d: Path) -> dict[str, Any]:
    c = read_cluster(d)
    if not c:
        raise click.ClickException(f"no cluster in {d}: run `mpcw --data-dir {d} up` first")
    return c


def btc_to_sats(text: str) -> int:
    """``"0.0015"`` -> 150000; refuses more than 8 decimals, negatives, zero and absurd amounts."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise click.BadParameter(f"{text!r} is not a number of BTC") from None
    sats = value * SATS_PER_BTC
    if sats != sats.to_integral_value():
        raise click.BadParameter(f"{text} BTC has more than 8 decimals")
    if sats <= 0 or sats > 21_000_000 * SATS_PER_BTC:
        raise click.BadParameter(f"{text} BTC is out of range")
    return int(sats)


def fmt_btc(sats: int) -> str:
    return f"{Decimal(sats) / SATS_PER_BTC:.8f} BTC"


class Api:
    """intake's REST API with the admin key from cluster.json."""

    def __init__(self, d: Path) -> None:
        c = cluster_of(d)
        url = c.get("intake_url")
        if not url:
            raise click.ClickException("cluster.json has no intake_url")
        self.client = httpx.Client(
            base_url=url, timeout=30.0, headers={"X-API-Key": c.get("admin_api_key", "")}
        )

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise click.ClickException(
                f"intake unreachable ({type(exc).__name__}): is the cluster up?"
            ) from None
        if r.status_code >= 400:
            try:
                body = r.json()
                detail = body.get("error", "") + (f": {body['detail']}" if body.get("detail") else "")
            except ValueError:
                detail = r.text[:300]
            raise click.ClickException(f"{method} {path}: HTTP {r.status_code} {detail}")
        return r.json()


def with_admin_bus(d: Path, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(bus)`` connected to the cluster's NATS as the ``admin`` identity."""
    from schemas.messages import REGISTRY
    from services.runtime.bus import Bus

    cluster = cluster_of(d)
    logging.getLogger("asyncio").setLevel(logging.ERROR)  # TLS close chatter is not the user's business

    async def go() -> T:
        # this cluster's own server, whatever MPCW_NATS_URL says (that is for services and tests)
        cfg = load_config("admin", d, service="mpcw", nats_url=cluster.get("nats_url"))
        bus = await Bus.connect(cfg, registry=REGISTRY, ensure=False, timeout=15.0)
        try:
            return await fn(bus)
        finally:
            await bus.close()

    try:
        return asyncio.run(go())
    except (OSError, TimeoutError) as exc:
        raise click.ClickException(f"cannot reach NATS ({type(exc).__name__}): is the cluster up?") from None
