"""``python -m services.recorder --data-dir DIR [--ack-wait S] [--batch N] [--anchor-interval S]
[--durable-prefix P]``: runs until SIGTERM/SIGINT, finishes the message in hand (committed and acked),
anchors the audit chain's head, exits 0."""

from __future__ import annotations

from schemas.messages import REGISTRY
from services.runtime.service import ServiceContext, run_service, service_argparser

from .anchor import ANCHOR_INTERVAL_S
from .service import BATCH, Recorder


async def serve(ctx: ServiceContext) -> None:
    recorder = Recorder(ctx.cfg, ctx.bus, ctx.pool, anchor_interval=ctx.args.anchor_interval)
    recorder.start(ack_wait=ctx.args.ack_wait, durable_prefix=ctx.args.durable_prefix, batch=ctx.args.batch)
    ctx.ready()
    await ctx.stopped()
    await recorder.stop()


def main(argv: list[str] | None = None) -> None:
    parser = service_argparser("recorder")
    parser.add_argument("--ack-wait", type=float, default=10.0, help="unacked message returns after S")
    parser.add_argument(
        "--batch",
        type=int,
        default=BATCH,
        help="messages per fetch and per DB transaction (1: one at a time, the old way)",
    )
    parser.add_argument(
        "--anchor-interval",
        type=float,
        default=ANCHOR_INTERVAL_S,
        help="the audit chain's head is anchored on the bus at most this often (seconds)",
    )
    parser.add_argument(
        "--durable-prefix",
        default="recorder",
        help="consumer names <prefix>-tx, -vote, ... (for tests: mpcw up's broker admits only the default)",
    )
    run_service("recorder", serve, argv=argv, registry=REGISTRY, use_db=True, parser=parser)


if __name__ == "__main__":
    main()
