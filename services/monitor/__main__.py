"""``python -m services.monitor --data-dir DIR [--durable-prefix P]``: runs until SIGTERM/SIGINT."""

from __future__ import annotations

from schemas.messages import REGISTRY
from services.runtime.service import ServiceContext, run_service, service_argparser

from .service import Monitor


async def serve(ctx: ServiceContext) -> None:
    monitor = Monitor(ctx.cfg, ctx.bus, ctx.pool)
    tasks = monitor.start(durable_prefix=ctx.args.durable_prefix)
    ctx.ready()
    await ctx.stopped()
    for t in tasks:
        t.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = service_argparser("monitor")
    parser.add_argument(
        "--durable-prefix",
        default="monitor",
        help="consumer names <prefix>-heartbeat, ... (for tests: mpcw up's broker admits the default only)",
    )
    run_service("monitor", serve, argv=argv, registry=REGISTRY, use_db=True, parser=parser)


if __name__ == "__main__":
    main()
