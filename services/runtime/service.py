"""Running a service process: arguments, config, logging, metrics, bus, pool, readiness, graceful shutdown.

Every service module ends with::

    def main() -> None:
        run_service("consensus", serve, registry=REGISTRY, use_db=False)

    async def serve(ctx: ServiceContext) -> None:
        ctx.bus.start_consumer("tx.requested.*", "consensus-requested", on_request)
        ctx.ready()                       # DIR/run/<name>.ready: what `mpcw up` waits for
        await ctx.stopped()               # until SIGTERM/SIGINT

and is started as ``python -m services.<name> --data-dir DIR [--identity node-3]``.

Readiness: ``ctx.ready()`` writes ``DIR/run/<name>.ready`` (JSON: pid, ts) once the service is able to do
its work; the supervisor treats a service as ready when that file exists and carries the pid it started.
The file is removed at startup and at exit. ``<name>`` is ``MPCW_SERVICE_NAME`` when the supervisor sets
it, else ``<service>`` or ``<service>-<identity>`` when the identity differs (``signer-node-3``).

Shutdown on SIGTERM/SIGINT: ``ctx.stop`` is set; consumer loops stop fetching and finish (and ack) the
in-flight handler; ``serve`` gets ``grace`` seconds to return, then is cancelled; NATS is drained, the
pool closed, the ready file removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import uvloop

from . import metrics as M
from .bus import Bus
from .config import ServiceConfig, load_config
from .logging import Logger, setup_logging


@dataclass
class ServiceContext:
    name: str
    cfg: ServiceConfig
    log: Logger
    stop: asyncio.Event
    bus_: Bus | None = None
    pool: Any = None  # asyncpg.Pool when use_db
    args: argparse.Namespace = field(default_factory=argparse.Namespace)

    @property
    def bus(self) -> Bus:
        if self.bus_ is None:
            raise RuntimeError("this service was started with connect_bus=False")
        return self.bus_

    @property
    def ready_file(self) -> Path:
        return self.cfg.run_dir / f"{self.name}.ready"

    def ready(self, **detail: Any) -> None:
        """Announce readiness (idempotent)."""
        self.cfg.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "ts": time.time(), **detail}))
        tmp.replace(self.ready_file)
        M.UP.labels(self.name).set(1)
        self.log.info("ready", **detail)

    async def stopped(self) -> None:
        await self.stop.wait()


Main = Callable[[ServiceContext], Coroutine[Any, Any, None]]


def service_argparser(name: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m services.{name}")
    p.add_argument("--data-dir", default=os.environ.get("MPCW_DATA_DIR") or "~/.mpcw")
    p.add_argument("--identity", default=None, help="bus identity (default: the service name)")
    p.add_argument("--log-level", default=os.environ.get("MPCW_LOG_LEVEL", "INFO"))
    return p


def process_name(service: str, identity: str) -> str:
    env = os.environ.get("MPCW_SERVICE_NAME")
    if env:
        return env
    return service if identity == service else f"{service}-{identity}"


def run_service(
    name: str,
    main: Main,
    *,
    argv: list[str] | None = None,
    registry: Mapping[str, type[msgspec.Struct]] | None = None,
    connect_bus: bool = True,
    use_db: bool = False,
    grace: float = 5.0,  # with close(): under the supervisor's STOP_TIMEOUT before it sends SIGKILL
    parser: argparse.ArgumentParser | None = None,
) -> None:
    """Parse ``--data-dir/--identity``, run ``main(ctx)`` until it returns or a signal arrives; exit 0 on a
    clean stop, 1 when ``main`` failed."""
    args = (parser or service_argparser(name)).parse_args(argv)
    profile_dir = os.environ.get("MPCW_PROFILE_DIR")  # diagnosis: CPU profile of the run, per process
    prof = None
    if profile_dir:
        import cProfile

        prof = cProfile.Profile(time.process_time)
        prof.enable()
    try:
        # uvloop: a faster event loop for services that are per-message work over many sockets
        code = uvloop.run(_run(name, main, args, registry, connect_bus, use_db, grace))
    finally:
        if prof is not None and profile_dir:
            prof.disable()
            pname = process_name(name, args.identity or name)
            prof.dump_stats(str(Path(profile_dir) / f"{pname}.{os.getpid()}.prof"))
    sys.exit(code)


async def _run(
    name: str,
    main: Main,
    args: argparse.Namespace,
    registry: Mapping[str, type[msgspec.Struct]] | None,
    connect_bus: bool,
    use_db: bool,
    grace: float,
) -> int:
    identity = args.identity or name
    pname = process_name(name, identity)
    log = setup_logging(pname, args.log_level)
    cfg = load_config(identity, Path(args.data_dir), service=pname)
    ctx = ServiceContext(name=pname, cfg=cfg, log=log, stop=asyncio.Event(), args=args)
    with contextlib.suppress(FileNotFoundError):
        ctx.ready_file.unlink()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, ctx.stop.set)
    code = 0
    try:
        M.start_metrics_server(cfg.metrics_port)
        if connect_bus:
            ctx.bus_ = await Bus.connect(cfg, registry=registry)
        if use_db:
            from .db import create_pool

            ctx.pool = await create_pool(cfg)
        log.info("started", identity=identity, pid=os.getpid(), nats=cfg.nats_url.split(",")[0])
        task = asyncio.create_task(main(ctx), name=f"main:{pname}")
        stop_wait = asyncio.create_task(ctx.stop.wait())
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        ctx.stop.set()
        if ctx.bus_ is not None:
            await ctx.bus_.stop_consuming(timeout=grace)  # finish in-flight handlers
        if not task.done():
            _done, pending = await asyncio.wait({task}, timeout=grace)
            if pending:
                task.cancel()
        stop_wait.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("service failed")
            code = 1
    except Exception:
        log.exception("service could not start")
        code = 1
    finally:
        M.UP.labels(pname).set(0)
        with contextlib.suppress(FileNotFoundError):
            ctx.ready_file.unlink()
        if ctx.bus_ is not None:
            with contextlib.suppress(Exception):
                await ctx.bus_.close(timeout=5)
        if ctx.pool is not None:
            with contextlib.suppress(Exception):
                await ctx.pool.close()
        log.info("stopped", code=code)
    return code
