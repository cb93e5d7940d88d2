"""Recorder throughput: how many lifecycle events per second the recorder projects into PostgreSQL.

    python loadtest/bench_recorder.py [--spends 400] [--concurrency 32] [--batch N] [--timeout 300]

``--batch 1`` runs the recorder the old way (one message per fetch and per DB transaction), the default
its batch size (256 messages per fetch and per DB transaction).

Starts embedded nats-server (TLS JetStream) and PostgreSQL in a fresh temporary directory (the way
``tests/integration/conftest.py`` does), runs ``python -m services.recorder`` as a subprocess, warms it
up with a few spends, pauses it (SIGSTOP), publishes ``--spends`` realistic lifecycle sequences with the
publishing services' own identities (requested, voting, 5 votes, approved with a 4-vote certificate,
signing with nonce claims, signed, broadcast, confirmed: 7 events on ``tx.>`` and 5 on ``vote.>`` per
spend), resumes it (SIGCONT) and times the drain until both stream positions in ``stream_positions``
reach the last published sequence. Reports events/s and spends/s recorded, checks the result (every
spend confirmed, 12 audit rows each, the audit chain verifies) and prints a markdown table with the
command and the machine. Bounded (every wait has a timeout), 127.0.0.1 / unix sockets only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from schemas import messages as m  # noqa: E402
from schemas.names import all_identities, tx_subject, vote_subject  # noqa: E402
from services.localcluster.embedded import start_nats, start_postgres, stop_postgres  # noqa: E402
from services.localcluster.pki import init_pki  # noqa: E402
from services.recorder import verify_anchored, verify_chain  # noqa: E402
from services.recorder.anchor import ANCHOR_INTERVAL_S  # noqa: E402
from services.runtime.bus import Bus  # noqa: E402
from services.runtime.config import load_config  # noqa: E402
from services.runtime.db import migrate  # noqa: E402

RECIPIENT = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
NODES = [f"node-{i}" for i in range(1, 6)]
EVENTS_PER_SPEND = 12


class Publishers:
    def __init__(self, buses: dict[str, Bus]) -> None:
        self.b = buses

    async def spend(self, tx: str) -> None:
        """One spend's whole lifecycle, in order on each stream (as the services publish it)."""
        b = self.b
        req = m.TxRequested(
            tx_id=tx,
            key_id="frost.default",
            scheme="frost",
            network="regtest",
            recipient=RECIPIENT,
            amount=50_000,
            fee_rate=2.0,
            fee=300,
            unsigned_tx=b"\x02\x00\x00\x00" + os.urandom(60),
            inputs=[
                m.InputRef(txid="ab" * 32, vout=1, amount=100_000, script_pubkey=b"\x51\x20" + bytes(32))
            ],
            requested_by="bench",
        )
        await b["intake"].publish(tx_subject("requested", tx), req, tx)
        await b["consensus"].publish(
            tx_subject("voting", tx), m.TxVoting(tx_id=tx, round_id=tx, threshold=4, total_nodes=5), f"v.{tx}"
        )
        certs: list[bytes] = []
        votes = []
        for node in NODES:
            v = m.Vote(tx_id=tx, node=node, approve=True, policy_version=1)
            certs.append(b[node].seal(vote_subject(tx, node), v, f"{tx}.{node}"))
            votes.append(b[node].publish(vote_subject(tx, node), v, f"{tx}.{node}"))
        await asyncio.gather(*votes)
        await b["consensus"].publish(
            tx_subject("approved", tx), m.TxApproved(tx_id=tx, round_id=tx, certificate=certs[:4]), f"a.{tx}"
        )
        signers = NODES[:4]
        signing = m.TxSigning(
            tx_id=tx,
            attempt=1,
            session_id=f"s.{tx}",
            signers=signers,
            signer_ids=[0, 1, 2, 3],
            nonces={n: [m.NonceRef(nonce_id=f"{n}.{tx}", pubnonce=bytes(66))] for n in signers},
            certificate=certs[:4],
        )
        await b["consensus"].publish(tx_subject("signing", tx), signing, f"s.{tx}.1")
        txid = os.urandom(32).hex()
        await b["broadcaster"].publish(
            tx_subject("signed", tx),
            m.TxSigned(tx_id=tx, txid=txid, signed_tx=b"\x02signed" + os.urandom(100), attempt=1),
            f"d.{tx}",
        )
        await b["broadcaster"].publish(
            tx_subject("broadcast", tx), m.TxBroadcast(tx_id=tx, txid=txid), f"b.{tx}"
        )
        await b["broadcaster"].publish(
            tx_subject("confirmed", tx),
            m.TxConfirmed(tx_id=tx, txid=txid, block_height=101, confirmations=1),
            f"c.{tx}",
        )

    async def spends(self, ids: list[str], concurrency: int) -> None:
        sem = asyncio.Semaphore(concurrency)

        async def one(tx: str) -> None:
            async with sem:
                await self.spend(tx)

        await asyncio.gather(*(one(tx) for tx in ids))


async def positions(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT stream, last_seq FROM stream_positions WHERE consumer = 'recorder'")
    return {r["stream"]: int(r["last_seq"]) for r in rows}


async def wait_positions(conn: asyncpg.Connection, target: dict[str, int], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while True:
        pos = await positions(conn)
        if all(pos.get(s, 0) >= seq for s, seq in target.items()):
            return time.perf_counter()
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out: positions {pos}, target {target}")
        await asyncio.sleep(0.02)


async def last_seqs(bus: Bus) -> dict[str, int]:
    return {s: (await bus.js.stream_info(s)).state.last_seq for s in ("TX", "VOTE")}


async def run(d: Path, spends: int, concurrency: int, timeout: float, batch: int | None) -> dict[str, float]:
    init_pki(d, nodes=5)
    nats = start_nats(d, all_identities(5))
    pg = start_postgres(d)
    proc: subprocess.Popen[bytes] | None = None
    buses: dict[str, Bus] = {}
    try:
        await migrate(pg.url)
        admin = await Bus.connect(load_config("admin", d, nats_url=nats.url), ensure=True)
        await admin.close()
        for ident in ("intake", "consensus", "broadcaster", *NODES):
            buses[ident] = await Bus.connect(load_config(ident, d, nats_url=nats.url))
        pubs = Publishers(buses)
        conn = await asyncpg.connect(pg.url)
        env = {**os.environ, "MPCW_NATS_URL": nats.url, "MPCW_DATABASE_URL": pg.url}
        log = open(d / "recorder.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.recorder", "--data-dir", str(d),
             *(["--batch", str(batch)] if batch is not None else [])],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        warm = [uuid.uuid4().hex for _ in range(5)]
        await pubs.spends(warm, concurrency)
        await wait_positions(conn, await last_seqs(buses["intake"]), 60)

        proc.send_signal(signal.SIGSTOP)
        ids = [uuid.uuid4().hex for _ in range(spends)]
        p0 = time.perf_counter()
        await pubs.spends(ids, concurrency)
        publish_s = time.perf_counter() - p0
        target = await last_seqs(buses["intake"])
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGCONT)
        t1 = await wait_positions(conn, target, timeout)
        drain_s = t1 - t0

        confirmed = await conn.fetchval(
            "SELECT count(*) FROM transactions WHERE id = ANY($1) AND state = 'confirmed'", ids
        )
        audited = await conn.fetchval("SELECT count(*) FROM audit_log WHERE entity_id = ANY($1)", ids)
        ok, bad = await verify_chain(conn)
        await asyncio.sleep(ANCHOR_INTERVAL_S + 0.5)  # the anchor of the last commits
        rows = int(await conn.fetchval("SELECT count(*) FROM audit_log"))
        buses["admin"] = await Bus.connect(load_config("admin", d, nats_url=nats.url))  # reads AUDIT
        report = await verify_anchored(conn, buses["admin"])
        if not report.ok or report.anchored_to != report.head:
            raise SystemExit(f"audit anchors: first bad {report.first_bad}, anchored to {report.anchored_to}")
        await conn.close()
        if confirmed != spends or audited != EVENTS_PER_SPEND * spends or not ok:
            raise SystemExit(f"wrong result: confirmed {confirmed}, audited {audited}, chain {ok} {bad}")
        events = EVENTS_PER_SPEND * spends
        return {
            "spends": spends,
            "events": events,
            "publish_s": publish_s,
            "drain_s": drain_s,
            "events_per_s": events / drain_s,
            "spends_per_s": spends / drain_s,
            "rows": rows,
            "anchors": len(report.anchors),
        }
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        for b in buses.values():
            await b.close(timeout=5)
        nats.stop()
        stop_postgres(pg.data_dir)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spends", type=int, default=400)
    ap.add_argument("--concurrency", type=int, default=32, help="spends published concurrently")
    ap.add_argument("--timeout", type=float, default=300.0, help="give up draining after S seconds")
    ap.add_argument("--batch", type=int, default=None, help="the recorder's --batch (default: its own)")
    ap.add_argument("--label", default="", help="row label (e.g. before/after)")
    args = ap.parse_args()
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # nats-py's TLS close chatter
    with tempfile.TemporaryDirectory(prefix="mpcw-bench-rec-") as tmp:
        r = asyncio.run(run(Path(tmp), args.spends, args.concurrency, args.timeout, args.batch))
    cmd = " ".join(["python", "loadtest/bench_recorder.py", *sys.argv[1:]])
    print(
        f"`{cmd}` on {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}; embedded nats-server + PostgreSQL on the same machine\n"
    )
    print("| recorder | spends | events | drain s | events/s | spends/s |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| {args.label or f'batch {args.batch or 256}'} | {r['spends']} | {r['events']} | "
        f"{r['drain_s']:.2f} | "
        f"{r['events_per_s']:.0f} | {r['spends_per_s']:.1f} |"
    )
    print(f"\n(published in {r['publish_s']:.2f} s while the recorder was paused; the recorder signed "
          f"{r['anchors']:.0f} anchors of its {r['rows']:.0f} audit rows onto AUDIT)")  # fmt: skip


if __name__ == "__main__":
    main()
