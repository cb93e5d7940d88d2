"""The intake as a real process (Sanic) against real NATS, PostgreSQL, the devchain process and a recorder
process: every bad input answered with the right 4xx and nothing published, API keys, idempotency, UTXO
reservations released on rejection, and a valid spend that publishes exactly one ``TxRequested`` a signer
accepts (``core.policy``) spending the funded wallet UTXOs."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio

from core.policy import check_spend
from schemas import messages as m
from schemas.kv import KeyRecord, key_record_key, key_result_key
from schemas.names import BUCKET_KEYS, tx_subject
from schemas.rest import Policy
from services.localcluster.embedded import free_port
from services.runtime.bus import Bus
from services.runtime.db import new_api_key, revoke_api_key, store_api_key
from services.runtime.signed_kv import SignedKV
from tests.integration.test_recorder_projection import start_service, stop_service, wait_for
from tests.unit.frost_test_dealer import deal
from wallet.threshold_account import ThresholdAccount
from wallet.transaction import outpoints_of, parse_transaction

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="session")]

ROOT = Path(__file__).resolve().parents[2]
MAINNET_ADDR = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
REGTEST_ADDR = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


@pytest.fixture
def devchain(tmp_path: Path) -> Any:
    d = tmp_path / "devchain"
    d.mkdir()
    log = open(tmp_path / "devchain.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.devchain", "--data-dir", str(d), "--port", "0"],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url_file = d / "devchain.url"
    deadline = time.monotonic() + 20
    while not url_file.exists():
        assert proc.poll() is None, (tmp_path / "devchain.log").read_text()
        assert time.monotonic() < deadline, "devchain did not start"
        time.sleep(0.05)
    yield url_file.read_text().strip()
    stop_service(proc)


async def write_key(
    bus_factory: Callable[..., Awaitable[Bus]], record: KeyRecord, stated: KeyRecord | None = None
) -> None:
    """``record`` as consensus writes it, and every node's signed statement of ``stated`` (default: the
    record itself, which proves it)."""
    statement = (stated or record).statement()
    for node in record.nodes:
        keys = await SignedKV.open(await bus_factory(node), BUCKET_KEYS)
        await keys.put(key_result_key(record.scheme, record.key_id, node), statement)
    consensus = await SignedKV.open(await bus_factory("consensus"), BUCKET_KEYS)
    await consensus.put(key_record_key(record.scheme, record.key_id), record)


async def remove_key(bus_factory: Callable[..., Awaitable[Bus]], record: KeyRecord) -> None:
    keys = await (await bus_factory("admin")).kv(BUCKET_KEYS)
    await keys.delete(key_record_key(record.scheme, record.key_id))
    for node in record.nodes:
        await keys.delete(key_result_key(record.scheme, record.key_id, node))


def dealt_key_record() -> KeyRecord:
    dealt = deal(5, 4, random.Random(7))
    return KeyRecord(
        key_id="default",
        scheme="frost",
        threshold_pubkey=dealt.thresh_pk,
        pubshares=dealt.pubshares,
        chain_code=bytes(range(32)),
        nodes=[f"node-{i}" for i in range(1, 6)],
        n=5,
        t=4,
        session_id="test-dealer",
        hostpubkeys=[bytes([2]) + bytes([i]) * 32 for i in range(1, 6)],
    )


@pytest_asyncio.fixture
async def wallet_key(bus_factory: Callable[..., Awaitable[Bus]]) -> AsyncIterator[KeyRecord]:
    """The proven public record of a 4-of-5 key in KV ``keys`` (a test dealer's; a real DKG's if one
    exists)."""
    admin = await bus_factory("admin")
    keys = await SignedKV.open(admin, BUCKET_KEYS)
    existing = await keys.get(key_record_key("frost", "default"), KeyRecord)
    if existing is not None:
        yield existing.value
        return
    record = dealt_key_record()
    await write_key(bus_factory, record)
    yield record
    await remove_key(bus_factory, record)  # leave the bucket as found: other suites run their own DKG


class Api:
    """The intake over HTTP; ``http`` reads with a viewer key, ``spend`` writes with the operator key."""

    def __init__(self, url: str, key: str, viewer_key: str, database_url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=15, headers={"X-API-Key": viewer_key})
        self.key = key
        self.viewer_key = viewer_key
        self.database_url = database_url

    async def spend(self, body: Any, key: str | None = "default", raw: bytes | None = None) -> httpx.Response:
        headers = {"Content-Type": "application/json", "X-API-Key": ""}  # "": no key at all
        if key == "default":
            headers["Authorization"] = f"Bearer {self.key}"
        elif key is not None:
            headers["X-API-Key"] = key
        content = raw if raw is not None else msgspec.json.encode(body)
        return await self.http.post("/api/v1/transactions", content=content, headers=headers)


async def start_intake(
    pki: Path, nats_url: str, database_url: str, esplora_url: str, log: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m services.intake`` on a free port, waited until ``/health`` answers: (process, its URL)."""
    port = free_port()
    proc = start_service(
        "intake", pki, nats_url, database_url, "--port", str(port), "--esplora-url", esplora_url, log=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as probe:
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if (await probe.get(f"{url}/health")).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "intake did not start"
            await asyncio.sleep(0.1)


@pytest_asyncio.fixture
async def api(
    pki: Path, nats_server: str, fresh_database_url: str, devchain: str, tmp_path: Path
) -> AsyncIterator[Api]:
    conn = await asyncpg.connect(fresh_database_url)
    _, key = new_api_key()
    _, viewer = new_api_key()
    await store_api_key(conn, key, "test operator", "operator")
    await store_api_key(conn, viewer, "test viewer", "viewer")
    await conn.close()
    log = tmp_path / "intake.log"
    proc, url = await start_intake(pki, nats_server, fresh_database_url, devchain, log)
    client = Api(url, key, viewer, fresh_database_url)
    yield client
    await client.http.aclose()
    assert stop_service(proc) == 0, log.read_text()[-2000:]
    assert key not in log.read_text(), "the API key appeared in the log"


async def tx_last_seq(bus: Bus) -> int:
    return int((await bus.js.stream_info("TX")).state.last_seq)


async def fund(devchain: str, address: str, sats: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=devchain) as c:
        r = await c.post("/dev/faucet", json={"address": address, "sats": sats})
        assert r.status_code == 200, r.text
        return dict(r.json())


READ_ROUTES = (
    "/api/v1/cluster/status",
    "/api/v1/cluster/nodes",
    "/api/v1/wallet/address",
    "/api/v1/wallet/balance",
    "/api/v1/transactions",
    f"/api/v1/transactions/{uuid.uuid4().hex}",
)


async def test_every_read_needs_a_key_of_any_role_and_revocation_holds(api: Api) -> None:
    bogus = "mpcw_000000000000_" + "x" * 43
    async with httpx.AsyncClient(base_url=str(api.http.base_url), timeout=15) as anonymous:
        for path in READ_ROUTES:
            r = await anonymous.get(path)
            assert r.status_code == 401 and "API key required" in r.json()["detail"], (path, r.text)
            r = await anonymous.get(path, headers={"X-API-Key": bogus})
            assert r.status_code == 401 and "unknown" in r.json()["detail"], (path, r.text)
            r = await anonymous.get(path, headers={"Authorization": "Bearer " + "k" * 300})
            assert r.status_code == 401, (path, r.text)
            # a key of any role reads (the answer may be 409 "no key yet" or 404, never 401/403)
            for key in (api.viewer_key, api.key):
                r = await anonymous.get(path, headers={"X-API-Key": key})
                assert r.status_code not in (401, 403), (path, r.status_code, r.text)
        # /health and /metrics stay open (liveness probes, Prometheus)
        assert (await anonymous.get("/health")).status_code == 200
        assert (await anonymous.get("/metrics")).status_code == 200

        # revoked: an operator key stops spending at once; a key not read with lately stops reading at once
        conn = await asyncpg.connect(api.database_url)
        try:
            _, operator = new_api_key()
            _, viewer = new_api_key()
            op_id = await store_api_key(conn, operator, "to revoke", "operator")
            viewer_id = await store_api_key(conn, viewer, "to revoke", "viewer")
            assert await revoke_api_key(conn, op_id) == "revoked"
            assert await revoke_api_key(conn, viewer_id) == "revoked"
            assert await revoke_api_key(conn, viewer_id) == "already"
            assert await revoke_api_key(conn, "no-such-key") == "unknown"
        finally:
            await conn.close()
        r = await api.spend({"recipient": REGTEST_ADDR, "amount_sats": 10_000}, key=operator)
        assert r.status_code == 401 and "revoked" in r.json()["detail"], r.text
        r = await anonymous.get("/api/v1/transactions", headers={"X-API-Key": viewer})
        assert r.status_code == 401 and "revoked" in r.json()["detail"], r.text


async def test_no_key_yet_answers_409(api: Api, bus_factory: Callable[..., Awaitable[Bus]]) -> None:
    admin = await bus_factory("admin")
    if await (await admin.kv(BUCKET_KEYS)).get(key_record_key("frost", "default")) is not None:
        pytest.skip("a key already exists in this cluster")
    r = await api.http.get("/api/v1/wallet/address")
    assert r.status_code == 409 and "mpcw dkg start" in r.json()["detail"]
    before = await tx_last_seq(admin)
    r = await api.spend({"recipient": REGTEST_ADDR, "amount_sats": 10_000})
    assert r.status_code == 409
    assert await tx_last_seq(admin) == before
    status = (await api.http.get("/api/v1/cluster/status")).json()
    assert status["key"] == {"present": False} and status["n"] == 5


@pytest.mark.parametrize(
    "swap",
    [{"threshold_pubkey": bytes([2]) + bytes(range(1, 33))}, {"chain_code": bytes(32)}, {"t": 1}],
    ids=["threshold-key", "chain-code", "threshold"],
)
async def test_a_swapped_key_record_is_refused(
    api: Api, bus_factory: Callable[..., Awaitable[Bus]], swap: dict[str, Any]
) -> None:
    """Consensus (the coordinator, as the record's writer) writes a key other than the one every node
    stated: intake derives no address from it and answers every wallet route with the reason."""
    admin = await bus_factory("admin")
    if await (await admin.kv(BUCKET_KEYS)).get(key_record_key("frost", "default")) is not None:
        pytest.skip("a key already exists in this cluster")
    stated = dealt_key_record()
    swapped = msgspec.structs.replace(stated, **swap)
    await write_key(bus_factory, swapped, stated=stated)
    try:
        for route in ("/api/v1/wallet/address", "/api/v1/wallet/balance"):
            r = await api.http.get(route)
            assert r.status_code == 409, (route, r.text)
            assert r.json()["error"] == "key not proven" and "refused" in r.json()["detail"], r.text
        status = (await api.http.get("/api/v1/cluster/status")).json()
        assert status["key"] == {"present": False}
        before = await tx_last_seq(admin)
        r = await api.spend({"recipient": REGTEST_ADDR, "amount_sats": 10_000})
        assert r.status_code == 409 and await tx_last_seq(admin) == before
        # the record every node stated, written over it: the same intake now takes it
        consensus = await SignedKV.open(await bus_factory("consensus"), BUCKET_KEYS)
        await consensus.put(key_record_key("frost", "default"), stated)
        r = await api.http.get("/api/v1/wallet/address")
        assert r.status_code == 200, r.text
        account = ThresholdAccount(stated.threshold_pubkey, stated.chain_code, "regtest")
        assert r.json()["address"] == account.address((0, 0))
    finally:
        await remove_key(bus_factory, stated)


async def test_bad_requests_publish_nothing(
    api: Api, wallet_key: KeyRecord, devchain: str, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    admin = await bus_factory("admin")
    address = (await api.http.get("/api/v1/wallet/address")).json()["address"]
    account = ThresholdAccount(wallet_key.threshold_pubkey, wallet_key.chain_code, "regtest")
    assert address == account.address((0, 0)) and address.startswith("bcrt1p")
    await fund(devchain, address, 100_000)
    before = await tx_last_seq(admin)
    good = {"recipient": REGTEST_ADDR, "amount_sats": 10_000}
    bogus_key = "mpcw_000000000000_" + "x" * 43

    cases: list[tuple[str, Awaitable[httpx.Response], int, str]] = [
        ("no api key", api.spend(good, key=None), 401, "API key required"),
        ("unknown api key", api.spend(good, key=bogus_key), 401, "unknown"),
        ("viewer key", api.spend(good, key=api.viewer_key), 403, "viewer"),
        ("malformed json", api.spend(None, raw=b'{"recipient": '), 400, "JSON"),
        ("empty body", api.spend(None, raw=b""), 400, "empty"),
        ("not an object", api.spend([1, 2]), 422, "object"),
        ("unknown field", api.spend({**good, "sneaky": 1}), 422, "sneaky"),
        ("negative amount", api.spend({**good, "amount_sats": -5}), 422, "amount_sats"),
        ("zero amount", api.spend({**good, "amount_sats": 0}), 422, "amount_sats"),
        ("absurd amount", api.spend({**good, "amount_sats": 21_000_001 * 10**8}), 422, "amount_sats"),
        ("float amount", api.spend({**good, "amount_sats": 1.5}), 422, "amount_sats"),
        ("string amount", api.spend({**good, "amount_sats": "10000"}), 422, "amount_sats"),
        ("missing recipient", api.spend({"amount_sats": 10_000}), 422, "recipient"),
        ("fee rate below 1", api.spend({**good, "fee_rate": 0.5}), 422, "fee_rate"),
        ("fee rate absurd", api.spend({**good, "fee_rate": 1e9}), 422, "fee_rate"),
        ("fee rate over policy", api.spend({**good, "fee_rate": 900.0}), 422, "fee_rate"),
        ("unknown scheme", api.spend({**good, "scheme": "ecdsa"}), 422, "scheme"),
        ("scheme with a trailing newline", api.spend({**good, "scheme": "frost\n"}), 422, "scheme"),
        ("NUL in memo", api.spend({**good, "memo": "a\x00b"}), 422, "memo"),
        ("newline in memo", api.spend({**good, "memo": "a\nb"}), 422, "memo"),
        ("NUL in idempotency key", api.spend({**good, "idempotency_key": "k\x00"}), 422, "idempotency_key"),
        (
            "non-ASCII api key",
            api.http.post("/api/v1/transactions", json=good, headers={"X-API-Key": b"mpcw_\xff\xfe"}),
            401,
            "unknown",
        ),
        ("mainnet address", api.spend({**good, "recipient": MAINNET_ADDR}), 400, "wrong network"),
        ("bad checksum", api.spend({**good, "recipient": REGTEST_ADDR[:-1] + "q"}), 400, "recipient"),
        ("garbage address", api.spend({**good, "recipient": "not-an-address-at-all"}), 400, "recipient"),
        ("dust amount", api.spend({**good, "amount_sats": 100}), 422, "dust"),
        ("insufficient funds", api.spend({**good, "amount_sats": 10**8}), 409, "needed"),
    ]
    for what, call, status, needle in cases:
        r = await call
        assert r.status_code == status, f"{what}: {r.status_code} {r.text}"
        body = r.json()
        assert needle.lower() in (body["error"] + " " + body["detail"]).lower(), f"{what}: {body}"
    r = await api.spend({**good, "amount_sats": 10**8})
    assert r.json()["needed_sats"] > 10**8 and r.json()["available_sats"] >= 100_000

    assert await tx_last_seq(admin) == before, "a rejected request published something"
    # read-side validation
    assert (await api.http.get("/api/v1/transactions/not%20valid!")).status_code == 400
    assert (await api.http.get(f"/api/v1/transactions/{uuid.uuid4().hex}%0A")).status_code == 400
    assert (await api.http.get(f"/api/v1/transactions/{uuid.uuid4().hex}")).status_code == 404
    assert (await api.http.get("/api/v1/transactions?state=bogus")).status_code == 400
    assert (await api.http.get("/api/v1/transactions?limit=0")).status_code == 400
    assert (await api.http.get("/api/v1/transactions?offset=x")).status_code == 400


async def test_spend_idempotency_and_reservations(
    api: Api,
    wallet_key: KeyRecord,
    devchain: str,
    bus_factory: Callable[..., Awaitable[Bus]],
    pki: Path,
    nats_server: str,
    fresh_database_url: str,
) -> None:
    admin = await bus_factory("admin")
    consensus = await bus_factory("consensus")
    account = ThresholdAccount(wallet_key.threshold_pubkey, wallet_key.chain_code, "regtest")
    address = account.address((0, 0))
    # the wallet may hold coins from earlier tests on this chain; start from what it has
    balance0 = (await api.http.get("/api/v1/wallet/balance")).json()
    funded = await fund(devchain, address, 200_000)
    bal = (await api.http.get("/api/v1/wallet/balance")).json()
    assert bal["confirmed_sats"] == balance0["confirmed_sats"] + 200_000 and bal["reserved_sats"] == 0
    spendable = bal["spendable_sats"]

    before = await tx_last_seq(admin)
    body = {"recipient": REGTEST_ADDR, "amount_sats": spendable - 20_000, "idempotency_key": "order-1"}
    r = await api.spend(body)
    assert r.status_code == 202, r.text
    view = r.json()
    tx_id = view["id"]
    assert view["state"] == "pending" and view["amount_sats"] == body["amount_sats"]
    assert await tx_last_seq(admin) == before + 1

    # the one message: a TxRequested a signer accepts, spending the wallet's UTXOs
    raw = await admin.js.get_last_msg("TX", tx_subject("requested", tx_id))
    env, req = admin.open(raw.data, raw.subject, m.REGISTRY)
    assert env.sender == "intake" and env.msg_id == tx_id and isinstance(req, m.TxRequested)
    assert req.recipient == REGTEST_ADDR and req.amount == body["amount_sats"] and req.network == "regtest"
    check = check_spend(req, Policy(), account, 0)
    assert check.ok, check.reasons
    tx = parse_transaction(req.unsigned_tx)
    spent = {(op.txid, op.vout) for op in outpoints_of(tx)}
    assert (funded["txid"], funded["vout"]) in spent
    assert all(i.derivation in ([0, 0], [1, 0]) for i in req.inputs)

    # the same idempotency key: the same transaction, 200, nothing new published
    r2 = await api.spend(body)
    assert r2.status_code == 200 and r2.json()["id"] == tx_id
    # the same key for a different request: refused
    r3 = await api.spend({**body, "amount_sats": 30_000})
    assert r3.status_code == 409 and "idempotency" in r3.json()["error"]
    assert await tx_last_seq(admin) == before + 1

    # everything is reserved by the in-flight spend: a second spend cannot reuse those outpoints
    r4 = await api.spend({"recipient": REGTEST_ADDR, "amount_sats": 10_000})
    assert r4.status_code == 409, r4.text
    assert r4.json()["reserved_sats"] >= body["amount_sats"]
    bal = (await api.http.get("/api/v1/wallet/balance")).json()
    assert bal["spendable_sats"] == 0 and bal["reserved_sats"] == spendable
    assert await tx_last_seq(admin) == before + 1

    # GET shows it (from the intake's own record until the recorder projects it)
    got = await api.http.get(f"/api/v1/transactions/{tx_id}")
    assert got.status_code == 200 and got.json()["state"] == "pending"
    listed = (await api.http.get("/api/v1/transactions?state=pending&limit=500")).json()["transactions"]
    assert tx_id in [t["id"] for t in listed]

    # consensus rejects it; the recorder projects the rejection and releases the reservation
    recorder = start_service(
        "recorder", pki, nats_server, fresh_database_url, "--durable-prefix", f"rec{uuid.uuid4().hex[:8]}"
    )
    try:
        await consensus.publish(
            tx_subject("rejected", tx_id),
            m.TxRejected(tx_id=tx_id, reasons=["over the daily limit"]),
            f"r.{tx_id}",
        )

        async def rejected() -> bool:
            v = (await api.http.get(f"/api/v1/transactions/{tx_id}")).json()
            return bool(v["state"] == "rejected")

        await wait_for(rejected, 30, "rejection projected")
        v = (await api.http.get(f"/api/v1/transactions/{tx_id}")).json()
        assert [t["state"] for t in v["timeline"]] == ["pending", "rejected"]
        assert v["reasons"] == ["over the daily limit"] and v["txid"] is None
        bal = (await api.http.get("/api/v1/wallet/balance")).json()
        assert bal["reserved_sats"] == 0 and bal["spendable_sats"] == spendable
        r5 = await api.spend({"recipient": REGTEST_ADDR, "amount_sats": 10_000})
        assert r5.status_code == 202, r5.text
        assert await tx_last_seq(admin) == before + 3  # tx.rejected + the new request
    finally:
        assert stop_service(recorder, signal.SIGTERM) == 0


async def _transition(conn: asyncpg.Connection, tx: str, frm: str | None, to: str, detail: str = "") -> int:
    """A state change as the recorder projects it (the event stream reads the projection)."""
    return int(
        await conn.fetchval(
            """INSERT INTO transaction_transitions (tx_id, from_state, to_state, event, detail)
               VALUES ($1, $2, $3, $4, $5) RETURNING id""",
            tx,
            frm,
            to,
            f"tx.{to}",
            detail,
        )
    )


async def _read_events(
    r: httpx.Response, count: int, timeout: float = 10.0
) -> list[tuple[int, dict[str, Any]]]:
    """The next ``count`` events of an open event stream: (id, data)."""
    out: list[tuple[int, dict[str, Any]]] = []
    event_id: int | None = None

    async def read() -> None:
        nonlocal event_id
        async for line in r.aiter_lines():
            if line.startswith("id: "):
                event_id = int(line[4:])
            elif line.startswith("data: "):
                assert event_id is not None
                out.append((event_id, msgspec.json.decode(line[6:])))
                if len(out) == count:
                    return

    await asyncio.wait_for(read(), timeout)
    return out


async def test_events_stream_state_changes_with_a_key_and_resume_after_an_id(api: Api) -> None:
    base = str(api.http.base_url)
    async with httpx.AsyncClient(base_url=base, timeout=15) as anonymous:
        r = await anonymous.get("/api/v1/events")
        assert r.status_code == 401 and "API key required" in r.json()["detail"]
        r = await anonymous.get("/api/v1/events?after=-1", headers={"X-API-Key": api.viewer_key})
        assert r.status_code == 400 and "event id" in r.json()["detail"]
        r = await anonymous.get("/api/v1/events", headers={"X-API-Key": api.viewer_key, "Last-Event-ID": "x"})
        assert r.status_code == 400

    conn = await asyncpg.connect(api.database_url)
    try:
        tx = f"ev-{uuid.uuid4().hex[:8]}"
        before = await _transition(conn, tx, None, "pending")
        # from now on (no cursor): what happened before is not replayed
        async with api.http.stream("GET", "/api/v1/events") as live:
            assert live.status_code == 200 and live.headers["content-type"].startswith("text/event-stream")
            await asyncio.sleep(0.3)  # the stream has taken its starting point
            ids = [
                await _transition(conn, tx, "pending", "voting"),
                await _transition(conn, tx, "voting", "rejected", "policy"),
            ]
            got = await _read_events(live, 2)
        assert [i for i, _ in got] == ids
        assert [(d["tx_id"], d["from_state"], d["state"]) for _, d in got] == [
            (tx, "pending", "voting"),
            (tx, "voting", "rejected"),
        ]
        assert (
            got[1][1]["detail"] == "policy" and got[1][1]["event"] == "tx.rejected" and got[1][1]["at_ms"] > 0
        )

        # a reconnecting client sends the last id it saw and gets everything after it, in order
        async with api.http.stream("GET", "/api/v1/events", headers={"Last-Event-ID": str(before)}) as again:
            assert [i for i, _ in await _read_events(again, 2)] == ids
        async with api.http.stream("GET", f"/api/v1/events?after={ids[0]}") as again:
            assert [i for i, _ in await _read_events(again, 1)] == ids[1:]
    finally:
        await conn.close()
