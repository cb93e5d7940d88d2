"""End-to-end latency and throughput of Taproot spends on a local cluster (5 nodes, every service).

    python loadtest/bench_e2e.py [--data-dir DIR] [--spends 50] [--concurrent 200] [--workers 32]
                                 [--nats-servers 1|3]

Starts a cluster with ``mpcw up`` in a fresh temporary directory (or uses a running one with
``--data-dir``), runs the DKG, funds the wallet with enough coins, then measures:

- latency, one spend at a time (p50, p99): request -> accepted (the intake's 202 read by the client);
  request -> signed and request -> broadcast, taken from the transaction's timeline (publish times of
  ``tx.signed`` / ``tx.broadcast``) against the moment the client sent the request (same machine, same
  clock);
- sustained throughput: ``--concurrent`` spends submitted by ``--workers`` concurrent clients; spends per
  second from the first request to the last ``broadcast``, the times read from the intake's event stream
  (one server-sent-events connection, not polling).

Prints a markdown table (with the command and the machine) for BENCHMARKS.md. Bounded: every wait has a
timeout, every request loop a count; it talks to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402

RECIPIENT = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


def mpcw(d: Path, *args: str, timeout: float = 180) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "services.mpcw", "--data-dir", str(d), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"mpcw {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


async def wait_state(
    client: aiohttp.ClientSession, tx_id: str, states: set[str], timeout: float
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with client.get(f"/api/v1/transactions/{tx_id}") as r:
            if r.status == 200:
                body: dict[str, Any] = await r.json()
                if body["state"] in states or body["state"] in ("rejected", "failed"):
                    return body
        await asyncio.sleep(0.05)  # the timeline carries the times: polling slower only spares the CPU
    raise TimeoutError(f"{tx_id} not in {states} after {timeout}s")


def at(body: dict[str, Any], state: str) -> float | None:
    for step in body.get("timeline", []):
        if step["state"] == state:
            return float(step["at_ms"]) / 1000
    return None


async def spend(client: aiohttp.ClientSession, amount: int) -> tuple[str, float, float]:
    """POST one spend: its id, when the request was sent and when its answer was read (epoch s)."""
    t0 = time.time()
    body = {"recipient": RECIPIENT, "amount_sats": amount, "fee_rate": 2.0}
    async with client.post("/api/v1/transactions", json=body) as r:
        if r.status not in (200, 201, 202):
            raise RuntimeError(f"spend refused: {r.status} {(await r.text())[:200]}")
        return (await r.json())["id"], t0, time.time()


async def latency(client: aiohttp.ClientSession, count: int) -> dict[str, list[float]]:
    to_accepted: list[float] = []
    to_signed: list[float] = []
    to_broadcast: list[float] = []
    for _ in range(count):
        tx_id, t0, accepted = await spend(client, 10_000)
        to_accepted.append((accepted - t0) * 1000)
        body = await wait_state(client, tx_id, {"broadcast", "confirmed"}, 30)
        s, b = at(body, "signed"), at(body, "broadcast")
        if s is None or b is None:
            raise RuntimeError(f"{tx_id} ended {body['state']}: {body.get('reasons')}")
        to_signed.append((s - t0) * 1000)
        to_broadcast.append((b - t0) * 1000)
    return {"accepted": to_accepted, "signed": to_signed, "broadcast": to_broadcast}


class Transitions:
    """The intake's event stream (``GET /api/v1/events``, server-sent events): every spend's state
    changes with their times, read as they happen. Watching one stream costs the cluster far less than
    polling listings or reading every spend's timeline, so the measurement hardly loads what it measures."""

    def __init__(self, client: aiohttp.ClientSession) -> None:
        self.client = client
        self.at: dict[str, dict[str, float]] = {}  # tx_id -> state -> when (epoch s)
        self.changed = asyncio.Event()
        self.open = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Transitions:
        self.task = asyncio.create_task(self._read())
        await asyncio.wait_for(self.open.wait(), 30)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _read(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.client.get("/api/v1/events", timeout=timeout) as r:
            r.raise_for_status()
            async for raw in r.content:
                line = raw.decode().rstrip("\n")
                if line.startswith(": events after"):
                    self.open.set()  # the stream is live: every later change will come
                elif line.startswith("data: "):
                    ev = json.loads(line[len("data: ") :])
                    self.at.setdefault(ev["tx_id"], {}).setdefault(ev["state"], ev["at_ms"] / 1000)
                    self.changed.set()

    def ended(self, tx_id: str) -> bool:
        return any(s in self.at.get(tx_id, {}) for s in ("broadcast", "confirmed", "rejected", "failed"))


async def throughput(client: aiohttp.ClientSession, total: int, workers: int) -> tuple[float, int, int]:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    ids: list[str] = []
    refused = 0

    async def worker() -> None:
        nonlocal refused
        while True:
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            try:
                tx_id, _, _ = await spend(client, 10_000)
                ids.append(tx_id)
            except RuntimeError:
                refused += 1

    async with Transitions(client) as seen:
        t0 = time.time()
        await asyncio.gather(*(worker() for _ in range(workers)))
        deadline = time.monotonic() + 300
        while not all(seen.ended(t) for t in ids) and time.monotonic() < deadline:
            seen.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(seen.changed.wait(), 1.0)
    broadcast = [seen.at[t]["broadcast"] for t in ids if "broadcast" in seen.at.get(t, {})]
    failed = len(ids) - len(broadcast)
    last = max(broadcast, default=t0)
    return len(broadcast) / (last - t0), refused, failed


def nats_delivered(d: Path) -> int:
    """Messages the cluster's nats-servers have delivered to clients so far (``out_msgs`` of ``/varz``,
    summed over the servers): deliveries per spend are the figure no machine's speed changes."""
    cluster = json.loads((d / "cluster.json").read_text())
    urls = cluster.get("nats_monitor_urls") or [cluster["nats_monitor_url"]]
    total = 0
    with httpx.Client(timeout=10) as c:
        for url in urls:
            r = c.get(f"{url}/varz")
            r.raise_for_status()
            total += int(r.json()["out_msgs"])
    return total


def cluster_cpu(d: Path) -> dict[str, float]:
    """CPU seconds used so far by each component of the cluster in ``d`` (its processes: every one whose
    command line names the data directory: the services, NATS and PostgreSQL), from ``/proc``."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[str, tuple[str, list[str]]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            procs[pid] = (cmd, Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split())
        except OSError:
            continue
    # PostgreSQL's backends retitle themselves: they are the children of the postmaster named by d
    postmasters = {pid for pid, (cmd, _) in procs.items() if str(d) in cmd and "postgres" in cmd}
    out: dict[str, float] = {}
    for cmd, stat in procs.values():
        if stat[1] in postmasters:
            cmd = f"postgres {d}"
        if str(d) not in cmd or "bench_e2e" in cmd:
            continue
        if "nats-server" in cmd:
            name = "NATS"
        elif "postgres" in cmd:
            name = "PostgreSQL"
        elif " -m services." in cmd:
            name = cmd.split(" -m services.", 1)[1].split()[0]
            name = "signers (5)" if name == "signer" else name
        else:
            continue
        out[name] = out.get(name, 0.0) + (int(stat[11]) + int(stat[12])) / tick
    return out


async def bench(d: Path, spends: int, concurrent: int, workers: int) -> dict[str, Any]:
    cluster = json.loads((d / "cluster.json").read_text())
    connector = aiohttp.TCPConnector(limit=workers + 4)
    async with aiohttp.ClientSession(
        base_url=cluster["intake_url"],
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=60),
        headers={"X-API-Key": cluster["admin_api_key"]},
    ) as client:
        for _ in range(3):  # warm-up: caches, connections, consumers
            await wait_state(client, (await spend(client, 10_000))[0], {"broadcast", "confirmed"}, 30)
        print(f"latency: {spends} spends one at a time ...", flush=True)
        lat = await latency(client, spends)
        print(f"throughput: {concurrent} spends from {workers} clients ...", flush=True)
        cpu0, own0, msgs0 = cluster_cpu(d), time.process_time(), nats_delivered(d)
        rate, refused, failed = await throughput(client, concurrent, workers)
        cpu1, own1, msgs1 = cluster_cpu(d), time.process_time(), nats_delivered(d)
    cpu = {k: (v - cpu0.get(k, 0.0)) * 1000 / concurrent for k, v in cpu1.items()}
    return {
        **lat, "rate": rate, "refused": refused, "failed": failed,
        "cpu": cpu, "client_cpu": (own1 - own0) * 1000 / concurrent,
        "delivered": (msgs1 - msgs0) / concurrent,
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="a running cluster (default: start one)")
    ap.add_argument("--spends", type=int, default=50, help="sequential spends for the latency numbers")
    ap.add_argument("--concurrent", type=int, default=200, help="spends for the throughput number")
    ap.add_argument("--workers", type=int, default=32, help="concurrent clients for the throughput number")
    ap.add_argument(
        "--nats-servers", type=int, choices=(1, 3), default=1, help="3: a JetStream cluster, streams R3"
    )
    args = ap.parse_args()
    own = args.data_dir is None
    d = args.data_dir or Path(tempfile.mkdtemp(prefix="mpcw-bench-"))
    if own:  # the throwaway cluster's private keys go beside its directory and are removed with it
        os.environ["MPCW_SECRETS_DIR"] = f"{d}-secrets"
    try:
        if own:
            print(f"starting a cluster in {d} ...", flush=True)
            mpcw(d, "up", "--nats-servers", str(args.nats_servers))
            mpcw(d, "dkg", "start", "--scheme", "frost")
        address = mpcw(d, "wallet", "address").strip()
        coins = args.spends + args.concurrent + 10
        print(f"funding {coins} coins ...", flush=True)
        url = json.loads((d / "cluster.json").read_text())["devchain_url"]
        with httpx.Client(timeout=30) as c:
            for _ in range(coins):
                r = c.post(f"{url}/dev/faucet", json={"address": address, "sats": 100_000})
                r.raise_for_status()
        time.sleep(1.0)
        res = asyncio.run(bench(d, args.spends, args.concurrent, args.workers))
    except BaseException:
        if own:
            print(f"the cluster's logs are kept in {d / 'logs'}", file=sys.stderr)
        raise
    else:
        if own:  # its own cluster: about 100 MB of stores and logs
            mpcw(d, "down")
            shutil.rmtree(d, ignore_errors=True)
            shutil.rmtree(f"{d}-secrets", ignore_errors=True)
    finally:
        if own and (d / "run" / "supervisor.pid").exists():
            mpcw(d, "down")
    cmd = "python loadtest/bench_e2e.py " + " ".join(sys.argv[1:])
    print()
    print(
        f"`{cmd.strip()}` on {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; 5 nodes (t=4), {args.nats_servers} nats-server(s) and every service "
        "on this machine"
    )
    print()
    print("| measure | p50 | p99 | n |")
    print("|---|---:|---:|---:|")
    for key, name in (
        ("accepted", "request -> accepted (202)"),
        ("signed", "request -> signed"),
        ("broadcast", "request -> broadcast"),
    ):
        v = res[key]
        print(f"| {name} (one at a time) | {statistics.median(v):.1f} ms | {pct(v, 99):.1f} ms | {len(v)} |")
    print(
        f"| sustained throughput, {args.concurrent} spends, {args.workers} clients | "
        f"{res['rate']:.1f} spends/s | | {args.concurrent - res['refused'] - res['failed']} |"
    )
    print()
    print("CPU per spend during the throughput run (all processes of the cluster, from /proc; it includes")
    print("the confirmations and the background work of those seconds):")
    print()
    print("| component | CPU ms per spend |")
    print("|---|---:|")
    for name, ms in sorted(res["cpu"].items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {ms:.1f} |")
    print(f"| total | {sum(res['cpu'].values()):.1f} |")
    print()
    print(
        f"The load generator (this script's {args.workers} clients, on the same cores): "
        f"{res['client_cpu']:.1f} ms CPU per spend."
    )
    print(
        f"Messages the nats-server(s) delivered to clients during the throughput run: "
        f"{res['delivered']:.1f} per spend (KV watch updates, consumer deliveries and API replies)."
    )
    print(f"\nrefused at intake: {res['refused']}; did not reach broadcast: {res['failed']}")
    if res["refused"] or res["failed"]:
        sys.exit(f"{res['refused']} spends refused at intake, {res['failed']} did not reach broadcast")


if __name__ == "__main__":
    main()
