"""The recorder as a real process against real NATS and PostgreSQL: the projection of a whole lifecycle,
replays and redeliveries that change nothing, illegal transitions refused, the audit chain verified (and a
tampered row found), and exactly-once across a SIGKILL in the middle of a stream."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from schemas import messages as m
from schemas.names import tx_subject, unban_subject, vote_subject
from services.recorder import verify_chain
from services.runtime.bus import Bus

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]


def start_service(
    module: str, data_dir: Path, nats_url: str, database_url: str, *args: str, log: Path | None = None
) -> subprocess.Popen[bytes]:
    """``python -m services.<module> --data-dir DIR ...`` with the test servers in its environment."""
    env = {**os.environ, "MPCW_NATS_URL": nats_url, "MPCW_DATABASE_URL": database_url}
    out = open(log or (data_dir / f"{module}-{uuid.uuid4().hex[:6]}.log"), "wb")
    return subprocess.Popen(
        [sys.executable, "-m", f"services.{module}", "--data-dir", str(data_dir), *args],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def stop_service(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=timeout)


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def wait_position(conn: asyncpg.Connection, stream: str, seq: int, timeout: float = 20.0) -> None:
    async def reached() -> bool:
        v = await conn.fetchval(
            "SELECT last_seq FROM stream_positions WHERE consumer = 'recorder' AND stream = $1", stream
        )
        return v is not None and v >= seq

    await wait_for(reached, timeout, f"{stream} position {seq}")


def requested(tx_id: str, amount: int = 50_000) -> m.TxRequested:
    return m.TxRequested(
        tx_id=tx_id,
        key_id="frost.default",
        scheme="frost",
        network="regtest",
        recipient="bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080",
        amount=amount,
        fee_rate=2.0,
        fee=300,
        unsigned_tx=b"\x02\x00\x00\x00",
        inputs=[m.InputRef(txid="ab" * 32, vout=1, amount=100_000, script_pubkey=b"\x51\x20" + bytes(32))],
        requested_by="test",
    )


def vote(tx_id: str, node: str, approve: bool = True) -> m.Vote:
    return m.Vote(tx_id=tx_id, node=node, approve=approve, reasons=[] if approve else ["over limit"])


def new_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
def recorder_proc(
    pki: Path, nats_server: str, fresh_database_url: str
) -> Callable[..., subprocess.Popen[bytes]]:
    procs: list[subprocess.Popen[bytes]] = []
    prefix = f"rec{uuid.uuid4().hex[:8]}"

    def start(*extra: str) -> subprocess.Popen[bytes]:
        p = start_service(
            "recorder", pki, nats_server, fresh_database_url, "--durable-prefix", prefix, *extra
        )
        procs.append(p)
        return p

    yield start  # type: ignore[misc]
    for p in procs:
        if p.poll() is None:
            stop_service(p, signal.SIGKILL)


async def test_lifecycle_projection_replays_and_audit_chain(
    bus_factory: Callable[..., Awaitable[Bus]],
    recorder_proc: Callable[..., subprocess.Popen[bytes]],
    fresh_database_url: str,
) -> None:
    intake = await bus_factory("intake")
    consensus = await bus_factory("consensus")
    broadcaster = await bus_factory("broadcaster")
    nodes = [await bus_factory(f"node-{i}") for i in range(1, 5)]
    proc = recorder_proc()
    conn = await asyncpg.connect(fresh_database_url)
    try:
        tx = new_id()
        await intake.publish(tx_subject("requested", tx), requested(tx), tx)
        await consensus.publish(
            tx_subject("voting", tx), m.TxVoting(tx_id=tx, round_id=tx, threshold=3, total_nodes=4), f"v.{tx}"
        )
        certs = []
        for bus in nodes:
            v = vote(tx, bus.identity)
            certs.append(bus.seal(vote_subject(tx, bus.identity), v, f"{tx}.{bus.identity}"))
            await bus.publish(vote_subject(tx, bus.identity), v, f"{tx}.{bus.identity}")
        # a vote replayed under a new msg id (a new stream message): no second row
        await nodes[0].publish(vote_subject(tx, "node-1"), vote(tx, "node-1"), f"{tx}.node-1.again")
        # node-2 changes its mind: recorded as a conflict, not counted
        last_vote = await nodes[1].publish(
            vote_subject(tx, "node-2"), vote(tx, "node-2", approve=False), f"{tx}.node-2.flip"
        )
        await consensus.publish(
            tx_subject("approved", tx), m.TxApproved(tx_id=tx, round_id=tx, certificate=certs[:3]), f"a.{tx}"
        )
        signing = m.TxSigning(
            tx_id=tx,
            attempt=1,
            session_id="s1",
            signers=["node-1", "node-2", "node-3"],
            signer_ids=[0, 1, 2],
            nonces={f"node-{i}": [m.NonceRef(nonce_id=f"n{i}-{tx}", pubnonce=bytes(66))] for i in (1, 2, 3)},
            certificate=certs[:3],
        )
        await consensus.publish(tx_subject("signing", tx), signing, f"s.{tx}.1")
        txid = "cd" * 32
        await broadcaster.publish(  # the broadcaster signs and publishes tx.signed
            tx_subject("signed", tx),
            m.TxSigned(tx_id=tx, txid=txid, signed_tx=b"\x02signed", attempt=1),
            f"d.{tx}",
        )
        # replay of an earlier event (approved again, new msg id): a no-op
        await consensus.publish(
            tx_subject("approved", tx), m.TxApproved(tx_id=tx, round_id=tx, certificate=certs[:3]), f"a2.{tx}"
        )
        await broadcaster.publish(tx_subject("broadcast", tx), m.TxBroadcast(tx_id=tx, txid=txid), f"b.{tx}")
        await broadcaster.publish(
            tx_subject("confirmed", tx),
            m.TxConfirmed(tx_id=tx, txid=txid, block_height=101, confirmations=1),
            f"c.{tx}",
        )
        # the request replayed under a new msg id: no second row, state unchanged
        await intake.publish(tx_subject("requested", tx), requested(tx), f"{tx}.again")

        # an illegal transition: approved while still pending
        tx2 = new_id()
        await intake.publish(tx_subject("requested", tx2), requested(tx2, 70_000), tx2)
        bad = await consensus.publish(
            tx_subject("approved", tx2), m.TxApproved(tx_id=tx2, round_id=tx2, certificate=[]), f"a.{tx2}"
        )
        # an event whose payload names another transaction
        wrong = await consensus.publish(
            tx_subject("voting", tx2),
            m.TxVoting(tx_id=tx, round_id=tx, threshold=3, total_nodes=4),
            f"w.{tx2}",
        )

        await wait_position(conn, "TX", max(bad.seq, wrong.seq))
        await wait_position(conn, "VOTE", last_vote.seq)

        row = await conn.fetchrow("SELECT * FROM transactions WHERE id = $1", tx)
        assert row["state"] == "confirmed"
        assert row["txid"] == txid and row["block_height"] == 101 and row["amount"] == 50_000
        assert bytes(row["signed_tx"]) == b"\x02signed"
        assert await conn.fetchval("SELECT count(*) FROM transactions WHERE id = $1", tx) == 1
        timeline = [
            (r["from_state"], r["to_state"])
            for r in await conn.fetch(
                "SELECT * FROM transaction_transitions WHERE tx_id = $1 ORDER BY id", tx
            )
        ]
        assert timeline == [
            (None, "pending"),
            ("pending", "voting"),
            ("voting", "approved"),
            ("approved", "signing"),
            ("signing", "signed"),
            ("signed", "broadcast"),
            ("broadcast", "confirmed"),
        ]
        votes = await conn.fetch("SELECT node_id, approve FROM votes WHERE tx_id = $1 ORDER BY node_id", tx)
        assert [(v["node_id"], v["approve"]) for v in votes] == [(f"node-{i}", True) for i in range(1, 5)]
        rnd = await conn.fetchrow("SELECT * FROM voting_rounds WHERE tx_id = $1", tx)
        assert rnd["state"] == "approved" and rnd["approvals"] == 4 and len(rnd["certificate"]) == 3
        assert await conn.fetchval("SELECT count(*) FROM presignature_usage WHERE tx_id = $1", tx) == 3
        conflicts = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE action = 'vote.conflict' AND entity_id = $1", tx
        )
        assert conflicts == 1

        row2 = await conn.fetchrow("SELECT state FROM transactions WHERE id = $1", tx2)
        assert row2["state"] == "pending"
        assert await conn.fetchval("SELECT count(*) FROM transaction_transitions WHERE tx_id = $1", tx2) == 1
        refused = await conn.fetch(
            """SELECT actor, details->>'reason' AS reason FROM audit_log
               WHERE action = 'refused' AND entity_id = $1""",
            tx2,
        )
        assert len(refused) == 2 and all(r["actor"] == "consensus" for r in refused)
        assert any("illegal transition pending -> approved" in r["reason"] for r in refused)
        # the recorder reported the sender: its violation comes back through node.violation.consensus
        await wait_for(
            lambda: conn.fetchval(
                """SELECT count(*) >= 2 FROM audit_log WHERE action = 'node.violation'
                   AND entity_id = 'consensus' AND actor = 'recorder' AND details->>'tx_id' = $1""",
                tx2,
            ),
            what="violation reports",
        )

        # the operator lifts a ban: audited as node.unban, with the reason
        admin = await bus_factory("admin")
        await admin.publish(
            unban_subject("node-4"), m.NodeUnban(node="node-4", reason="cleared by ops"), f"unban.{tx}"
        )
        await wait_for(
            lambda: conn.fetchval(
                """SELECT count(*) = 1 FROM audit_log WHERE action = 'node.unban' AND entity_id = 'node-4'
                   AND actor = 'admin' AND details->>'reason' = 'cleared by ops'"""
            ),
            what="unban audit entry",
        )

        # every audited message exactly once, and the chain verifies
        dup = await conn.fetchval(
            """SELECT count(*) FROM (SELECT stream, stream_seq FROM audit_log WHERE stream <> ''
               GROUP BY 1, 2 HAVING count(*) > 1) d"""
        )
        assert dup == 0
        assert await verify_chain(conn) == (True, None)
        # no transaction bytes in the audit trail
        assert (
            await conn.fetchval("SELECT count(*) FROM audit_log WHERE details::text LIKE '%unsigned_tx%'")
            == 0
        )
    finally:
        assert stop_service(proc) == 0
        await conn.close()


async def test_exactly_once_across_sigkill(
    bus_factory: Callable[..., Awaitable[Bus]],
    recorder_proc: Callable[..., subprocess.Popen[bytes]],
    fresh_database_url: str,
) -> None:
    intake = await bus_factory("intake")
    consensus = await bus_factory("consensus")
    node = await bus_factory("node-1")
    conn = await asyncpg.connect(fresh_database_url)
    try:
        # small batches, so that the publisher outruns it and the kill lands mid-stream
        proc = recorder_proc("--ack-wait", "2", "--batch", "4")
        ids = [new_id() for _ in range(300)]  # enough that a fast machine cannot finish before the kill
        last = None
        for tx in ids:
            await intake.publish(tx_subject("requested", tx), requested(tx), tx)
            await node.publish(vote_subject(tx, "node-1"), vote(tx, "node-1"), f"{tx}.node-1")
            last = await consensus.publish(
                tx_subject("voting", tx),
                m.TxVoting(tx_id=tx, round_id=tx, threshold=3, total_nodes=5),
                f"v.{tx}",
            )
        assert last is not None

        async def some_applied() -> bool:
            n = await conn.fetchval("SELECT count(*) FROM transactions WHERE id = ANY($1)", ids)
            return bool(n >= 5)

        deadline = time.monotonic() + 20
        while not await some_applied():  # polled tightly: the kill must land while it is still working
            assert time.monotonic() < deadline, "timed out waiting for first rows"
            await asyncio.sleep(0.005)
        stop_service(proc, signal.SIGKILL)  # mid-stream: likely between a commit and its ack
        done_before = await conn.fetchval("SELECT count(*) FROM transactions WHERE id = ANY($1)", ids)
        assert done_before < len(ids), "recorder finished before it could be killed mid-stream"

        # the same messages delivered again under new stream sequences change nothing either
        for tx in ids[:10]:
            await intake.publish(tx_subject("requested", tx), requested(tx), f"{tx}.replay")
            await node.publish(vote_subject(tx, "node-1"), vote(tx, "node-1"), f"{tx}.node-1.replay")
        proc2 = recorder_proc("--ack-wait", "2")
        tx_pos = (await intake.js.stream_info("TX")).state.last_seq
        vote_pos = (await intake.js.stream_info("VOTE")).state.last_seq
        await wait_position(conn, "TX", tx_pos, timeout=40)
        await wait_position(conn, "VOTE", vote_pos, timeout=40)

        rows = await conn.fetch(
            "SELECT state, count(*) AS n FROM transactions WHERE id = ANY($1) GROUP BY state", ids
        )
        assert {r["state"]: r["n"] for r in rows} == {"voting": len(ids)}
        per_tx = await conn.fetch(
            "SELECT tx_id, count(*) AS n FROM transaction_transitions WHERE tx_id = ANY($1) GROUP BY tx_id",
            ids,
        )
        assert len(per_tx) == len(ids) and all(r["n"] == 2 for r in per_tx)
        assert await conn.fetchval("SELECT count(*) FROM votes WHERE tx_id = ANY($1)", ids) == len(ids)
        audited = await conn.fetchval(
            """SELECT count(*) FROM audit_log
               WHERE entity_id = ANY($1) AND action IN ('tx.requested', 'tx.voting', 'vote')""",
            ids,
        )
        assert audited == 3 * len(ids)
        dup = await conn.fetchval(
            """SELECT count(*) FROM (SELECT stream, stream_seq FROM audit_log WHERE stream <> ''
               GROUP BY 1, 2 HAVING count(*) > 1) d"""
        )
        assert dup == 0
        assert await verify_chain(conn) == (True, None)
        assert stop_service(proc2) == 0
    finally:
        await conn.close()


async def test_tampered_audit_row_is_found(
    bus_factory: Callable[..., Awaitable[Bus]],
    recorder_proc: Callable[..., subprocess.Popen[bytes]],
    fresh_database_url: str,
) -> None:
    intake = await bus_factory("intake")
    proc = recorder_proc()
    conn = await asyncpg.connect(fresh_database_url)
    try:
        ack = None
        ids = [new_id() for _ in range(3)]
        for tx in ids:
            ack = await intake.publish(tx_subject("requested", tx), requested(tx), tx)
        assert ack is not None
        await wait_position(conn, "TX", ack.seq)
        assert stop_service(proc) == 0
        assert await verify_chain(conn) == (True, None)
        # UPDATE is refused by the trigger...
        with pytest.raises(asyncpg.PostgresError):
            await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE entity_id = $1", ids[1])
        # ...so an attacker with owner rights disables it first; the chain still gives them away
        target = await conn.fetchval("SELECT id FROM audit_log WHERE entity_id = $1", ids[1])
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_delete")
        await conn.execute("UPDATE audit_log SET details = '{\"amount\": 1}' WHERE id = $1", target)
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_delete")
        assert await verify_chain(conn) == (False, target)
    finally:
        await conn.close()
