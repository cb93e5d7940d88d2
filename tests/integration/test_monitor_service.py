"""The monitor as a real process: heartbeats to node_status (liveness, down after silence, clocks cannot
move it backwards), violations recorded, and the fifth counting violation within 24 h bans the offender in
node_status and KV ``bans``; reports a node files against another without evidence never ban."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from schemas import messages as m
from schemas.envelope import BusRejection
from schemas.kv import BanRecord
from schemas.names import BUCKET_BANS, heartbeat_subject, unban_subject, violation_subject
from services.runtime.bus import Bus
from services.runtime.signed_kv import SignedKV
from tests.integration.test_recorder_projection import start_service, stop_service, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90), pytest.mark.asyncio(loop_scope="session")]


@pytest_asyncio.fixture
async def monitor(
    pki: Path, nats_server: str, fresh_database_url: str, tmp_path: Path
) -> AsyncIterator[asyncpg.Connection]:
    log = tmp_path / "monitor.log"
    proc = start_service(
        "monitor",
        pki,
        nats_server,
        fresh_database_url,
        "--durable-prefix",
        f"mon{uuid.uuid4().hex[:8]}",
        log=log,
    )
    conn = await asyncpg.connect(fresh_database_url)
    yield conn
    await conn.close()
    assert stop_service(proc) == 0, log.read_text()[-2000:]


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_heartbeats_and_liveness(
    monitor: asyncpg.Connection, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    n1 = await bus_factory("node-1")
    n2 = await bus_factory("node-2")
    t = now_ms()
    await n1.publish(
        heartbeat_subject("node-1"),
        m.Heartbeat(node="node-1", ts_ms=t, version="0.1", detail={"nonces": 42}),
        f"hb.1.{t}",
    )
    # node-2 was last heard of a minute ago: the sweep marks it down
    await n2.publish(heartbeat_subject("node-2"), m.Heartbeat(node="node-2", ts_ms=t - 60_000), f"hb.2.{t}")
    # a heartbeat dated in the future counts as now; an older one does not move the clock back
    await n1.publish(
        heartbeat_subject("node-1"), m.Heartbeat(node="node-1", ts_ms=t - 10_000), f"hb.1.old.{t}"
    )

    async def seen() -> bool:
        return bool(
            await monitor.fetchval("SELECT count(*) FROM node_status WHERE node_id IN ('node-1', 'node-2')")
            == 2
        )

    await wait_for(seen, 20, "heartbeats")
    r1 = await monitor.fetchrow("SELECT * FROM node_status WHERE node_id = 'node-1'")
    assert r1["status"] == "up" and r1["version"] == "0.1"
    assert abs(r1["last_heartbeat"].timestamp() * 1000 - t) < 5
    assert msgspec.json.decode(r1["detail"]) == {"ready": True, "nonces": 42}

    async def node2_down() -> bool:
        return bool(
            await monitor.fetchval("SELECT status FROM node_status WHERE node_id = 'node-2'") == "down"
        )

    await wait_for(node2_down, 20, "node-2 marked down")
    assert await monitor.fetchval("SELECT status FROM node_status WHERE node_id = 'node-1'") == "up"


async def _not_none(value: Awaitable[Any]) -> bool:
    return await value is not None


async def test_five_counting_violations_ban(
    monitor: asyncpg.Connection, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    consensus = await bus_factory("consensus")
    n1 = await bus_factory("node-1")
    n3 = await bus_factory("node-3")
    admin = await bus_factory("admin")
    offender = f"node-{random.randint(900_000, 999_999)}"  # not a member: its ban touches no other suite
    framed = f"node-{random.randint(800_000, 899_999)}"
    bans = await admin.kv(BUCKET_BANS)
    try:
        # node-1 files ten evidence-free reports against `framed`: all kept, none counts, no ban
        for i in range(10):
            v = m.Violation(offender=framed, kind="bad-vote", detail=f"made up {i}", reporter="node-1")
            await n1.publish(violation_subject(framed), v, f"frame.{framed}.{i}")
        # a report claiming to come from consensus but sent by node-1 does not count either
        v = m.Violation(offender=framed, kind="equivocation", detail="forged reporter", reporter="consensus")
        await n1.publish(violation_subject(framed), v, f"frame.{framed}.forged")

        # four counting violations of `offender`: no ban yet
        for i in range(4):
            v = m.Violation(
                offender=offender,
                kind="invalid-partial-sig",
                detail=f"psig {i}",
                reporter="consensus",
                tx_id="t1",
            )
            await consensus.publish(violation_subject(offender), v, f"v.{offender}.{i}")

        async def rows(node: str, n: int) -> bool:
            got = await monitor.fetchval("SELECT count(*) FROM byzantine_violations WHERE node_id = $1", node)
            return bool(got >= n)

        await wait_for(lambda: rows(offender, 4), 20, "four violations")
        await wait_for(lambda: rows(framed, 11), 20, "framing reports")
        assert await bans.get(offender) is None and await bans.get(framed) is None
        st = await monitor.fetchrow("SELECT status, violations FROM node_status WHERE node_id = $1", offender)
        assert st["violations"] == 4 and st["status"] != "banned"
        assert (
            await monitor.fetchval(
                "SELECT count(*) FROM byzantine_violations WHERE node_id = $1 AND counts", framed
            )
            == 0
        )

        # the fifth, a bus rejection filed by a service
        rej = BusRejection(
            offender=offender,
            kind="sender-not-allowed",
            detail="published outside its rights",
            reporter="consensus",
            subject="vote.x.node-2",
        )
        await consensus.publish(violation_subject(offender), rej, f"v.{offender}.rej")

        async def banned() -> bool:
            return await bans.get(offender) is not None

        await wait_for(banned, 20, "ban in KV")
        signed = await SignedKV(admin, bans).get(offender, BanRecord)
        assert signed is not None and signed.sender == "monitor"  # signed by the monitor: consensus checks it
        ban = signed.value
        assert ban.node == offender and ban.violations == 5
        assert abs(ban.until_ms - (now_ms() + 24 * 3600 * 1000)) < 60_000
        st = await monitor.fetchrow(
            "SELECT status, banned_until FROM node_status WHERE node_id = $1", offender
        )
        assert st["status"] == "banned" and st["banned_until"].timestamp() > time.time() + 23 * 3600

        # the operator lifts the ban (``mpcw node unban``): status up, a signed record that ended now in KV
        await admin.publish(
            unban_subject(offender), m.NodeUnban(node=offender, reason="false positive"), f"unban.{offender}"
        )

        async def lifted() -> bool:
            got = await SignedKV(admin, bans).get(offender, BanRecord)
            return (
                got is not None and got.value.reason.startswith("lifted") and got.value.until_ms <= now_ms()
            )

        await wait_for(lifted, 20, "lifted ban in KV")
        lifted_rec = await SignedKV(admin, bans).get(offender, BanRecord)
        assert lifted_rec is not None and lifted_rec.sender == "monitor"
        st = await monitor.fetchrow(
            "SELECT status, banned_until, unbanned_at, violations FROM node_status WHERE node_id = $1",
            offender,
        )
        assert st["status"] != "banned" and st["banned_until"] is None and st["unbanned_at"] is not None
        # only violations after the unban count: the next one does not ban again at once
        v = m.Violation(offender=offender, kind="bad-vote", detail="after unban", reporter="consensus")
        await consensus.publish(violation_subject(offender), v, f"v.{offender}.after")
        await wait_for(lambda: rows(offender, 6), 20, "sixth violation")
        st = await monitor.fetchrow("SELECT status, violations FROM node_status WHERE node_id = $1", offender)
        assert st["status"] != "banned" and st["violations"] == 1
        still = await SignedKV(admin, bans).get(offender, BanRecord)
        assert still is not None and still.value.until_ms <= now_ms()

        # evidence: a node-to-node report whose evidence envelope is signed by the accused counts
        evidence = n3.seal("vote.abc.node-3", m.Vote(tx_id="abc", node="node-3", approve=True), "ev1")
        rej3 = BusRejection(
            offender="node-3",
            kind="bad-payload",
            detail="x",
            reporter="node-1",
            subject="vote.abc.node-3",
            evidence=evidence,
        )
        await n1.publish(violation_subject("node-3"), rej3, f"ev.{uuid.uuid4().hex}")

        async def counted() -> Any:
            return await monitor.fetchval(
                """SELECT counts FROM byzantine_violations
                   WHERE node_id = 'node-3' AND reporter = 'node-1' AND kind = 'bad-payload'"""
            )

        # (other suites leave node-3 rows too: wait for this one)
        await wait_for(lambda: _not_none(counted()), 20, "evidence report")
        assert await counted() is True
    finally:
        for name in (offender, framed):
            if await bans.get(name) is not None:
                await bans.delete(name)


async def test_timeouts_never_count_and_evidence_is_kept(
    monitor: asyncpg.Connection, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    consensus = await bus_factory("consensus")
    slow = f"node-{random.randint(700_000, 799_999)}"
    signing = consensus.seal(f"tx.signing.{slow}", m.Heartbeat(node="consensus", ts_ms=now_ms()), "ev")
    for i in range(6):  # more than BAN_AFTER: a slow or down node is not banned for it
        v = m.Violation(
            offender=slow, kind="timeout", detail=f"attempt {i}", reporter="consensus", evidence=signing
        )
        await consensus.publish(violation_subject(slow), v, f"to.{slow}.{i}")

    async def rows() -> bool:
        got = await monitor.fetchval("SELECT count(*) FROM byzantine_violations WHERE node_id = $1", slow)
        return bool(got >= 6)

    await wait_for(rows, 20, "six timeout reports")
    got = await monitor.fetch("SELECT counts, evidence FROM byzantine_violations WHERE node_id = $1", slow)
    assert all(r["counts"] is False and bytes(r["evidence"]) == signing for r in got)
    st = await monitor.fetchrow("SELECT status FROM node_status WHERE node_id = $1", slow)
    assert st is None or st["status"] != "banned"
