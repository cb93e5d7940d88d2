"""``python -m services.recorder --data-dir DIR [--metrics-port N]``: runs until SIGTERM/SIGINT, then
finishes the message in hand (committed and acked) and exits 0."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from services.runtime.config import load_config
from services.runtime.logging import setup_logging
from services.runtime.metrics import UP, start_metrics_server

from .service import Recorder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m services.recorder", description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="cluster data dir (default $MPCW_DATA_DIR or ~/.mpcw)")
    p.add_argument("--metrics-port", type=int, default=None)
    p.add_argument("--ack-wait", type=float, default=10.0, help="seconds before an unacked message returns")
    p.add_argument("--durable-prefix", default="recorder", help="consumer names <prefix>-tx, -vote, ...")
    return p.parse_args(argv)


async def amain(args: argparse.Namespace) -> int:
    cfg = load_config("recorder", args.data_dir)
    log = setup_logging(cfg.name)
    start_metrics_server(args.metrics_port or cfg.metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    recorder = await Recorder.start(cfg, ack_wait=args.ack_wait, durable_prefix=args.durable_prefix)
    UP.labels(cfg.name).set(1)
    try:
        await stop.wait()
    finally:
        UP.labels(cfg.name).set(0)
        log.info("stopping")
        await recorder.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
