"""A tiny real service for the launcher test: connects to the bus as its identity, publishes a heartbeat,
announces readiness, waits for SIGTERM. ``--crash-first`` exits 1 on its first start (tests restarts);
``--never-ready`` never announces readiness; ``--fail`` always exits 1 at once."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from schemas.messages import REGISTRY, Heartbeat
from schemas.names import heartbeat_subject
from services.runtime.bus import Received
from services.runtime.service import ServiceContext, run_service, service_argparser


async def serve(ctx: ServiceContext) -> None:
    args = ctx.args
    if args.fail:
        raise SystemExit(1)
    marker = ctx.cfg.run_dir / f"{ctx.name}.crashed-once"
    if args.crash_first and not marker.exists():
        marker.write_text("1")
        sys.exit(1)
    ack = await ctx.bus.publish(
        heartbeat_subject(ctx.cfg.identity),
        Heartbeat(node=ctx.cfg.identity, ts_ms=int(time.time() * 1000)),
        f"hb-{ctx.name}-{time.time_ns()}",
    )
    if args.slow_consumer:
        done = ctx.cfg.run_dir / f"{ctx.name}.handled"

        async def slow(r: Received) -> None:
            (ctx.cfg.run_dir / f"{ctx.name}.in-handler").write_text(str(r.seq))
            await asyncio.sleep(1.5)  # SIGTERM arrives meanwhile: the handler must finish and ack
            done.write_text(str(r.seq))

        ctx.bus.start_consumer(args.slow_consumer, f"slow-{ctx.name}", slow)
    if not args.never_ready:
        ctx.ready(seq=ack.seq)
    await ctx.stopped()


def main() -> None:
    p: argparse.ArgumentParser = service_argparser("helper")
    p.add_argument("--crash-first", action="store_true")
    p.add_argument("--never-ready", action="store_true")
    p.add_argument("--fail", action="store_true")
    p.add_argument("--slow-consumer", default="", help="consume this filter with a 1.5 s handler")
    run_service("helper", serve, parser=p, registry=REGISTRY)


if __name__ == "__main__":
    main()
