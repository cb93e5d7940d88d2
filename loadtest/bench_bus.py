"""The bus's own cost: a signed JetStream publish + ack, and consuming (verify + decode + ack).

    python loadtest/bench_bus.py [--publish 2000] [--consume 5000] [--batch 64]

Starts its own nats-server (TLS, client certificates, the rights ``mpcw up`` renders) on free ports in a
temporary directory, connects a node (``node-4``) and ``consensus`` through ``services.runtime.bus``, then
measures:

- ``--publish`` votes published one at a time by node-4, each awaited to its JetStream ack
  (envelope signed with Ed25519, TLS): milliseconds per message, median and p95;
- ``--consume`` votes published in bulk, then every vote on the server consumed by consensus's own
  durable (pull batches of ``--batch``): every envelope's signature verified, the payload decoded, each
  message acked: messages per second.

Prints a markdown table with the command, the machine and the date. Bounded by its counts; 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from schemas.names import all_identities, durable  # noqa: E402
from services.localcluster.embedded import start_nats  # noqa: E402
from services.localcluster.pki import init_pki  # noqa: E402
from services.runtime.bus import Bus, Received  # noqa: E402
from services.runtime.config import load_config  # noqa: E402


class Ping(msgspec.Struct, frozen=True):
    n: int


REG: dict[str, type[msgspec.Struct]] = {"Ping": Ping}


async def measure(d: Path, url: str, publish: int, consume: int, batch: int) -> tuple[list[float], float]:
    admin = await Bus.connect(load_config("admin", d, nats_url=url), ensure=True)
    await admin.close()
    node = await Bus.connect(load_config("node-4", d, nats_url=url), registry=REG)
    cons = await Bus.connect(load_config("consensus", d, nats_url=url), registry=REG)
    try:
        tx = uuid.uuid4().hex[:12]
        times = []
        for i in range(publish):
            t0 = time.perf_counter()
            await node.publish(f"vote.{tx}.node-4", Ping(n=i), f"p-{tx}-{i}")
            times.append(time.perf_counter() - t0)
        tx2 = uuid.uuid4().hex[:12]
        await asyncio.gather(
            *(node.publish(f"vote.{tx2}.node-4", Ping(n=i), f"c-{tx2}-{i}") for i in range(consume))
        )
        got = 0
        done = asyncio.Event()
        total = publish + consume  # the durable the rights allow consensus reads every vote of this server

        async def handler(r: Received) -> None:
            nonlocal got
            got += 1
            if got == total:
                done.set()

        subject, name = durable("consensus", "consensus-votes")
        t0 = time.perf_counter()
        task = cons.start_consumer(subject, name, handler, batch=batch)
        await asyncio.wait_for(done.wait(), 300)
        rate = total / (time.perf_counter() - t0)
        task.cancel()
        return times, rate
    finally:
        await cons.close(timeout=5)
        await node.close(timeout=5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--publish", type=int, default=2000)
    ap.add_argument("--consume", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="mpcw-bus-bench-"))
    servers = None
    try:
        init_pki(d, nodes=5)
        servers = start_nats(d, all_identities(5))
        times, rate = asyncio.run(measure(d, servers.url, args.publish, args.consume, args.batch))
    finally:
        if servers is not None:
            servers.stop()
        shutil.rmtree(d, ignore_errors=True)
    cmd = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"\n`{cmd}` on {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}; one nats-server\n")  # fmt: skip
    print("| what | number |")
    print("|---|---:|")
    med = statistics.median(times) * 1000
    p95 = statistics.quantiles(times, n=20)[-1] * 1000
    print(f"| publish + ack, signed envelope, TLS, {len(times)} one at a time | {med:.3f} ms median, "
          f"{p95:.3f} ms p95 |")  # fmt: skip
    total = args.publish + args.consume
    what = f"consume + verify + decode + ack, {total} messages, batches of {args.batch}"
    print(f"| {what} | {rate:.0f} msg/s |")


if __name__ == "__main__":
    main()
