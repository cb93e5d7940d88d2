"""Where the time of one spend goes: every bus message of a spend, with the server's receive time.

    python loadtest/trace_spend.py --data-dir DIR [--spends 5]

Needs a running, funded cluster (``mpcw up``, ``mpcw dkg start``, ``mpcw dev fund``). Sends ``--spends``
spends one at a time, then reads every message of each one from the TX, VOTE and PROTO streams and the
``rounds``/``presig`` KV updates in that window (as ``admin``), and prints them in order with the time since
the REST request was sent (JetStream's stored timestamp, so the broker's clock, which is this machine's).
A diagnosis tool for the pipeline's latency, not a benchmark: its own reads add load after each spend.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from pathlib import Path

import httpx
from nats.js import api

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schemas.messages import REGISTRY  # noqa: E402
from services.mpcw.client import cluster_of  # noqa: E402
from services.runtime.bus import Bus  # noqa: E402
from services.runtime.config import load_config  # noqa: E402

RECIPIENT = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
STREAMS = ("TX", "VOTE", "PROTO", "KV_rounds", "KV_presig")
SUBJECTS = {"TX": "tx.>", "VOTE": "vote.>", "PROTO": "proto.>"}


async def read_window(bus: Bus, stream: str, t0: float, t1: float) -> list[tuple[float, str]]:
    """(server time, subject) of every message of ``stream`` stored between t0 and t1 (epoch seconds)."""
    start = datetime.fromtimestamp(t0).astimezone()
    subject = f"$KV.{stream[3:]}.>" if stream.startswith("KV_") else SUBJECTS[stream]
    config = api.ConsumerConfig(
        deliver_policy=api.DeliverPolicy.BY_START_TIME,
        opt_start_time=start.isoformat(),  # type: ignore[arg-type]  # nats-py sends it as JSON: a string
    )
    out: list[tuple[float, str]] = []
    psub = await bus.js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
    try:
        while True:
            try:
                msg = await psub.next_msg(timeout=0.5)
            except Exception:
                break
            ts = msg.metadata.timestamp.timestamp()
            if ts > t1:
                break
            out.append((ts, msg.subject))
    finally:
        await psub.unsubscribe()
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--spends", type=int, default=5)
    args = ap.parse_args()
    cluster = cluster_of(args.data_dir)
    cfg = load_config("admin", args.data_dir, service="trace", nats_url=cluster.get("nats_url"))
    bus = await Bus.connect(cfg, registry=REGISTRY, ensure=False, timeout=15.0)
    headers = {"X-API-Key": cluster["admin_api_key"]}
    async with httpx.AsyncClient(base_url=cluster["intake_url"], headers=headers, timeout=30) as client:
        for _ in range(args.spends):
            t0 = time.time()
            body = {"recipient": RECIPIENT, "amount_sats": 10_000, "fee_rate": 2.0}
            r = await client.post("/api/v1/transactions", json=body)
            r.raise_for_status()
            tx_id = r.json()["id"]
            while True:
                body = (await client.get(f"/api/v1/transactions/{tx_id}")).json()
                if body["state"] in ("broadcast", "confirmed", "rejected", "failed"):
                    break
                await asyncio.sleep(0.05)
            t1 = time.time()
            events: list[tuple[float, str]] = []
            for stream in STREAMS:
                events += await read_window(bus, stream, t0, t1)
            events.sort()
            print(f"\n{tx_id}: {body['state']}  (client saw it after {(t1 - t0) * 1000:.1f} ms)")
            for ts, subject in events:
                print(f"  {(ts - t0) * 1000:7.1f} ms  {subject}")
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main())
