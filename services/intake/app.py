"""The intake REST API (Sanic): spend requests in, ``tx.requested`` out; reads over the recorder's projection.

Routes (``/api/v1``)::

    GET  /health                          liveness
    GET  /metrics                         Prometheus
    GET  /api/v1/cluster/status           n, t, nodes alive, key present, nonce pool
    GET  /api/v1/cluster/nodes            node_status rows (+ KV ``nodes`` / ``bans``)
    GET  /api/v1/wallet/address           the receive address (P2TR of the threshold key, path 0/0)
    GET  /api/v1/wallet/balance           confirmed / unconfirmed / reserved / spendable sats
    POST /api/v1/transactions             a spend (admin or operator key) -> 202 {id, state}; repeat -> 200
    GET  /api/v1/transactions             ?state=&limit=&offset=, newest first
    GET  /api/v1/transactions/{id}        state, timeline, votes, txid, signed tx
    GET  /api/v1/events                   server-sent events: every state change (?after= / Last-Event-ID)

Every ``/api/v1`` route needs an API key (``Authorization: Bearer <key>`` or ``X-API-Key``): any role
reads, ``admin`` and ``operator`` keys request spends (``mpcw apikey create|list|revoke``). Without one
the answer is 401; ``/health`` and ``/metrics`` are open.

``POST /api/v1/transactions`` answers every bad input with a 4xx before anything is published:
401/403 (API key missing, unknown, revoked, read-only), 400 (body not JSON, recipient invalid or of
another network), 422 (schema: unknown field, wrong type, out of range, amount below dust, fee rate
above the policy ceiling; ``detail`` names the field), 409 (insufficient funds with the numbers; no
key yet; idempotency key reused for another request). Only after the request and its UTXO reservations
are committed is ``TxRequested`` published on ``tx.requested.<tx_id>`` with ``Nats-Msg-Id = tx_id``.
The API key is never logged; only its key id is stored with the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
import uuid
from collections.abc import Container
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, NoReturn

import asyncpg
import msgspec
import nats.errors
import nats.js.errors
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from sanic import Request, Sanic
from sanic.exceptions import SanicException
from sanic.response import HTTPResponse, raw

from core.lifecycle import TxState
from schemas.kv import DEFAULT_KEY_ID, POLICY_KEY
from schemas.messages import TxRequested
from schemas.names import BUCKET_CONFIG, BUCKET_NODES, tx_subject
from schemas.rest import ErrorBody, Policy, SpendRequest
from services.chain.esplora import EsploraClient, EsploraError
from services.runtime.bus import Bus
from services.runtime.config import ServiceConfig
from services.runtime.db import hash_api_key, lookup_api_key
from services.runtime.key_proof import KeyNotProven, ProvenKeys
from services.runtime.logging import Logger
from services.runtime.signed_kv import NoVerifiedValue, SignedKV
from wallet.address import InvalidAddress, address_to_script
from wallet.coin_selection import AmountBelowDust, FeeTooHigh, InsufficientFunds, build_spend

from . import store
from .wallet_state import SCHEME, UtxoView, Wallet

TX_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")
MAX_KEY_LEN = 256
MAX_BODY = 64 * 1024
DEFAULT_FEE_TARGET = 6  # blocks
ALIVE_SECONDS = 30.0
WRITE_ROLES = frozenset({"admin", "operator"})  # may request spends; "viewer" keys only read
READ_KEY_CACHE_S = 5.0  # a key accepted for reading is not looked up again for this long
EVENTS_POLL_S = 0.25  # how often an event stream looks for new state changes
EVENTS_KEEPALIVE_S = 15.0  # a comment line after this long without an event (proxies close idle streams)
EVENTS_MAX_CLIENTS = 64  # open event streams per intake process; more are answered 503
EVENTS_BATCH = 500
UTXO_VIEW_MAX_AGE_S = 2.0  # how old a UTXO list intake may build a spend from
FEE_ESTIMATES_MAX_AGE_S = 10.0  # how old the chain backend's fee estimates intake may use
CANDIDATE_LIMIT = 200  # coins a spend first picks from (all of them before it answers "insufficient")
FRESH_UTXO_VIEW_S = 0.25  # "look again" before answering insufficient funds: a list at most this old
RESERVED_HERE_MAX_S = 120.0  # how long this process skips coins it reserved (the database decides after)
POLICY_MAX_AGE_S = 1.0  # how old a policy intake may use for defaults and early answers
RESERVATION_RETENTION_S = 600.0  # reservations of confirmed spends outlive any UTXO list by far

REQUESTS = Counter("mpcw_intake_requests_total", "HTTP requests", ["route", "status"])
LATENCY = Histogram(
    "mpcw_intake_request_seconds",
    "HTTP request latency",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
SPENDS = Counter("mpcw_intake_spends_total", "Spend requests by outcome", ["outcome"])


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str = "", **extra: Any) -> None:
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra


def fail(status: int, error: str, detail: str = "", **extra: Any) -> NoReturn:
    raise ApiError(status, error, detail, **extra)


# exceptions that mean a server the intake stands on is away (PostgreSQL restarting, NATS unreachable),
# not that the request is bad: 503, and the client retries
_DB_AWAY: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # SQLSTATE class 08
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03 cannot connect now ...
    asyncpg.InterfaceError,  # the connection was lost or the pool is closing
    asyncpg.InternalClientError,  # the pool's upkeep while PostgreSQL restarts
    ConnectionError,
    TimeoutError,  # acquiring a connection or a query outlived its timeout
    OSError,
)
_BUS_AWAY: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.TimeoutError,
    nats.errors.UnexpectedEOF,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


def unavailable(exc: BaseException) -> ApiError | None:
    """The 503 a server's absence deserves, or None when ``exc`` is something else. The body names the
    server, never the exception's text (which may carry internal detail)."""
    if isinstance(exc, _BUS_AWAY):
        return ApiError(503, "bus unavailable", "the message bus is unreachable; retry later")
    if isinstance(exc, _DB_AWAY):
        return ApiError(503, "database unavailable", "the database is unreachable; retry later")
    return None


def json_response(body: Any, status: int = 200) -> HTTPResponse:
    return raw(msgspec.json.encode(body), status=status, content_type="application/json")


def error_response(exc: ApiError) -> HTTPResponse:
    body = msgspec.structs.asdict(ErrorBody(error=exc.error, detail=exc.detail))
    return json_response({**body, **exc.extra}, exc.status)


@dataclass
class Intake:
    """What the handlers share: config, bus, pool, chain backend, the wallet once its key exists."""

    cfg: ServiceConfig
    bus: Bus
    pool: asyncpg.Pool
    log: Logger
    esplora: EsploraClient | None = None
    wallet: Wallet | None = None  # once its key record is proven
    keys: ProvenKeys | None = None
    started: float = field(default_factory=time.time)
    _utxos: tuple[float, UtxoView] | None = None  # (when its fetch started, the list)
    _utxo_fetch: tuple[float, asyncio.Future[UtxoView]] | None = None  # the fetch in flight, if any
    _fee_estimates: tuple[float, dict[int, float]] | None = None
    _policy: tuple[float, Policy] | None = None
    _config: SignedKV | None = None
    _published: list[str] = field(default_factory=list)
    read_keys: dict[bytes, float] = field(default_factory=dict)  # key hash -> accepted until (monotonic)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # set on stop: event streams end
    event_streams: int = 0  # open GET /api/v1/events responses
    # outpoints this process's requests are storing right now (store.reserve): concurrent requests of one
    # intake never choose the same coins, so only another intake process can make a choice be made again
    claiming: set[tuple[str, int]] = field(default_factory=set)
    # outpoints this process reserved lately -> when (monotonic): a UTXO list keeps showing a coin until
    # its spend reaches the chain, and a spend's candidate coins are picked among the others (else under
    # load the candidate window fills with coins already taken). Forgotten once a list fetched after
    # the reservation no longer shows the coin, or after RESERVED_HERE_MAX_S (the spend was rejected and
    # its reservation released, say); the database's reservations stay the authority either way.
    reserved_here: dict[tuple[str, int], float] = field(default_factory=dict)
    _marker: asyncio.Task[None] | None = None

    def published(self, tx_id: str) -> None:
        """``tx.requested`` of ``tx_id`` is on the bus: stored as published in batches, off the request's
        path (a crash before that only makes the republish loop publish it again, de-duplicated)."""
        self._published.append(tx_id)
        if self._marker is None or self._marker.done():
            self._marker = asyncio.get_running_loop().create_task(self._mark_published())

    @property
    def marking(self) -> asyncio.Task[None] | None:
        """The batch of published_at updates in progress, if any."""
        return self._marker if self._marker is not None and not self._marker.done() else None

    async def _mark_published(self) -> None:
        while self._published:
            ids, self._published = self._published, []
            try:
                await store.mark_published(self.pool, ids)
            except Exception as exc:
                self.log.warning("marking requests published failed", count=len(ids), error=repr(exc)[:200])
                return

    async def get_wallet(self) -> Wallet:
        if self.wallet is None:
            if self.keys is None:
                self.keys = await ProvenKeys.open(self.bus, self.cfg.nodes, self.cfg.t)
            try:
                record = await self.keys.get(SCHEME, DEFAULT_KEY_ID)
            except KeyNotProven as exc:  # no address is ever derived from it
                fail(409, "key not proven", f"the wallet's key record is refused: {exc.reason}")
            if record is None:
                fail(409, "no key yet", "no key yet: run mpcw dkg start")
            self.wallet = Wallet(record, self.cfg.network)
        return self.wallet

    def chain(self) -> EsploraClient:
        if self.esplora is None:
            fail(503, "no chain backend", "no esplora_url configured (cluster.json)")
        return self.esplora

    async def policy(self) -> Policy:
        """The policy in KV, read at most every ``POLICY_MAX_AGE_S`` (intake only uses it for defaults and
        early answers; every signer judges each spend by the current policy itself)."""
        now = time.monotonic()
        if self._policy is not None and now - self._policy[0] <= POLICY_MAX_AGE_S:
            return self._policy[1]
        if self._config is None:
            self._config = await SignedKV.open(self.bus, BUCKET_CONFIG)
        try:
            signed = await self._config.get(POLICY_KEY, Policy)  # signed by admin, or reported and ignored
        except NoVerifiedValue:
            fail(503, "no verified policy", "the stored policy is not signed by admin: run `mpcw policy set`")
        policy = signed.value if signed is not None else Policy()
        self._policy = (now, policy)
        return policy

    async def wallet_utxos(self, wallet: Wallet, max_age: float = UTXO_VIEW_MAX_AGE_S) -> UtxoView:
        """The wallet's UTXOs from the chain backend, reusing a list at most ``max_age`` seconds old.

        A slightly old list is safe: coins it still shows although they were spent since are either
        reserved by the spend that took them (reservations of confirmed spends are kept for
        ``RESERVATION_RETENTION_S``) or refused by the chain at broadcast; coins that arrived since are
        only missed for that moment.

        One fetch at a time: concurrent requests that find the list too old wait for the same fetch
        (the list of a large wallet takes tens of milliseconds to parse) as long as it started no
        earlier than ``max_age`` ago; a caller asking for a fresher one starts its own."""
        now = time.monotonic()
        if self._utxos is not None and now - self._utxos[0] <= max_age:
            return self._utxos[1]
        if self._utxo_fetch is None or self._utxo_fetch[1].done() or now - self._utxo_fetch[0] > max_age:
            self._utxo_fetch = (now, asyncio.ensure_future(self._fetch_utxos(wallet, now)))
        try:
            return await asyncio.shield(self._utxo_fetch[1])  # a caller that goes away leaves it running
        except EsploraError as exc:
            fail(503, "chain backend unavailable", str(exc)[:300])

    async def _fetch_utxos(self, wallet: Wallet, started: float) -> UtxoView:
        view = UtxoView(await wallet.utxos(self.chain()))
        if self._utxos is None or self._utxos[0] < started:
            self._utxos = (started, view)
        listed = {(u.txid, u.vout) for u in view.utxos}
        oldest = time.monotonic() - RESERVED_HERE_MAX_S
        for outpoint, at in list(self.reserved_here.items()):
            if at < oldest or (at < started and outpoint not in listed):
                del self.reserved_here[outpoint]
        return view

    def reserved(self, outpoints: list[tuple[str, int, int]]) -> None:
        """This process stored a request reserving ``outpoints``: later spends pick among other coins."""
        now = time.monotonic()
        for txid, vout, _ in outpoints:
            self.reserved_here[(txid, vout)] = now

    async def default_fee_rate(self) -> float:
        """The backend's estimate for ``DEFAULT_FEE_TARGET`` blocks (asked at most every
        ``FEE_ESTIMATES_MAX_AGE_S``: estimates move with blocks, not with requests)."""
        now = time.monotonic()
        if self._fee_estimates is not None and now - self._fee_estimates[0] <= FEE_ESTIMATES_MAX_AGE_S:
            estimates = self._fee_estimates[1]
        else:
            try:
                estimates = await self.chain().fee_estimates()
            except EsploraError as exc:
                fail(503, "chain backend unavailable", f"fee estimates: {str(exc)[:300]}")
            self._fee_estimates = (now, estimates)
        if not estimates:
            return 1.0
        target = min(estimates, key=lambda k: (abs(k - DEFAULT_FEE_TARGET), k))
        return max(1.0, float(estimates[target]))


# ---- request decoding -----------------------------------------------------------------------------------


def presented_api_key(request: Request) -> str | None:
    auth: str | None = request.headers.get("authorization")
    if auth:
        scheme, _, token = auth.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return token.strip()
    key: str | None = request.headers.get("x-api-key")
    return key.strip() if key and key.strip() else None


async def authenticate(intake: Intake, request: Request) -> asyncpg.Record:
    """The api_keys row of the request's key, which must be allowed to request spends (looked up every
    time: a revoked key stops spending at once)."""
    row = await _known_key(intake, _required_key(request))
    if row["role"] not in WRITE_ROLES:
        fail(403, "forbidden", f"API key role {row['role']!r} may not request spends")
    return row


async def authenticate_read(intake: Intake, request: Request) -> None:
    """Any valid key may read (viewer, operator, admin). A key accepted is trusted for reading for
    ``READ_KEY_CACHE_S`` (pollers do not cost a database look-up each), so a revoked key may read that
    much longer."""
    key = _required_key(request)
    digest = hash_api_key(key)
    now = time.monotonic()
    if intake.read_keys.get(digest, 0.0) > now:
        return
    await _known_key(intake, key)
    if len(intake.read_keys) > 10_000:
        intake.read_keys.clear()
    intake.read_keys[digest] = now + READ_KEY_CACHE_S


def _required_key(request: Request) -> str:
    key = presented_api_key(request)
    if key is None:
        fail(401, "unauthorized", "API key required: Authorization: Bearer <key> or X-API-Key")
    if len(key) > MAX_KEY_LEN or not key.isascii() or not key.isprintable():
        fail(401, "unauthorized", "unknown or revoked API key")
    return key


async def _known_key(intake: Intake, key: str) -> asyncpg.Record:
    row = await lookup_api_key(intake.pool, key)
    if row is None:
        fail(401, "unauthorized", "unknown or revoked API key")
    return row


async def stream_events(intake: Intake, request: Request) -> None:
    """``GET /api/v1/events``: server-sent events, one per state change of any spend, as the projection
    records them (``id`` = the change's id; ``data`` = tx_id, from/to state, event, detail, at_ms). Starts
    after ``?after=ID`` or the ``Last-Event-ID`` header (a reconnecting browser sends it), else with the
    next change; a comment line every ``EVENTS_KEEPALIVE_S`` when nothing happens. Any API key (checked
    by the app's read middleware)."""
    raw_cursor = request.args.get("after") or request.headers.get("last-event-id")
    if raw_cursor is None:
        after = await store.last_transition_id(intake.pool)
    else:
        after = int(raw_cursor) if raw_cursor.isascii() and raw_cursor.isdigit() else -1
        if after < 0:
            fail(400, "bad query", "after / Last-Event-ID: must be an event id (an integer >= 0)")
    if intake.event_streams >= EVENTS_MAX_CLIENTS:
        fail(503, "busy", f"{EVENTS_MAX_CLIENTS} event streams are open on this intake; retry later")
    intake.event_streams += 1
    try:
        response = await request.respond(
            content_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.send(f"retry: 2000\n: events after {after}\n\n")
        quiet_since = time.monotonic()
        while not intake.closing.is_set():
            rows = await store.transitions_after(intake.pool, after, EVENTS_BATCH)
            if rows:
                await response.send("".join(_event(r) for r in rows))
                after = int(rows[-1]["id"])
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > EVENTS_KEEPALIVE_S:
                await response.send(": keepalive\n\n")
                quiet_since = time.monotonic()
            if len(rows) < EVENTS_BATCH:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(intake.closing.wait(), EVENTS_POLL_S)
        await response.eof()
    finally:
        intake.event_streams -= 1


def _event(r: asyncpg.Record) -> str:
    data = {
        "tx_id": r["tx_id"],
        "from_state": r["from_state"],
        "state": r["to_state"],
        "event": r["event"],
        "detail": r["detail"],
        "at_ms": store.ms(r["at"]),
    }
    return f"id: {r['id']}\nevent: transition\ndata: {msgspec.json.encode(data).decode()}\n\n"


def decode_spend(body: bytes) -> SpendRequest:
    if not body:
        fail(400, "malformed request", "empty body: a JSON object is expected")
    try:
        return msgspec.json.decode(body, type=SpendRequest)
    except msgspec.ValidationError as exc:
        fail(422, "invalid request", str(exc))
    except msgspec.DecodeError as exc:
        fail(400, "malformed request", f"body is not valid JSON: {exc}")


def request_hash(req: SpendRequest) -> bytes:
    content = msgspec.structs.asdict(req)
    content.pop("idempotency_key", None)
    return hashlib.sha256(msgspec.json.encode(dict(sorted(content.items())))).digest()


def parse_tx_id(tx_id: str) -> str:
    if not TX_ID_RE.match(tx_id):
        fail(400, "malformed id", "transaction ids are 1-64 characters of [A-Za-z0-9_-]")
    return tx_id


def int_arg(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    value = request.args.get(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        fail(400, "bad query", f"{name}: not an integer")
    if not lo <= n <= hi:
        fail(400, "bad query", f"{name}: must be in {lo}..{hi}")
    return n


# ---- the spend ------------------------------------------------------------------------------------------


async def create_spend(intake: Intake, request: Request) -> HTTPResponse:
    api_key = await authenticate(intake, request)
    req = decode_spend(request.body)
    network = intake.cfg.network
    try:
        recipient_script = address_to_script(req.recipient, network)
    except InvalidAddress as exc:
        fail(400, "invalid recipient", f"recipient: {exc}")
    digest = request_hash(req)

    if req.idempotency_key is not None:
        existing = await store.find_by_idempotency_key(intake.pool, req.idempotency_key)
        if existing is not None:
            return await repeat(intake, existing, digest)

    wallet = await intake.get_wallet()
    policy = await intake.policy()
    if req.fee_rate is not None:
        fee_rate = req.fee_rate
    else:
        fee_rate = min(await intake.default_fee_rate(), policy.max_fee_rate)
    view = await intake.wallet_utxos(wallet)
    tx_id = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    # a bounded choice first (a spend costs the same with 50 coins or 50,000), all of them before a "no"
    avoid: Container[tuple[str, int]] = intake.reserved_here
    candidates = view.candidates(req.amount_sats, CANDIDATE_LIMIT, avoid)

    def select(reserved: set[tuple[str, int]]) -> store.NewRequest:
        # nor (first pass) what this process reserved since the candidates were picked, an await ago
        free = [u for u in candidates if (u.txid, u.vout) not in reserved and (u.txid, u.vout) not in avoid]
        try:
            spend = build_spend(
                [u.coin for u in free],
                recipient_script,
                req.amount_sats,
                wallet.change_script,
                fee_rate,
                max_fee=policy.max_fee_sats,
                max_fee_rate=policy.max_fee_rate,
            )
        except AmountBelowDust as exc:
            fail(422, "invalid request", f"amount_sats: {exc}")
        except FeeTooHigh as exc:
            fail(422, "invalid request", f"fee_rate: {exc}")
        except InsufficientFunds as exc:
            locked = sum(u.value for u in candidates if (u.txid, u.vout) in reserved)
            unconfirmed = sum(u.value for u in view.utxos if not u.spendable)
            fail(
                409,
                "insufficient funds",
                f"{exc.needed} sat needed (amount + fee at {fee_rate} sat/vB), {exc.available} sat spendable;"
                f" {locked} sat reserved by in-flight spends, {unconfirmed} sat unconfirmed",
                needed_sats=exc.needed,
                available_sats=exc.available,
                reserved_sats=locked,
                unconfirmed_sats=unconfirmed,
            )
        message = wallet.request(
            tx_id,
            spend,
            free,
            recipient=req.recipient,
            amount=req.amount_sats,
            fee_rate=fee_rate,
            requested_by=f"api:{api_key['key_id']}",
            requested_at_ms=now_ms,
        )
        return store.NewRequest(
            tx_id=tx_id,
            idempotency_key=req.idempotency_key,
            request_hash=digest,
            api_key_id=api_key["key_id"],
            recipient=req.recipient,
            amount=req.amount_sats,
            fee=spend.fee,
            fee_rate=fee_rate,
            memo=req.memo,
            message=msgspec.msgpack.encode(message),
            outpoints=[(c.outpoint.txid, c.outpoint.vout, c.amount) for c in spend.inputs],
            created_at_ms=now_ms,
        )

    def outpoints() -> list[tuple[str, int]]:
        return [(u.txid, u.vout) for u in candidates]

    def stored_here(new: store.NewRequest) -> None:
        intake.reserved(new.outpoints)

    try:
        try:
            stored = await store.reserve(
                intake.pool, req.idempotency_key, outpoints(), select, intake.claiming, stored_here
            )
        except ApiError as exc:
            if exc.error != "insufficient funds":
                raise
            # the UTXO list may be a moment old, and the bounded choice may miss what would do: look
            # again, at every coin, before saying no
            view = await intake.wallet_utxos(wallet, max_age=FRESH_UTXO_VIEW_S)
            candidates, avoid = view.candidates(req.amount_sats, None), ()  # the database alone decides
            stored = await store.reserve(
                intake.pool, req.idempotency_key, outpoints(), select, intake.claiming, stored_here
            )
    except store.ReservationConflict:
        # other intake processes kept taking the coins chosen for this one; nothing was stored
        fail(409, "conflict", "concurrent requests kept reserving the same funds; retry")
    if isinstance(stored, store.Existing):
        return await repeat(intake, stored, digest)
    msg = msgspec.msgpack.decode(stored.message, type=TxRequested)
    try:
        await intake.bus.publish(tx_subject("requested", tx_id), msg, tx_id)
    except Exception as exc:
        # the request and its reservations are stored: it is published by the background retry
        # (republish_pending), never forgotten; the message id is the tx id, so a publish that did reach
        # the server before the error is not repeated
        SPENDS.labels("publish-deferred").inc()
        intake.log.error("publishing tx.requested failed; will retry", tx_id=tx_id, error=repr(exc)[:300])
        return json_response(stored.view(), 202)
    intake.published(tx_id)
    SPENDS.labels("accepted").inc()
    intake.log.info(
        "spend requested",
        tx_id=tx_id,
        amount=req.amount_sats,
        fee=msg.fee,
        inputs=len(msg.inputs),
        key_id=api_key["key_id"],
    )
    return json_response(stored.view(), 202)


async def repeat(intake: Intake, existing: store.Existing, digest: bytes) -> HTTPResponse:
    """A request with an idempotency key seen before: the same transaction (200), published now if the
    first attempt stopped between storing and publishing."""
    if existing.request_hash != digest:
        fail(409, "idempotency key reused", "idempotency_key was already used for a different request")
    if not existing.published:
        msg = msgspec.msgpack.decode(existing.message, type=TxRequested)
        try:
            await intake.bus.publish(tx_subject("requested", existing.tx_id), msg, existing.tx_id)
        except Exception as exc:
            fail(503, "bus unavailable", f"the request could not be queued: {type(exc).__name__}")
        await store.mark_published(intake.pool, [existing.tx_id])
    SPENDS.labels("repeat").inc()
    view = await store.get_transaction(intake.pool, existing.tx_id)
    return json_response(view, 200)


async def republish_pending(intake: Intake) -> int:
    """Publish requests stored but not published (a crash or a bus outage in between); at startup and
    every few seconds. Idempotent: the message id is the tx id."""
    n = 0
    for tx_id, raw_msg in await store.unpublished(intake.pool):
        msg = msgspec.msgpack.decode(raw_msg, type=TxRequested)
        await intake.bus.publish(tx_subject("requested", tx_id), msg, tx_id)
        await store.mark_published(intake.pool, [tx_id])
        n += 1
    return n


# ---- cluster and wallet views ---------------------------------------------------------------------------


async def kv_keys(intake: Intake, bucket: str) -> list[str]:
    try:
        return await (await intake.bus.kv(bucket)).keys()
    except Exception as exc:
        intake.log.warning("kv listing failed", bucket=bucket, error=repr(exc)[:200])
        return []


def _detail_int(row: asyncpg.Record | None, name: str) -> int | None:
    if row is None:
        return None
    detail = row["detail"]
    if isinstance(detail, str):
        detail = msgspec.json.decode(detail)
    value = detail.get(name) if isinstance(detail, dict) else None
    return value if isinstance(value, int) else None


async def nodes_view(intake: Intake) -> list[dict[str, Any]]:
    now = time.time()
    rows = {r["node_id"]: r for r in await store.node_rows(intake.pool)}
    in_kv = set(await kv_keys(intake, BUCKET_NODES))
    out = []
    for node in sorted(set(intake.cfg.nodes) | set(rows)):
        r = rows.get(node)
        last = r["last_heartbeat"].timestamp() if r is not None and r["last_heartbeat"] else None
        banned_until = r["banned_until"].timestamp() if r is not None and r["banned_until"] else None
        banned = banned_until is not None and banned_until > now
        fresh = last is not None and now - last <= ALIVE_SECONDS and r is not None and r["status"] != "down"
        out.append(
            {
                "node": node,
                "alive": (fresh or node in in_kv) and not banned,
                "status": r["status"] if r is not None else "unknown",
                "last_heartbeat_ms": int(last * 1000) if last else None,
                "version": r["version"] if r is not None else "",
                "violations": r["violations"] if r is not None else 0,
                "banned": banned,
                "banned_until_ms": int(banned_until * 1000) if banned_until else None,
                "nonces": _detail_int(r, "nonces"),
            }
        )
    return out


async def cluster_status(intake: Intake) -> dict[str, Any]:
    nodes = [n for n in await nodes_view(intake) if n["node"] in intake.cfg.nodes]
    alive = sum(1 for n in nodes if n["alive"])
    key: dict[str, Any] = {"present": False}
    try:
        wallet = await intake.get_wallet()
        key = {
            "present": True,
            "key_id": wallet.key_id,
            "threshold_pubkey": wallet.record.threshold_pubkey.hex(),
            "n": wallet.record.n,
            "t": wallet.record.t,
        }
    except ApiError:
        pass
    # precomputed nonces each node holds, from its last heartbeat (free ones and claimed ones it has not
    # used yet; ``mpcw presig pool-status`` counts the free ones in KV)
    pool = {n["node"]: n["nonces"] for n in nodes if n["nonces"] is not None}
    return {
        "n": intake.cfg.n,
        "t": intake.cfg.t,
        "network": intake.cfg.network,
        "nodes_alive": alive,
        "quorum": alive >= intake.cfg.t,
        "key": key,
        "nonce_pool": pool,
        "nodes": nodes,
    }


async def balance(intake: Intake) -> dict[str, Any]:
    wallet = await intake.get_wallet()
    utxos = (await intake.wallet_utxos(wallet, max_age=0.0)).utxos  # what the chain says now
    reserved, _ = await store.reserved_total(intake.pool)
    is_reserved = [(u.txid, u.vout) in reserved for u in utxos]
    return {
        "address": wallet.receive_address,
        "confirmed_sats": sum(u.value for u in utxos if u.confirmed),
        "unconfirmed_sats": sum(u.value for u in utxos if not u.confirmed),
        "reserved_sats": sum(u.value for u, r in zip(utxos, is_reserved, strict=True) if r),
        "spendable_sats": sum(
            u.value for u, r in zip(utxos, is_reserved, strict=True) if u.spendable and not r
        ),
        "utxos": len(utxos),
    }


# ---- the app --------------------------------------------------------------------------------------------


def create_app(intake: Intake, name: str = "mpcw-intake") -> Sanic[Any, Any]:
    app: Sanic[Any, Any] = Sanic(name)
    app.config.REQUEST_MAX_SIZE = MAX_BODY
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.KEEP_ALIVE_TIMEOUT = 5
    app.config.GRACEFUL_SHUTDOWN_TIMEOUT = 5.0
    app.ctx.intake = intake

    @app.on_request
    async def start_timer(request: Request) -> None:
        request.ctx.t0 = time.perf_counter()

    @app.on_request
    async def authorize_reads(request: Request) -> None:
        """Every ``/api/v1`` read needs a key of any role (a spend checks its own, stricter)."""
        if request.path.startswith("/api/v1/") and request.method in ("GET", "HEAD"):
            await authenticate_read(intake, request)

    @app.on_response  # type: ignore[untyped-decorator]  # sanic's on_response is not annotated
    async def observe(request: Request, response: HTTPResponse) -> None:
        route = request.route.name.split(".")[-1] if request.route else "unmatched"
        elapsed = time.perf_counter() - getattr(request.ctx, "t0", time.perf_counter())
        REQUESTS.labels(route, str(response.status)).inc()
        LATENCY.labels(route).observe(elapsed)
        intake.log.info(
            "http",
            method=request.method,
            path=request.path,
            route=route,
            status=response.status,
            ms=round(elapsed * 1000, 2),
        )

    @app.exception(ApiError)
    async def api_error(request: Request, exc: ApiError) -> HTTPResponse:
        return error_response(exc)

    @app.exception(Exception)
    async def other_error(request: Request, exc: Exception) -> HTTPResponse:
        """Sanic's own errors (404, 405, 413...) keep their status; a server that is away is a 503 with
        ``Retry-After``; anything else is a 500 whose body says nothing of the internals (the log has the
        exception's type)."""
        if isinstance(exc, SanicException):
            status = int(getattr(exc, "status_code", 500) or 500)
            message = str(exc) if status < 500 else "the request failed inside the intake"
            return error_response(ApiError(status, HTTPStatus(status).phrase.lower(), message))
        away = unavailable(exc)
        if away is not None:
            intake.log.warning("dependency unavailable", path=request.path, error=type(exc).__name__)
            response = error_response(away)
            response.headers["Retry-After"] = "2"
            return response
        intake.log.error("unhandled", path=request.path, error=type(exc).__name__)
        return error_response(ApiError(500, "internal error", "the request failed inside the intake"))

    @app.get("/health")
    async def health(request: Request) -> HTTPResponse:
        return json_response(
            {"status": "ok", "service": "intake", "uptime_s": int(time.time() - intake.started)}
        )

    @app.get("/metrics")
    async def metrics(request: Request) -> HTTPResponse:
        return raw(generate_latest(), content_type=CONTENT_TYPE_LATEST)

    @app.get("/api/v1/cluster/status")
    async def status(request: Request) -> HTTPResponse:
        return json_response(await cluster_status(intake))

    @app.get("/api/v1/cluster/nodes")
    async def nodes(request: Request) -> HTTPResponse:
        return json_response({"nodes": await nodes_view(intake)})

    @app.get("/api/v1/wallet/address")
    async def address(request: Request) -> HTTPResponse:
        wallet = await intake.get_wallet()
        return json_response(
            {
                "address": wallet.receive_address,
                "network": wallet.network,
                "key_id": wallet.key_id,
                "derivation": "0/0",
                "xpub": wallet.account.xpub(),
            }
        )

    @app.get("/api/v1/wallet/balance")
    async def wallet_balance(request: Request) -> HTTPResponse:
        return json_response(await balance(intake))

    @app.post("/api/v1/transactions")
    async def post_transaction(request: Request) -> HTTPResponse:
        return await create_spend(intake, request)

    @app.get("/api/v1/transactions")
    async def list_transactions(request: Request) -> HTTPResponse:
        state = request.args.get("state")
        if state is not None and state not in {s.value for s in TxState}:
            fail(400, "bad query", f"state: must be one of {', '.join(s.value for s in TxState)}")
        limit = int_arg(request, "limit", 50, 1, 500)
        offset = int_arg(request, "offset", 0, 0, 10_000_000)
        views = await store.list_transactions(intake.pool, state, limit, offset)
        return json_response({"transactions": views, "limit": limit, "offset": offset})

    @app.get("/api/v1/events")
    async def events(request: Request) -> None:
        await stream_events(intake, request)

    @app.get("/api/v1/transactions/<tx_id:str>")
    async def get_transaction(request: Request, tx_id: str) -> HTTPResponse:
        view = await store.get_transaction(intake.pool, parse_tx_id(tx_id))
        if view is None:
            fail(404, "not found", f"no transaction {tx_id}")
        return json_response(view)

    return app
