"""The audit chain anchored outside PostgreSQL, against real NATS and PostgreSQL: the recorder (a real
process) writes a chain and signs anchors of it onto the AUDIT stream; then, as the database's superuser
(triggers off), a row is deleted, two rows swapped, a row rewritten (every later hash recomputed each
time, so the chain alone verifies again) or the tail cut off: each is found against the anchors, with the
first bad sequence. Forged anchors are ignored and reported; the stream refuses deletes, purges and
rollups even from admin; the anchors are batched (not one bus message per audit row)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import ssl
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import msgspec
import nats.js.errors
import pytest
import pytest_asyncio

import nats
from schemas import envelope as E
from schemas import messages as m
from schemas.names import STREAM_AUDIT, audit_anchor_subject, tx_subject
from services.recorder import verify_chain
from services.recorder.anchor import AuditReport, chain_of, read_anchors, verify_anchored
from services.runtime.bus import Bus
from services.runtime.db import ZERO_HASH, audit_canonical
from services.runtime.pki_files import tls_files
from services.runtime.seal import IdentityKeys, seal

from .test_recorder_projection import ROOT, requested, start_service, stop_service, wait_for, wait_position

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="session")]

ROWS = 6


@dataclass
class Anchored:
    url: str
    chain: str
    rows: int  # audit rows in all
    ids: list[int]  # the last ``ROWS`` of them, each committed and anchored on its own


async def _anchored_seqs(admin: Bus, chain: str) -> set[int]:
    """The rows anchored so far (every stored anchor of ``chain``: these tests forge none before)."""
    stored = await read_anchors(admin.js, chain)
    return {msgspec.msgpack.decode(E.decode(s.data).payload, type=m.AuditAnchor).seq for s in stored}


@pytest_asyncio.fixture(loop_scope="session")
async def anchored(
    bus_factory: Callable[..., Awaitable[Bus]], pki: Path, nats_server: str, fresh_database_url: str
) -> AsyncIterator[Anchored]:
    """A fresh database whose recorder wrote ``ROWS`` audit rows, one commit and one anchor each, then
    stopped."""
    intake = await bus_factory("intake")
    admin = await bus_factory("admin")
    proc = start_service(
        "recorder",
        pki,
        nats_server,
        fresh_database_url,
        "--durable-prefix",
        f"anc{uuid.uuid4().hex[:8]}",
        "--anchor-interval",
        "0",
    )
    conn = await asyncpg.connect(fresh_database_url)
    try:
        chain = await chain_of(conn)
        ids: list[int] = []
        # the first event: the fresh database also catches up with what earlier tests put on the stream
        for i in range(ROWS + 1):
            tx = uuid.uuid4().hex
            ack = await intake.publish(tx_subject("requested", tx), requested(tx, 10_000 + i), tx)
            await wait_position(conn, "TX", ack.seq, timeout=60)
            row = int(await conn.fetchval("SELECT max(id) FROM audit_log"))
            assert await conn.fetchval("SELECT entity_id FROM audit_log WHERE id = $1", row) == tx

            async def anchored_row(row: int = row) -> bool:
                return row in await _anchored_seqs(admin, chain)

            await wait_for(anchored_row, 30, f"anchor of row {row}")
            if i:
                ids.append(row)
        rows = int(await conn.fetchval("SELECT count(*) FROM audit_log"))
        assert stop_service(proc) == 0
        yield Anchored(fresh_database_url, chain, rows, ids)
    finally:
        if proc.poll() is None:
            stop_service(proc, signal.SIGKILL)
        await conn.close()


# ---- the database owner at work ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _owner(url: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser session whose writes fire no trigger (neither the append-only guard nor the chain)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SET session_replication_role = replica")
        yield conn
    finally:
        await conn.close()


async def _recompute_from(conn: asyncpg.Connection, first: int) -> None:
    """Re-link and re-hash every row from ``first`` on, the way the trigger would have."""
    rows = await conn.fetch(
        """SELECT id, created_at, actor, action, entity_type, entity_id, details::text AS details,
                  stream, stream_seq, hash FROM audit_log ORDER BY id"""
    )
    prev = ZERO_HASH
    for r in rows:
        if r["id"] >= first:
            digest = hashlib.sha256(prev + audit_canonical(r)).digest()
            await conn.execute(
                "UPDATE audit_log SET prev_hash = $2, hash = $3 WHERE id = $1", r["id"], prev, digest
            )
            prev = digest
        else:
            prev = bytes(r["hash"])


async def _verify(bus_factory: Callable[..., Awaitable[Bus]], url: str) -> AuditReport:
    admin = await bus_factory("admin")
    conn = await asyncpg.connect(url)
    try:
        return await verify_anchored(conn, admin)
    finally:
        await conn.close()


# ---- an honest chain ---------------------------------------------------------------------------------------


async def test_an_honest_chain_verifies_against_its_anchors(
    anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    report = await _verify(bus_factory, anchored.url)
    assert report.ok and report.first_bad is None, report
    assert report.rows == anchored.rows and report.head == anchored.ids[-1]
    assert {a.seq for a in report.anchors} >= set(anchored.ids)
    assert {a.sender for a in report.anchors} == {"recorder"}
    assert report.anchored_to == anchored.ids[-1] and report.unanchored == 0
    assert report.ignored == []


# ---- tampering found ---------------------------------------------------------------------------------------


async def test_a_deleted_row_is_found(anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]]) -> None:
    victim = anchored.ids[2]
    async with _owner(anchored.url) as conn:
        await conn.execute("DELETE FROM audit_log WHERE id = $1", victim)
        await _recompute_from(conn, victim)
        assert await verify_chain(conn) == (True, None)  # PostgreSQL alone sees nothing
    report = await _verify(bus_factory, anchored.url)
    assert not report.ok and report.first_bad == victim, report
    assert report.chain_problems == []
    assert report.anchor_problems[0].seq == victim and "missing" in report.anchor_problems[0].reason
    assert {p.seq for p in report.anchor_problems} == set(anchored.ids[2:])


async def test_reordered_rows_are_found(
    anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    first, second = anchored.ids[1], anchored.ids[3]
    async with _owner(anchored.url) as conn:
        await conn.execute(
            """UPDATE audit_log a SET created_at = b.created_at, actor = b.actor, action = b.action,
                   entity_type = b.entity_type, entity_id = b.entity_id, details = b.details,
                   stream = b.stream, stream_seq = b.stream_seq
               FROM audit_log b WHERE (a.id = $1 AND b.id = $2) OR (a.id = $2 AND b.id = $1)""",
            first,
            second,
        )
        await _recompute_from(conn, first)
        assert await verify_chain(conn) == (True, None)
        swapped = await conn.fetch(
            "SELECT entity_id FROM audit_log WHERE id = ANY($1) ORDER BY id", [first, second]
        )
    assert swapped[0]["entity_id"] != swapped[1]["entity_id"]
    report = await _verify(bus_factory, anchored.url)
    assert not report.ok and report.first_bad == first, report
    assert "does not hold the anchored hash" in report.anchor_problems[0].reason
    assert report.anchored_to == anchored.ids[0]


async def test_a_rewritten_row_with_recomputed_hashes_is_found(
    anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    victim = anchored.ids[4]
    async with _owner(anchored.url) as conn:
        await conn.execute("""UPDATE audit_log SET details = '{"amount": 1}' WHERE id = $1""", victim)
        await _recompute_from(conn, victim)
        assert await verify_chain(conn) == (True, None)
    report = await _verify(bus_factory, anchored.url)
    assert not report.ok and report.first_bad == victim, report
    assert [p.seq for p in report.anchor_problems] == anchored.ids[4:]
    assert report.anchored_to == anchored.ids[3]


async def test_a_truncated_tail_is_found(
    anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    cut = anchored.ids[3]
    async with _owner(anchored.url) as conn:
        await conn.execute("DELETE FROM audit_log WHERE id >= $1", cut)
        assert await verify_chain(conn) == (True, None)  # a shorter chain is still a chain
    report = await _verify(bus_factory, anchored.url)
    assert not report.ok and report.first_bad == cut, report
    assert all("missing" in p.reason for p in report.anchor_problems)
    assert report.head == anchored.ids[2] and report.anchored_to == anchored.ids[2]


async def test_a_row_changed_in_place_is_still_found_by_the_chain(
    anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    victim = anchored.ids[1]
    async with _owner(anchored.url) as conn:
        await conn.execute("UPDATE audit_log SET actor = 'mallory' WHERE id = $1", victim)
    report = await _verify(bus_factory, anchored.url)
    assert not report.ok and report.first_bad == victim
    assert report.chain_problems[0].id == victim


# ---- forged anchors ----------------------------------------------------------------------------------------


async def test_forged_anchors_are_ignored_and_reported(
    anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]], pki: Path
) -> None:
    """Each forgery claims a wrong hash for an honest row: trusted, it would fail the chain."""
    admin = await bus_factory("admin")
    recorder = await bus_factory("recorder")
    subject = audit_anchor_subject("recorder", anchored.chain)
    wrong = m.AuditAnchor(chain=anchored.chain, seq=anchored.ids[1], hash=b"\x01" * 32)

    def sealed(keys: IdentityKeys, on: str, anchor: m.AuditAnchor = wrong) -> bytes:
        env = seal(
            keys,
            admin.identities,
            subject=on,
            type_name="AuditAnchor",
            payload=msgspec.msgpack.encode(anchor),
            msg_id=uuid.uuid4().hex,
        )
        return E.encode(env)

    recorder_keys = IdentityKeys.load(pki, "recorder")
    forgeries = {
        "unsigned": b"\x92\x01\x02 not an envelope",
        "node-1": sealed(IdentityKeys.load(pki, "node-1"), subject),
        "admin": sealed(IdentityKeys.load(pki, "admin"), subject),
        # the recorder's own signature, but for another chain's subject, replayed onto this one
        "replayed": sealed(recorder_keys, audit_anchor_subject("recorder", "elsewhere")),
        # signed by the recorder for this subject, but naming another chain, or a hash of the wrong size
        "other-chain": sealed(recorder_keys, subject, msgspec.structs.replace(wrong, chain="elsewhere")),
        "short-hash": sealed(recorder_keys, subject, msgspec.structs.replace(wrong, hash=bytes(31))),
    }
    genuine = E.decode(sealed(recorder_keys, subject))
    forgeries["bad-signature"] = E.encode(msgspec.structs.replace(genuine, sig=bytes(64)))
    for data in forgeries.values():
        await admin.js.publish(subject, data)  # admin may publish anything; stored once acked
    # a genuine recorder anchor stays valid beside them
    held = await _hash_of(anchored.url, anchored.ids[0])
    await recorder.publish(
        subject, m.AuditAnchor(chain=anchored.chain, seq=anchored.ids[0], hash=held), uuid.uuid4().hex
    )
    report = await _verify(bus_factory, anchored.url)
    assert report.ok, report
    assert len(report.ignored) == len(forgeries), report.ignored
    reasons = sorted(i.reason.split(":")[0] for i in report.ignored)
    assert reasons == [
        "bad-payload",
        "bad-signature",
        "malformed",
        "sender-not-allowed",
        "sender-not-allowed",
        "subject-mismatch",
        "subject-mismatch",
    ]
    assert {i.sender for i in report.ignored} >= {"node-1", "admin", "recorder"}
    assert {a.sender for a in report.anchors} == {"recorder"}
    assert anchored.ids[0] in {
        a.seq for a in report.anchors if a.stream_seq > max(i.stream_seq for i in report.ignored)
    }


async def _hash_of(url: str, row: int) -> bytes:
    conn = await asyncpg.connect(url)
    try:
        return bytes(await conn.fetchval("SELECT hash FROM audit_log WHERE id = $1", row))
    finally:
        await conn.close()


# ---- the stream itself -------------------------------------------------------------------------------------


async def test_the_audit_stream_refuses_delete_purge_and_rollup_even_to_admin(
    anchored: Anchored, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    admin = await bus_factory("admin")
    info = await admin.js.stream_info(STREAM_AUDIT)
    assert info.config.deny_delete and info.config.deny_purge and not info.config.allow_rollup_hdrs
    last = info.state.last_seq
    with pytest.raises(nats.js.errors.Error):
        await admin.js.delete_msg(STREAM_AUDIT, last)
    with pytest.raises(nats.js.errors.Error):
        await admin.js.purge_stream(STREAM_AUDIT)
    with pytest.raises(nats.js.errors.Error):
        await admin.js.publish(
            audit_anchor_subject("recorder", anchored.chain), b"x", headers={"Nats-Rollup": "sub"}
        )
    info.config.deny_delete = False
    with pytest.raises(nats.js.errors.Error):
        await admin.js.update_stream(info.config)
    info.config.deny_delete, info.config.deny_purge = True, False
    with pytest.raises(nats.js.errors.Error):
        await admin.js.update_stream(info.config)
    after = await admin.js.stream_info(STREAM_AUDIT)
    assert after.state.messages == info.state.messages and after.state.last_seq == last
    assert after.config.deny_delete and after.config.deny_purge


async def _denied(pki: Path, nats_url: str, identity: str, subject: str) -> list[str]:
    """The server's errors after ``identity`` published ``subject`` (core publish, as the broker sees it)."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e))

    files = tls_files(pki, identity)
    tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    tls.load_cert_chain(str(files.cert), str(files.key))
    nc = await nats.connect(
        servers=[nats_url],
        tls=tls,
        allow_reconnect=False,
        connect_timeout=3,
        error_cb=on_error,
        inbox_prefix=f"_INBOX.{identity}",
    )
    try:
        await nc.publish(subject, b"x")
        await nc.flush(timeout=2)
        await asyncio.sleep(0.2)
    finally:
        await nc.close()
    return errors


@pytest.mark.parametrize(
    ("identity", "subject"),
    [
        ("node-1", "audit.anchor.recorder.somechain"),  # only the recorder anchors
        ("intake", "audit.anchor.intake.somechain"),  # nobody else, not even under its own name
        ("recorder", "audit.anchor.node-1.somechain"),  # the recorder only under its own name
        ("recorder", "$JS.API.STREAM.PURGE.AUDIT"),  # and it cannot manage the stream
        ("recorder", "$JS.API.STREAM.MSG.DELETE.AUDIT"),
    ],
)
async def test_the_broker_lets_only_the_recorder_anchor(
    pki: Path, nats_server: str, identity: str, subject: str
) -> None:
    errors = await _denied(pki, nats_server, identity, subject)
    assert any("permissions violation for publish" in e.lower() for e in errors), errors


async def test_the_recorder_may_anchor(pki: Path, nats_server: str) -> None:
    errors = await _denied(pki, nats_server, "recorder", "audit.anchor.recorder.somechain")
    assert errors == []


# ---- the CLI -----------------------------------------------------------------------------------------------


def _mpcw(
    pki: Path, tmp: Path, nats_url: str, database_url: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """``mpcw --data-dir D audit verify`` with a cluster.json naming the test servers."""
    d = tmp / "cluster"
    if not d.exists():
        d.mkdir()
        for entry in pki.iterdir():
            if entry.name != "cluster.json":
                (d / entry.name).symlink_to(entry)
    (d / "cluster.json").write_text(json.dumps({"nats_url": nats_url, "database_url": database_url}))
    env = {k: v for k, v in os.environ.items() if k not in ("MPCW_NATS_URL", "MPCW_DATABASE_URL")}
    return subprocess.run(
        [sys.executable, "-m", "services.mpcw", "--data-dir", str(d), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_mpcw_audit_verify_exits_non_zero_on_a_deleted_row(
    anchored: Anchored, pki: Path, tmp_path: Path, nats_server: str
) -> None:
    ok = await asyncio.to_thread(_mpcw, pki, tmp_path, nats_server, anchored.url, "audit", "verify")
    assert ok.returncode == 0, ok.stderr
    assert f"audit chain verifies: {anchored.rows} rows, anchored up to #{anchored.ids[-1]}" in ok.stdout
    victim = anchored.ids[1]
    async with _owner(anchored.url) as conn:
        await conn.execute("DELETE FROM audit_log WHERE id = $1", victim)
        await _recompute_from(conn, victim)
    bad = await asyncio.to_thread(_mpcw, pki, tmp_path, nats_server, anchored.url, "audit", "verify")
    assert bad.returncode == 1 and f"audit chain BROKEN at entry #{victim}" in bad.stderr, bad
    assert f"anchored row #{victim} is missing" in bad.stderr
    # without the anchors, the rewritten chain passes: the anchors are the defence
    blind = await asyncio.to_thread(
        _mpcw, pki, tmp_path, nats_server, anchored.url, "audit", "verify", "--no-anchors"
    )
    assert blind.returncode == 0 and "PostgreSQL only" in blind.stdout


# ---- cost --------------------------------------------------------------------------------------------------


async def test_anchors_are_batched_not_one_per_row(
    bus_factory: Callable[..., Awaitable[Bus]], pki: Path, nats_server: str, fresh_database_url: str
) -> None:
    """200 lifecycle events (and whatever earlier tests left on the stream) recorded with the default
    interval (1 s): a handful of anchors, the last one on the head within about a second of the last
    commit."""
    intake = await bus_factory("intake")
    admin = await bus_factory("admin")
    proc = start_service(
        "recorder", pki, nats_server, fresh_database_url, "--durable-prefix", f"anb{uuid.uuid4().hex[:8]}"
    )
    conn = await asyncpg.connect(fresh_database_url)
    try:
        chain = await chain_of(conn)
        txs = [uuid.uuid4().hex for _ in range(200)]
        acks = await asyncio.gather(
            *(intake.publish(tx_subject("requested", t), requested(t), t) for t in txs)
        )
        await wait_position(conn, "TX", max(a.seq for a in acks), timeout=60)
        assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE entity_id = ANY($1)", txs) == 200
        head = int(await conn.fetchval("SELECT max(id) FROM audit_log"))

        async def head_anchored() -> bool:
            return head in await _anchored_seqs(admin, chain)

        await wait_for(head_anchored, 10, "the head anchored")
        anchors = await _anchored_seqs(admin, chain)
        assert len(anchors) <= 10, sorted(anchors)  # ~one a second while it records, not one a row
        assert stop_service(proc) == 0
    finally:
        if proc.poll() is None:
            stop_service(proc, signal.SIGKILL)
        await conn.close()
