"""``python -m services.intake --data-dir DIR [--host H] [--port N] [--esplora-url URL]``: the API.

``--port 0`` (or none and no ``intake_port`` in cluster.json) picks a free port; the URL is in the ready
file (``DIR/run/intake.ready``: ``{"pid", "url"}``) and in ``DIR/run/intake.url``. SIGTERM/SIGINT:
stop accepting, finish the requests in flight (up to 5 s), close bus and pool, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import Any

from schemas.messages import REGISTRY
from services.chain.esplora import EsploraClient
from services.runtime.service import ServiceContext, run_service, service_argparser

from . import store
from .app import RESERVATION_RETENTION_S, Intake, create_app, republish_pending


async def background(ctx: ServiceContext, intake: Intake) -> None:
    """Every few seconds: publish requests a failed publish left stored; every minute: prune the
    reservations of long-confirmed spends."""
    last_prune = 0.0
    while not ctx.stop.is_set():
        try:
            republished = await republish_pending(intake)
            if republished:
                ctx.log.info("republished stored requests", count=republished)
        except Exception as exc:
            ctx.log.warning("republishing stored requests failed", error=repr(exc)[:200])
        now = asyncio.get_running_loop().time()
        if now - last_prune >= 60.0:
            last_prune = now
            try:
                pruned = await store.prune_reservations(ctx.pool, RESERVATION_RETENTION_S)
                if pruned:
                    ctx.log.info("pruned reservations of confirmed spends", count=pruned)
            except Exception as exc:
                ctx.log.warning("pruning reservations failed", error=repr(exc)[:200])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ctx.stop.wait(), 5.0)


async def serve(ctx: ServiceContext) -> None:
    cfg = ctx.cfg
    if ctx.args.esplora_url:
        cfg = replace(cfg, esplora_url=ctx.args.esplora_url)
    esplora = EsploraClient(cfg.esplora_url) if cfg.esplora_url else None
    intake = Intake(cfg=cfg, bus=ctx.bus, pool=ctx.pool, log=ctx.log, esplora=esplora)
    republished = await republish_pending(intake)
    if republished:
        ctx.log.info("republished stored requests", count=republished)
    app = create_app(intake)
    port = ctx.args.port if ctx.args.port is not None else (cfg.intake_port or 0)
    server: Any = await app.create_server(
        host=ctx.args.host, port=port, return_asyncio_server=True, access_log=False
    )
    if server is None:
        raise RuntimeError("sanic did not create a server")
    await server.startup()
    await server.before_start()
    await server.start_serving()
    await server.after_start()
    host, real_port = server.server.sockets[0].getsockname()[:2]
    url = f"http://{host}:{real_port}"
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / f"{ctx.name}.url").write_text(url + "\n")
    ctx.ready(url=url)
    pruner = asyncio.create_task(background(ctx, intake))
    try:
        await ctx.stopped()
    finally:
        pruner.cancel()
        ctx.log.info("stopping http server")
        intake.closing.set()  # open event streams end instead of holding the shutdown
        await server.before_stop()
        server.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.server.wait_closed(), 5.0)
        await server.after_stop()
        with contextlib.suppress(FileNotFoundError):
            (cfg.run_dir / f"{ctx.name}.url").unlink()
        if intake.marking is not None:  # published_at of the last requests (else the republish loop's)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(intake.marking, 5.0)
        if esplora is not None:
            await esplora.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = service_argparser("intake")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="0 = a free port")
    parser.add_argument("--esplora-url", default=None, help="chain backend (default: cluster.json)")
    run_service("intake", serve, argv=argv, registry=REGISTRY, use_db=True, parser=parser)
