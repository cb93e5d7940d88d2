"""The recorder's projection of whole batches (``services.recorder.project.record``) against real
PostgreSQL, and the batch-consuming recorder process against real NATS: the same rows and audit entries
as recording every message as a batch of one (replays, redeliveries, illegal transitions in the middle
of a batch, bad payloads, conflicting votes), a batch that breaks a constraint recorded message by
message, and exactly-once across a SIGKILL in the middle of large batches."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from schemas import messages as m
from schemas.names import tx_subject, vote_subject
from services.recorder import Message, Outcome, record, verify_chain
from services.runtime.bus import Bus
from services.runtime.db import migrate

from .conftest import _with_database
from .test_recorder_projection import requested, start_service, stop_service, wait_position

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="session")]

NODES = [f"node-{i}" for i in range(1, 6)]


@pytest_asyncio.fixture
async def two_databases(_postgres: tuple[str, str]) -> AsyncIterator[tuple[str, str]]:
    names = [f"t_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    admin = await asyncpg.connect(_postgres[1])
    try:
        for name in names:
            await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    urls = [_with_database(_postgres[1], name) for name in names]
    for url in urls:
        await migrate(url)
    yield urls[0], urls[1]
    admin = await asyncpg.connect(_postgres[1])
    try:
        for name in names:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


class Streams:
    """Messages as the bus would hand them to the recorder, with stream sequences."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {"TX": 0, "VOTE": 0, "NODE": 0}
        self.log: list[Message] = []

    def add(self, stream: str, subject: str, sender: str, payload: Any) -> Message:
        self.seq[stream] += 1
        msg = Message(
            stream=stream,
            seq=self.seq[stream],
            subject=subject,
            sender=sender,
            payload=payload,
            msg_id=f"{stream}.{self.seq[stream]}",
            envelope_raw=b"env-" + subject.encode(),
        )
        self.log.append(msg)
        return msg

    def tx(self, event: str, tx_id: str, payload: Any, sender: str = "consensus") -> Message:
        return self.add("TX", tx_subject(event, tx_id), sender, payload)

    def vote(self, tx_id: str, node: str, approve: bool = True, sender: str | None = None) -> Message:
        v = m.Vote(tx_id=tx_id, node=node, approve=approve, reasons=[] if approve else ["no"])
        return self.add("VOTE", vote_subject(tx_id, node), sender or node, v)


def lifecycle(s: Streams, tx: str, rng: random.Random) -> None:
    """One spend's events with the usual mistakes mixed in."""
    s.tx("requested", tx, requested(tx, rng.randrange(1000, 90_000)), "intake")
    if rng.random() < 0.2:  # illegal: approved while pending
        s.tx("approved", tx, m.TxApproved(tx_id=tx, round_id=tx, certificate=[]))
    s.tx("voting", tx, m.TxVoting(tx_id=tx, round_id=tx, threshold=3, total_nodes=5))
    for node in NODES:
        s.vote(tx, node, approve=rng.random() < 0.9)
    if rng.random() < 0.3:
        s.vote(tx, "node-1")  # replay or conflict
    if rng.random() < 0.1:
        s.vote(tx, "node-2", sender="node-3")  # forged sender
    end = rng.random()
    if end < 0.15:
        s.tx("rejected", tx, m.TxRejected(tx_id=tx, reasons=["policy"], certificate=[b"c"]))
        return
    if end < 0.25:
        s.tx("failed", tx, m.TxFailed(tx_id=tx, reason="timeout"))
        return
    s.tx("approved", tx, m.TxApproved(tx_id=tx, round_id=tx, certificate=[b"a", b"b", b"c"]))
    if rng.random() < 0.2:  # replayed event
        s.tx("voting", tx, m.TxVoting(tx_id=tx, round_id=tx, threshold=3, total_nodes=5))
    for attempt in (1, 2) if rng.random() < 0.3 else (1,):
        nonces = {n: [m.NonceRef(nonce_id=f"{n}.{tx}.{attempt}", pubnonce=bytes(66))] for n in NODES[:3]}
        signing = m.TxSigning(
            tx_id=tx,
            attempt=attempt,
            session_id=f"s.{tx}.{attempt}",
            signers=NODES[:3],
            signer_ids=[0, 1, 2],
            nonces=nonces,
            certificate=[],
        )
        s.tx("signing", tx, signing)
    if rng.random() < 0.1:  # a payload naming another transaction
        s.tx("signed", tx, m.TxSigned(tx_id="other", txid="00" * 32, signed_tx=b"x", attempt=1))
    txid = f"{rng.getrandbits(256):064x}"
    s.tx("signed", tx, m.TxSigned(tx_id=tx, txid=txid, signed_tx=b"\x02" + tx.encode(), attempt=1))
    if rng.random() < 0.1:
        s.tx("failed", tx, m.TxFailed(tx_id=tx, reason="broadcast refused"))
        return
    s.tx("broadcast", tx, m.TxBroadcast(tx_id=tx, txid=txid), "broadcaster")
    if rng.random() < 0.2:
        s.tx("broadcast", tx, m.TxBroadcast(tx_id=tx, txid=txid), "broadcaster")  # rebroadcast
    s.tx(
        "confirmed", tx, m.TxConfirmed(tx_id=tx, txid=txid, block_height=100, confirmations=1), "broadcaster"
    )
    if rng.random() < 0.2:
        s.tx("requested", tx, requested(tx), "intake")  # replay after the end


def scenario(seed: int, spends: int = 30) -> list[Message]:
    """Several spends interleaved (each in its own order), plus violations, bad subjects."""
    rng = random.Random(seed)
    per_tx: list[list[Message]] = []
    for i in range(spends):
        s = Streams()
        lifecycle(s, f"tx{seed}-{i:03d}", rng)
        per_tx.append(s.log)
    # interleave, keeping each spend's order; then renumber per stream
    out: list[Message] = []
    queues = [list(q) for q in per_tx]
    while any(queues):
        q = rng.choice([q for q in queues if q])
        out.append(q.pop(0))
        if rng.random() < 0.03:
            out.append(
                Message(
                    "NODE",
                    0,
                    "node.violation.node-4",
                    "monitor",
                    m.Violation(
                        offender="node-4", kind="late", detail="x", reporter="monitor", subject="", tx_id=""
                    ),
                )
            )
        if rng.random() < 0.02:
            out.append(Message("TX", 0, "tx.bogus", "consensus", None))
    seqs = {"TX": 0, "VOTE": 0, "NODE": 0}
    renumbered = []
    for msg in out:
        seqs[msg.stream] += 1
        renumbered.append(
            Message(
                msg.stream,
                seqs[msg.stream],
                msg.subject,
                msg.sender,
                msg.payload,
                f"{msg.stream}.{seqs[msg.stream]}",
                msg.envelope_raw,
            )
        )
    return renumbered


def chunks(msgs: list[Message], rng: random.Random) -> list[list[Message]]:
    """Runs of one stream cut into random batch sizes, with some batches delivered twice and some
    redelivered batches overlapping the next (as after a crash between commit and ack)."""
    out: list[list[Message]] = []
    i = 0
    while i < len(msgs):
        stream = msgs[i].stream
        size = rng.choice([1, 2, 5, 17, 64, 300])
        batch = []
        while i < len(msgs) and msgs[i].stream == stream and len(batch) < size:
            batch.append(msgs[i])
            i += 1
        out.append(batch)
        if rng.random() < 0.15:
            out.append(list(batch))  # redelivered whole
    return out


STATE_QUERIES = {
    "transactions": """SELECT id, state, key_id, scheme, network, recipient, amount, fee_rate, fee, memo,
        requested_by, idempotency_key, unsigned_tx, txid, signed_tx, attempt, block_height, confirmations,
        reasons, last_stream_seq FROM transactions ORDER BY id""",
    "transitions": """SELECT tx_id, from_state, to_state, event, detail, stream, stream_seq
        FROM transaction_transitions ORDER BY id""",
    "rounds": """SELECT round_id, tx_id, threshold, total_nodes, state, approvals, rejections, certificate,
        closed_at IS NULL AS open FROM voting_rounds ORDER BY round_id""",
    "votes": """SELECT round_id, tx_id, node_id, approve, reasons, envelope, stream_seq
        FROM votes ORDER BY id""",
    "presig": """SELECT presig_id, scheme, node_id, tx_id, session_id, attempt
        FROM presignature_usage ORDER BY 1""",
    "audit": """SELECT actor, action, entity_type, entity_id, details, stream, stream_seq
        FROM audit_log ORDER BY id""",
    "positions": "SELECT consumer, stream, last_seq FROM stream_positions ORDER BY 1, 2",
}


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {k: [tuple(r) for r in await conn.fetch(q)] for k, q in STATE_QUERIES.items()}


def brief(o: Outcome) -> tuple[str, str, bool]:
    return o.status, o.detail, o.violation is not None


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_batches_equal_batches_of_one(two_databases: tuple[str, str], seed: int) -> None:
    msgs = scenario(seed)
    batches = chunks(msgs, random.Random(seed))
    one = await asyncpg.connect(two_databases[0])
    many = await asyncpg.connect(two_databases[1])
    try:
        expected: list[tuple[str, str, bool]] = []
        got: list[tuple[str, str, bool]] = []
        for batch in batches:
            for msg in batch:
                (alone,) = await record(one, [msg])
                expected.append(brief(alone))
            outcomes = await record(many, batch)
            assert len(outcomes) == len(batch)
            got.extend(brief(o) for o in outcomes)
        assert got == expected
        statuses = {s for s, _, _ in got}
        assert {"applied", "replay", "refused", "duplicate"} <= statuses
        a, b = await snapshot(one), await snapshot(many)
        for table in STATE_QUERIES:
            assert a[table] == b[table], table
        assert await verify_chain(many) == (True, None)
        # audit ids follow stream order within each stream
        for stream in ("TX", "VOTE"):
            seqs = [
                r["stream_seq"]
                for r in await many.fetch(
                    "SELECT stream_seq FROM audit_log WHERE stream = $1 ORDER BY id", stream
                )
            ]
            assert seqs == sorted(seqs)
    finally:
        await one.close()
        await many.close()


async def test_batch_with_replay_and_illegal_transition_in_the_middle(fresh_database_url: str) -> None:
    s = Streams()
    a, b = "tx-a", "tx-b"
    s.tx("requested", a, requested(a), "intake")
    s.tx("voting", a, m.TxVoting(tx_id=a, round_id=a, threshold=3, total_nodes=5))
    s.tx("requested", b, requested(b), "intake")
    s.tx("signed", b, m.TxSigned(tx_id=b, txid="00" * 32, signed_tx=b"x", attempt=1))  # illegal
    s.tx("requested", a, requested(a), "intake")  # replay
    s.tx("voting", b, m.TxVoting(tx_id=b, round_id=b, threshold=3, total_nodes=5))
    s.tx("approved", a, m.TxApproved(tx_id=a, round_id=a, certificate=[b"1", b"2", b"3"]))
    conn = await asyncpg.connect(fresh_database_url)
    try:
        outcomes = await record(conn, s.log)
        assert [o.status for o in outcomes] == [
            "applied", "applied", "applied", "refused", "replay", "applied", "applied",
        ]  # fmt: skip
        assert outcomes[3].violation is not None and outcomes[3].violation.offender == "consensus"
        assert "illegal transition pending -> signed" in outcomes[3].detail
        states = dict(await conn.fetch("SELECT id, state FROM transactions"))
        assert states == {a: "approved", b: "voting"}
        audit = await conn.fetch("SELECT id, action, entity_id, stream_seq FROM audit_log ORDER BY id")
        assert [(r["action"], r["entity_id"], r["stream_seq"]) for r in audit] == [
            ("tx.requested", a, 1), ("tx.voting", a, 2), ("tx.requested", b, 3), ("refused", b, 4),
            ("tx.voting", b, 6), ("tx.approved", a, 7),
        ]  # fmt: skip
        assert [o.audit_id for o in outcomes if o.audit_id] == [r["id"] for r in audit]
        assert await conn.fetchval("SELECT last_seq FROM stream_positions WHERE stream = 'TX'") == 7
        # the same batch again (redelivered after a crash before the ack): nothing changes
        again = await record(conn, s.log)
        assert {o.status for o in again} == {"duplicate"}
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == len(audit)
        assert await verify_chain(conn) == (True, None)
    finally:
        await conn.close()


async def test_a_batch_overlapping_the_stored_position(fresh_database_url: str) -> None:
    """A redelivered batch that starts before the stored position (other batch boundaries than the
    first delivery): the messages already applied are duplicates, the rest applied, the position is the
    batch's last sequence."""
    s = Streams()
    for tx in ("o-1", "o-2", "o-3", "o-4", "o-5"):
        s.tx("requested", tx, requested(tx), "intake")
    conn = await asyncpg.connect(fresh_database_url)
    try:
        assert [o.status for o in await record(conn, s.log[:3])] == ["applied"] * 3
        outcomes = await record(conn, s.log[1:])
        assert [o.status for o in outcomes] == ["duplicate", "duplicate", "applied", "applied"]
        assert await conn.fetchval("SELECT last_seq FROM stream_positions WHERE stream = 'TX'") == 5
        assert await conn.fetchval("SELECT count(*) FROM transactions") == 5
        assert await conn.fetchval("SELECT count(*) FROM audit_log") == 5
        (again,) = await record(conn, s.log[4:])
        assert again.status == "duplicate"
        assert await verify_chain(conn) == (True, None)
    finally:
        await conn.close()


class _StubBus:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self.published: list[tuple[str, Any]] = []

    async def publish(self, subject: str, struct: Any, msg_id: str) -> None:
        self.published.append((subject, struct))


async def test_constraint_failure_falls_back_to_one_message_per_transaction(
    pki: Path, fresh_database_url: str
) -> None:
    """amount 0 breaks a CHECK the simulation does not know: the batch is rolled back and recorded
    message by message; the bad message ends as record.failed, the others are applied."""
    from services.recorder.service import Recorder
    from services.runtime.config import load_config

    s = Streams()
    s.tx("requested", "good-1", requested("good-1"), "intake")
    s.tx("requested", "bad", requested("bad", amount=0), "intake")
    s.tx("requested", "good-2", requested("good-2"), "intake")
    s.tx("voting", "good-1", m.TxVoting(tx_id="good-1", round_id="good-1", threshold=3, total_nodes=5))
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        rec = Recorder(load_config("recorder", pki), _StubBus(), pool)  # type: ignore[arg-type]
        outcomes = await rec._record_until_done(s.log)
        assert [o.status for o in outcomes] == ["applied", "failed", "applied", "applied"]
        states = dict(await pool.fetch("SELECT id, state FROM transactions"))
        assert states == {"good-1": "voting", "good-2": "pending"}
        actions = [r["action"] for r in await pool.fetch("SELECT action FROM audit_log ORDER BY id")]
        assert actions == ["tx.requested", "record.failed", "tx.requested", "tx.voting"]
        assert await pool.fetchval("SELECT last_seq FROM stream_positions WHERE stream = 'TX'") == 4
        assert await verify_chain(pool) == (True, None)
    finally:
        await pool.close()


async def test_exactly_once_across_sigkill_mid_batch(
    bus_factory: Callable[..., Awaitable[Bus]], pki: Path, nats_server: str, fresh_database_url: str
) -> None:
    """Large batches (256), the recorder killed while it works through them, restarted: every event
    recorded exactly once, none lost, the chain verifies."""
    intake = await bus_factory("intake")
    consensus = await bus_factory("consensus")
    broadcaster = await bus_factory("broadcaster")
    nodes = {n: await bus_factory(n) for n in NODES[:3]}
    prefix = f"rec{uuid.uuid4().hex[:8]}"
    procs: list[subprocess.Popen[bytes]] = []
    conn = await asyncpg.connect(fresh_database_url)
    try:
        # start from the streams' current ends (earlier tests' messages are not this test's business)
        tx0 = (await intake.js.stream_info("TX")).state.last_seq
        vote0 = (await intake.js.stream_info("VOTE")).state.last_seq
        await conn.execute(
            "INSERT INTO stream_positions (consumer, stream, last_seq) VALUES ('recorder', 'TX', $1), "
            "('recorder', 'VOTE', $2)",
            tx0,
            vote0,
        )
        ids = [uuid.uuid4().hex for _ in range(150)]
        for tx in ids:
            await intake.publish(tx_subject("requested", tx), requested(tx), tx)
            await consensus.publish(
                tx_subject("voting", tx),
                m.TxVoting(tx_id=tx, round_id=tx, threshold=2, total_nodes=3),
                f"v.{tx}",
            )
            for n, bus in nodes.items():
                await bus.publish(vote_subject(tx, n), m.Vote(tx_id=tx, node=n, approve=True), f"{tx}.{n}")
            await consensus.publish(
                tx_subject("approved", tx), m.TxApproved(tx_id=tx, round_id=tx, certificate=[]), f"a.{tx}"
            )
            await broadcaster.publish(
                tx_subject("failed", tx), m.TxFailed(tx_id=tx, reason="test"), f"f.{tx}"
            )
        tx_end = (await intake.js.stream_info("TX")).state.last_seq
        vote_end = (await intake.js.stream_info("VOTE")).state.last_seq

        killed_mid = False
        for _round in range(6):  # kill it a few times while it records
            p = start_service(
                "recorder",
                pki,
                nats_server,
                fresh_database_url,
                "--durable-prefix",
                prefix,
                "--ack-wait",
                "2",
            )
            procs.append(p)
            start = int(await conn.fetchval("SELECT coalesce(sum(last_seq), 0) FROM stream_positions"))
            for _ in range(400):
                now = int(await conn.fetchval("SELECT coalesce(sum(last_seq), 0) FROM stream_positions"))
                if now > start:
                    break
                await asyncio.sleep(0.005)
            stop_service(p, signal.SIGKILL)
            pos = dict(await conn.fetch("SELECT stream, last_seq FROM stream_positions"))
            if pos["TX"] < tx_end or pos["VOTE"] < vote_end:
                killed_mid = True
        # a few replays under new stream sequences
        for tx in ids[:5]:
            await intake.publish(tx_subject("requested", tx), requested(tx), f"{tx}.replay")
            await nodes["node-1"].publish(
                vote_subject(tx, "node-1"), m.Vote(tx_id=tx, node="node-1", approve=True), f"{tx}.n1.replay"
            )
        tx_end = (await intake.js.stream_info("TX")).state.last_seq
        vote_end = (await intake.js.stream_info("VOTE")).state.last_seq
        p = start_service(
            "recorder", pki, nats_server, fresh_database_url, "--durable-prefix", prefix, "--ack-wait", "2"
        )
        procs.append(p)
        await wait_position(conn, "TX", tx_end, timeout=60)
        await wait_position(conn, "VOTE", vote_end, timeout=60)
        assert killed_mid, "the recorder was never killed in the middle of the streams"

        rows = await conn.fetch(
            "SELECT state, count(*) AS n FROM transactions WHERE id = ANY($1) GROUP BY 1", ids
        )
        assert {r["state"]: r["n"] for r in rows} == {"failed": len(ids)}
        per_tx = await conn.fetch(
            "SELECT tx_id, count(*) AS n FROM transaction_transitions WHERE tx_id = ANY($1) GROUP BY 1", ids
        )
        assert len(per_tx) == len(ids) and all(r["n"] == 4 for r in per_tx)
        assert await conn.fetchval("SELECT count(*) FROM votes WHERE tx_id = ANY($1)", ids) == 3 * len(ids)
        rounds = await conn.fetch("SELECT approvals, state FROM voting_rounds WHERE tx_id = ANY($1)", ids)
        assert len(rounds) == len(ids) and all(
            r["approvals"] == 3 and r["state"] == "approved" for r in rounds
        )
        audited = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE entity_id = ANY($1) AND stream <> ''", ids
        )
        assert audited == 7 * len(ids)  # 4 lifecycle events + 3 votes each; replays add nothing
        dup = await conn.fetchval(
            """SELECT count(*) FROM (SELECT stream, stream_seq FROM audit_log WHERE stream <> ''
               GROUP BY 1, 2 HAVING count(*) > 1) d"""
        )
        assert dup == 0
        assert await verify_chain(conn) == (True, None)
        assert stop_service(p) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                stop_service(p, signal.SIGKILL)
        await conn.close()


async def test_a_decision_waits_for_the_votes_it_counted(
    pki: Path, fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vote and transaction streams are projected apart: a rejection whose votes are not in yet
    waits for them (so no view shows it without them), and waits no longer than VOTES_WAIT_S."""
    from schemas import envelope as E
    from services.recorder import service
    from services.recorder.service import Recorder
    from services.runtime.config import load_config

    def envelope_of(node: str, tx: str) -> bytes:  # only its sender is read, as a hint
        subject = vote_subject(tx, node)
        return E.encode(E.Envelope(v=1, sender=node, type="Vote", msg_id=subject, ts_ms=1, subject=subject))

    s = Streams()
    s.tx("requested", "dec", requested("dec"), "intake")
    s.tx("voting", "dec", m.TxVoting(tx_id="dec", round_id="dec", threshold=4, total_nodes=5))
    rejected = s.tx(
        "rejected",
        "dec",
        m.TxRejected(tx_id="dec", reasons=["no"], certificate=[envelope_of(n, "dec") for n in NODES[:2]]),
    )
    votes = [s.vote("dec", n, approve=False) for n in NODES[:2]]
    pool = await asyncpg.create_pool(fresh_database_url, min_size=1, max_size=2)
    assert pool is not None
    try:
        rec = Recorder(load_config("recorder", pki), _StubBus(), pool)  # type: ignore[arg-type]
        await rec._record_until_done(s.log[:2])
        waiting = asyncio.create_task(rec._await_counted_votes([rejected]))
        await asyncio.sleep(0.15)
        assert not waiting.done()  # node-1 and node-2 are not projected yet
        await rec._record_until_done(votes[:1])
        await asyncio.sleep(0.1)
        assert not waiting.done()  # one of the two
        await rec._record_until_done(votes[1:])
        await asyncio.wait_for(waiting, 1.0)

        # a vote that never comes holds a decision no longer than VOTES_WAIT_S
        monkeypatch.setattr(service, "VOTES_WAIT_S", 0.2)
        never = m.TxRejected(tx_id="dec", reasons=["no"], certificate=[envelope_of("node-5", "dec"), b"junk"])
        t0 = asyncio.get_running_loop().time()
        await asyncio.wait_for(rec._await_counted_votes([Message("TX", 9, "tx.rejected.dec", "c", never)]), 2)
        assert 0.15 < asyncio.get_running_loop().time() - t0 < 1.0

        # votes this process committed are known without asking the database (it is not asked here:
        # these two are not in it, and the wait would take VOTES_WAIT_S if it were)
        monkeypatch.setattr(service, "VOTES_WAIT_S", 5.0)
        seen = [s.vote("mem", n, approve=False) for n in NODES[:2]]
        rec._remember_votes(seen, [Outcome("applied", ""), Outcome("replay", "")])
        known = m.TxRejected(
            tx_id="mem", reasons=["no"], certificate=[envelope_of(n, "mem") for n in NODES[:2]]
        )
        await asyncio.wait_for(
            rec._await_counted_votes([Message("TX", 10, "tx.rejected.mem", "c", known)]), 0.5
        )
    finally:
        await pool.close()
