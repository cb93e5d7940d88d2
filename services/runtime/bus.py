"""The bus: NATS JetStream over mutual TLS, signed (and for point-to-point, encrypted) envelopes.

Theory of operation
-------------------
``Bus.connect(cfg)`` opens one TLS connection with the identity's client certificate (the server maps it
to the user ``CN=<identity>`` and enforces its publish rights), never gives up reconnecting, and makes
sure the streams and buckets of ``nats/jetstream.json`` exist (creating/updating them when connected as
``admin``, waiting for them otherwise).

``publish(subject, struct, msg_id, to=None)`` encodes the struct with msgpack, wraps it in an envelope
signed with the identity's Ed25519 key (encrypted to ``to``'s X25519 key when given) and publishes it
with ``Nats-Msg-Id = msg_id``: JetStream drops a repeat inside the stream's duplicate window and the
returned ``PubAck.duplicate`` says so.

``consume(filter, durable, handler)`` runs a durable pull consumer. Each message is verified
(signature, sender known, sender allowed on the subject, subject/recipient bound in the signature),
decrypted when addressed to us, decoded with the registry and passed to ``handler`` as a
:class:`Received`. The message is acked only after the handler returns; a handler exception naks it
with a growing delay; after ``poison_after`` deliveries it is terminated and reported. Invalid messages
are terminated and reported on ``node.violation.<offender>`` as a ``schemas.envelope.BusRejection``;
the loop itself never dies of a message.

``consume_batch(filter, durable, handler_batch)`` is the same loop for consumers that store a whole
fetched batch at once (the recorder): one awaited ``handler_batch(list[Received])`` per fetch, the
valid messages in stream order, every one acked only after it returned; ``max_ack_pending`` defaults to
the batch size so batches never overtake each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

import nats
from schemas import envelope as E
from schemas.kinds import RejectionKind
from schemas.names import (
    SERVICE_IDENTITIES,
    UNKNOWN,
    consumers_of,
    inbox_prefix,
    sender_may_publish,
    stream_for,
    subject_matches,
    violation_subject,
)
from schemas.wire import UnknownType, check_registry, decode_payload, registry_of, tag_of

from . import metrics as M
from .config import ServiceConfig
from .flood import NAK_DELAY_S, SenderRateLimiter
from .logging import get_logger
from .natsconf import jetstream_definitions
from .seal import (
    EnvelopeError,
    Identities,
    IdentityKeys,
    check_delivery,
    open_payload,
    seal,
)
from .seal import verify_envelope as _verify_envelope

Registry = Mapping[str, type[msgspec.Struct]]
S = TypeVar("S", bound=msgspec.Struct)

# what the bus always understands, whatever registry a service passes
BUILTIN_TYPES: dict[str, type[msgspec.Struct]] = registry_of(E.BusRejection)


@dataclass(frozen=True)
class Received:
    """One verified message, as a handler sees it."""

    subject: str
    sender: str  # verified envelope sender
    payload: Any  # the decoded struct; None when addressed (encrypted) to another identity
    seq: int  # stream sequence (the recorder's exactly-once position)
    msg_id: str
    envelope_raw: bytes  # the signed envelope as received (goes into quorum certificates)
    envelope: E.Envelope
    stream: str = ""
    num_delivered: int = 1

    @property
    def type(self) -> str:
        return self.envelope.type


Handler = Callable[[Received], Awaitable[None]]
BatchHandler = Callable[[list[Received]], Awaitable[None]]


class CasConflict(Exception):
    """A KV compare-and-set lost: the key changed since ``expected`` (or already exists on create)."""

    def __init__(self, bucket: str, key: str, expected: int | None) -> None:
        what = "already exists" if expected is None else f"is no longer at revision {expected}"
        super().__init__(f"kv {bucket}/{key} {what}")
        self.bucket = bucket
        self.key = key
        self.expected = expected


class RetryLater(Exception):
    """Raised by a handler that cannot do its work *yet* (e.g. a transaction not confirmed): the message
    is nak'ed with this fixed ``delay`` and never counts towards poisoning."""

    def __init__(self, delay: float, why: str = "") -> None:
        super().__init__(why or f"retry in {delay}s")
        self.delay = delay


class StreamsMissing(RuntimeError):
    pass


# JetStream cannot answer yet (a cluster electing its leaders): worth asking again
JETSTREAM_NOT_READY: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


@dataclass(frozen=True)
class KvEntry:
    key: str
    value: bytes
    revision: int
    operation: str = "PUT"  # PUT, DEL, PURGE

    def decode(self, typ: type[S]) -> S:
        return msgspec.msgpack.decode(self.value, type=typ)


def _is_cas_error(exc: Exception) -> bool:
    """KV wrong-last-sequence (JetStream error 10071), however the client chose to type it."""
    if isinstance(exc, nats.js.errors.KeyWrongLastSequenceError):
        return True
    return getattr(exc, "err_code", None) == 10071


def _value_bytes(value: bytes | msgspec.Struct) -> bytes:
    return value if isinstance(value, bytes) else msgspec.msgpack.encode(value)


class KV:
    """A JetStream key-value bucket with explicit compare-and-set semantics.

    Values are bytes, or msgspec structs (stored as msgpack; read back with ``entry.decode(Type)``).
    """

    def __init__(self, bus: Bus, bucket: str, kv: KeyValue) -> None:
        self.bus = bus
        self.bucket = bucket
        self._kv = kv

    async def get(self, key: str) -> KvEntry | None:
        """The current value (None when absent or deleted)."""
        try:
            e = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # includes deleted/purged
            return None
        return KvEntry(e.key, e.value or b"", e.revision or 0)

    async def put(self, key: str, value: bytes | msgspec.Struct) -> int:
        """Unconditional write; returns the new revision."""
        return await self._kv.put(key, _value_bytes(value))

    async def create(self, key: str, value: bytes | msgspec.Struct) -> int:
        """Create-only write; raises :class:`CasConflict` when the key exists."""
        try:
            return await self._kv.create(key, _value_bytes(value))
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError) as exc:
            if not _is_cas_error(exc):
                raise
            raise CasConflict(self.bucket, key, None) from None

    async def update_cas(self, key: str, value: bytes | msgspec.Struct, revision: int) -> int:
        """Write only if the key is still at ``revision``; raises :class:`CasConflict` otherwise."""
        if revision is None or revision < 1:
            raise ValueError("update_cas needs the revision you read (use create for a new key)")
        try:
            return await self._kv.update(key, _value_bytes(value), last=revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.BadRequestError) as exc:
            if not _is_cas_error(exc):
                raise
            raise CasConflict(self.bucket, key, revision) from None

    async def delete(self, key: str, revision: int | None = None) -> None:
        try:
            await self._kv.delete(key, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise CasConflict(self.bucket, key, revision) from None

    async def keys(self) -> list[str]:
        try:
            return list(await self._kv.keys())
        except nats.js.errors.NoKeysError:
            return []

    async def _open_watch(self, key: str, include_history: bool) -> KvWatcher:
        """A started :class:`KvWatcher` on ``key`` (a pattern) of this bucket."""
        return await KvWatcher.open(self.bus.js, self.bucket, key, include_history, self._foreign_delivery)

    async def _foreign_delivery(self, msg: Msg, why: str) -> None:
        """A watch delivery that is not an entry of this bucket: dropped and reported. Whoever pointed a
        consumer at our inbox is not known (the message's author is not who delivered it): ``unknown``."""
        M.MESSAGES_REJECTED.labels(self.bus.service, "wrong-stream").inc()
        self.bus.log.warning(
            "dropped a foreign kv watch delivery", bucket=self.bucket, subject=msg.subject[:200]
        )
        stream, seq = "", 0
        with contextlib.suppress(Exception):
            stream, seq = msg.metadata.stream, msg.metadata.sequence.stream
        await self.bus.report(UNKNOWN, "wrong-stream", why, msg.subject[:500], stream, seq, msg.data or b"")

    async def watch(
        self, key: str = ">", *, include_history: bool = False, stop: asyncio.Event | None = None
    ) -> AsyncGenerator[KvEntry | None, None]:
        """Current values, then ``None`` once (initial values done), then every change, forever.

        Only deliveries from this bucket's stream, under the watched keys, are entries
        (:class:`KvWatcher`); anything else that arrives in the watcher's inbox is dropped and reported.

        The watcher is re-created after a reconnect or an error (resuming may replay the current
        values: consumers of a watch must be idempotent). Keep up: the client buffers 256 entries.
        """
        stop = stop or self.bus._stopping
        while not stop.is_set():
            gen = self.bus._generation
            try:
                w = await self._open_watch(key, include_history)
            except Exception as exc:
                self.bus.log.warning("kv watch failed; retrying", bucket=self.bucket, error=repr(exc))
                await asyncio.sleep(0.5)
                continue
            initial = True
            try:
                while not stop.is_set() and gen == self.bus._generation:
                    try:
                        e = await w.updates(timeout=1.0)
                    except TimeoutError:  # nats.errors.TimeoutError, or asyncio's from inside fetch: no work
                        continue
                    if e is None:
                        if initial:
                            # nats-py can announce the end of the current values before they arrive
                            # (its consumer-info check races the deliveries): the values that come in
                            # a short grace period belong to them, up to the one with nothing pending
                            initial = False
                            async for late in _late_initial(w):
                                yield late
                        yield None
                        continue
                    initial = initial and bool(e.delta)
                    yield _kv_entry(e)
            except (nats.errors.ConnectionClosedError, nats.errors.Error) as exc:
                self.bus.log.warning("kv watch interrupted; re-creating", bucket=self.bucket, error=repr(exc))
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(Exception):
                    await w.stop()


WATCH_INIT_GRACE_S = 0.1  # how long a watch waits for current values announced as done too early
WATCH_QUEUE = 256  # entries a watcher buffers (nats-py's size): a slow reader stalls the watch


ForeignDelivery = Callable[[Msg, str], Coroutine[Any, Any, None]]  # (message, why it is not an entry)


class KvWatcher:
    """A KV watch (nats-py's ``KeyValue.watch``: an ordered push consumer on the bucket's stream, the last
    value per key unless ``include_history``, ``None`` once the current values are in) that checks every
    delivery before it becomes an entry.

    A push consumer's deliver subject is only an inbox name: a client allowed to create a consumer on
    another stream can point it at our watcher's inbox, and nats-py would take what arrives for an entry
    of this bucket (its key is the subject minus this bucket's prefix, whatever the subject was). Here a
    delivery must come from stream ``KV_<bucket>`` (the ack subject the server gives it names the stream)
    on a subject under the watched keys; anything else goes to ``on_foreign(msg, why)`` and is dropped.

    Dropping it is not enough: nats-py's ordered consumer has already counted a foreign message whose
    consumer sequence happened to be the one it expected, and taken its stream sequence (of the other
    stream) as the point to resume from, so its next reset would skip this bucket's real updates. A
    watcher that saw a foreign delivery is therefore spent: ``updates`` raises :class:`WatchTainted`, and
    :meth:`KV.watch` starts a new one, which delivers every key's current value again.
    ``updates(timeout)`` and ``stop()`` are those of nats-py's watcher.
    """

    def __init__(self, bucket: str, keys: str, on_foreign: ForeignDelivery) -> None:
        self.bucket = bucket
        self.stream = f"KV_{bucket}"
        self.prefix = f"$KV.{bucket}."
        self.filter = f"{self.prefix}{keys}"
        self._on_foreign = on_foreign
        self._updates: asyncio.Queue[Any] = asyncio.Queue(maxsize=WATCH_QUEUE)
        self._sub: Any = None
        self._init_done = False
        self._tainted = ""  # why this watcher is spent (a foreign delivery came in)

    @classmethod
    async def open(
        cls,
        js: JetStreamContext,
        bucket: str,
        keys: str,
        include_history: bool,
        on_foreign: ForeignDelivery,
    ) -> KvWatcher:
        w = cls(bucket, keys, on_foreign)
        await w._start(js, include_history)
        return w

    def foreign(self, msg: Msg) -> str:
        """Why ``msg`` is not an entry of the watched keys ("" when it is one)."""
        try:
            stream = msg.metadata.stream
        except Exception:
            return "no JetStream delivery metadata"
        if stream != self.stream:
            return f"delivered from stream {stream[:64]!r}, not {self.stream}"
        if not subject_matches(self.filter, msg.subject):
            return f"subject {msg.subject[:200]!r} is not under {self.filter}"
        return ""

    async def _start(self, js: JetStreamContext, include_history: bool) -> None:
        started: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Msg) -> None:
            if not started.done():
                await asyncio.wait_for(asyncio.shield(started), 5.0)
            why = self.foreign(msg)
            if why:
                task = asyncio.get_running_loop().create_task(self._on_foreign(msg, why))
                _REPORTS.add(task)  # outlives this watcher: the report is sent even after it stopped
                task.add_done_callback(_REPORTS.discard)
                if not self._tainted:
                    self._tainted = why
                    with contextlib.suppress(asyncio.QueueFull):
                        self._updates.put_nowait(_TAINTED)
                return
            if self._tainted:
                return
            meta = msg.metadata
            op = _kv_operation(msg)
            if op is not None:
                entry = KeyValue.Entry(
                    bucket=self.bucket,
                    key=msg.subject[len(self.prefix) :],
                    value=msg.data,
                    revision=meta.sequence.stream,
                    delta=meta.num_pending,
                    created=None,
                    operation=op,
                )
                await self._updates.put(entry)
            if meta.num_pending == 0 and not self._init_done:
                await self._updates.put(None)
                self._init_done = True

        self._sub = await js.subscribe(
            self.filter,
            stream=self.stream,
            cb=on_msg,
            ordered_consumer=True,
            deliver_policy=None if include_history else api.DeliverPolicy.LAST_PER_SUBJECT,
            inactive_threshold=300.0,
        )
        await asyncio.sleep(0)
        try:
            info = await self._sub.consumer_info()
            started.set_result(True)
            if info.num_pending == 0 and self._sub.delivered == 0:
                await self._updates.put(None)
                self._init_done = True
        except BaseException:
            started.cancel()
            await self._sub.unsubscribe()
            raise

    async def updates(self, timeout: float = 5.0) -> Any:
        """The next entry (nats-py's ``KeyValue.Entry``) or ``None`` (current values done); raises
        :class:`WatchTainted` once a foreign delivery came in."""
        if self._tainted:
            raise WatchTainted(self._tainted)
        try:
            async with asyncio.timeout(timeout):  # (wait_for can swallow a cancellation of the caller)
                item = await self._updates.get()
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        if item is _TAINTED or self._tainted:
            raise WatchTainted(self._tainted)
        return item

    async def stop(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()


class WatchTainted(nats.errors.Error):
    """A KV watcher received a delivery that is not an entry of its bucket: it must be replaced."""


_TAINTED = object()  # queued to wake a reader of a tainted watcher
_REPORTS: set[asyncio.Task[None]] = set()  # reports of foreign deliveries still being published


def _kv_operation(msg: Msg) -> str | None:
    """PUT, DEL or PURGE from a KV message's headers (server expiry markers included); None for a marker
    of a kind this client does not know (skipped, as nats-py does)."""
    headers = msg.headers or {}
    op = headers.get("KV-Operation")
    if op:
        return str(op)
    reason = headers.get("Nats-Marker-Reason")
    if reason is None:
        return "PUT"
    return {"MaxAge": "PURGE", "Purge": "PURGE", "Remove": "DEL"}.get(reason)


def _kv_entry(e: Any) -> KvEntry:
    op = str(e.operation or "PUT")
    op = op.split(".")[-1] if "." in op else op
    return KvEntry(e.key, e.value or b"", e.revision or 0, op)


async def _late_initial(w: Any) -> AsyncIterator[KvEntry]:
    """Current values delivered after nats-py said they were done (see :meth:`KV.watch`)."""
    timeout = WATCH_INIT_GRACE_S
    while True:
        try:
            e = await w.updates(timeout=timeout)
        except TimeoutError:
            return
        if e is None:
            continue
        yield _kv_entry(e)
        if not e.delta:
            return  # nothing pending after it: that was the last current value
        timeout = 5.0  # more are on their way


def _tls_context(cfg: ServiceConfig) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cfg.ca_file))
    ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _stream_config(d: Mapping[str, Any], replicas: int) -> api.StreamConfig:
    return api.StreamConfig(
        name=d["name"],
        subjects=list(d["subjects"]),
        retention=api.RetentionPolicy(d.get("retention", "limits")),
        storage=api.StorageType(d.get("storage", "file")),
        discard=api.DiscardPolicy(d.get("discard", "old")),
        duplicate_window=float(d.get("duplicate_window", 120)),
        max_age=float(d.get("max_age", 0)),
        max_msgs_per_subject=int(d.get("max_msgs_per_subject", -1)),
        max_msg_size=int(d.get("max_msg_size", -1)),
        num_replicas=replicas,
        deny_delete=bool(d.get("deny_delete", False)),
        deny_purge=bool(d.get("deny_purge", False)),
        allow_rollup_hdrs=bool(d.get("allow_rollup_hdrs", False)),
    )


async def _nak_quietly(msgs: list[Msg]) -> None:
    """Hand fetched messages back to the server (best effort: it redelivers them after ack_wait anyway)."""
    for msg in msgs:
        with contextlib.suppress(Exception):
            await msg.nak()


class ConsumerGone(RuntimeError):
    """The server ended a pull consumer (deleted, or it changed into something a pull cannot use)."""


class _PullFeed:
    """A continuous pull on one durable consumer: pull requests stay outstanding on the server, so a new
    message is pushed to our inbox the moment it is stored, and the next batch is requested while this
    one is handled (no fetch round trip per batch, and no probe/linger cycle: nats-py's ``fetch(n)``
    could wait out its whole timeout for messages of a batch that never came).

    Flow control: at most about ``batch`` messages are requested but not yet handled (requested,
    in flight, or queued here); a refill is sent when that falls to half. Requests expire after
    ``EXPIRES_S`` (the server says how many it left unfilled); idle heartbeats prove they are alive, and
    when neither a message nor a heartbeat came for ``3 * HEARTBEAT_S`` (a reconnect, a restarted
    server) the accounting is reset and a fresh request sent. Messages delivered to a request nobody
    listens to any more stay unacked and come back after ``ack_wait``, as with any crashed consumer.
    """

    EXPIRES_S = 30.0
    HEARTBEAT_S = 2.0

    def __init__(self, nc: NATS, stream: str, durable: str, batch: int) -> None:
        self.nc = nc
        self.batch = batch
        self.subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.inbox = ""
        self.sub: Any = None
        self.queue: list[Msg] = []
        self.arrived = asyncio.Event()
        self.outstanding = 0  # requested, not yet delivered or expired
        self.last_seen = time.monotonic()
        self.gone: str = ""

    async def start(self) -> None:
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(self.inbox, cb=self._on_msg)
        await self._top_up()

    async def stop(self) -> None:
        if self.sub is not None:
            with contextlib.suppress(Exception):
                await self.sub.unsubscribe()
            self.sub = None

    async def _request(self, n: int) -> None:
        body = b'{"batch":%d,"expires":%d,"idle_heartbeat":%d}' % (
            n,
            int(self.EXPIRES_S * 1e9),
            int(self.HEARTBEAT_S * 1e9),
        )
        self.outstanding += n
        await self.nc.publish(self.subject, body, reply=self.inbox)

    async def _top_up(self) -> None:
        in_hand = self.outstanding + len(self.queue)
        if in_hand <= self.batch // 2:
            await self._request(self.batch - in_hand)

    async def _on_msg(self, msg: Msg) -> None:
        self.last_seen = time.monotonic()
        status = msg.headers.get(api.Header.STATUS) if msg.headers else None
        if not status:
            self.outstanding = max(0, self.outstanding - 1)
            self.queue.append(msg)
            self.arrived.set()
            return
        if status == api.StatusCode.CONTROL_MESSAGE:  # idle heartbeat (or flow control): alive
            return
        unfilled = msg.headers.get("Nats-Pending-Messages") if msg.headers else None
        if unfilled is not None and unfilled.isdigit():
            self.outstanding = max(0, self.outstanding - int(unfilled))
        else:
            self.outstanding = 0
        description = (msg.headers.get(api.Header.DESCRIPTION) or "") if msg.headers else ""
        if status == "409" and ("Deleted" in description or "Push Based" in description):
            self.gone = description or status
            self.arrived.set()
            return
        with contextlib.suppress(Exception):
            await self._top_up()  # an expired request (408) or a refused one (409 max waiting...)

    async def fetch(self, timeout: float, linger: float = 0.0) -> list[Msg]:
        """The next messages (up to ``batch``), waiting up to ``timeout`` for the first; [] when none.
        ``linger``: once the first is there, wait up to that long for the batch to fill (fewer, bigger
        batches for a consumer whose cost is mostly per batch)."""
        if not self.queue and not self.gone:
            self.arrived.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout)
        if linger > 0 and self.queue:
            deadline = time.monotonic() + linger
            while len(self.queue) < self.batch and not self.gone:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), left)
        if self.gone:
            raise ConsumerGone(self.gone)
        if self.queue:
            # messages that came in the same read are still on their way to _on_msg: let them land, so a
            # burst (a redelivery, a backlog) makes one batch rather than a batch per message
            pending = getattr(self.sub, "_pending_queue", None)  # nats-py's per-subscription queue
            for _ in range(4 * self.batch):
                if pending is None or pending.empty() or len(self.queue) >= self.batch:
                    break
                await asyncio.sleep(0)
        msgs, self.queue = self.queue[: self.batch], self.queue[self.batch :]
        if not msgs and time.monotonic() - self.last_seen > 3 * self.HEARTBEAT_S:
            self.outstanding = 0  # our requests are gone (reconnect, server restart): ask afresh
            self.last_seen = time.monotonic()
        await self._top_up()
        return msgs


class Bus:
    """One identity's connection to the bus. Create with :meth:`connect`."""

    def __init__(
        self,
        cfg: ServiceConfig,
        nc: NATS,
        keys: IdentityKeys,
        identities: Identities,
        registry: Registry | None,
    ) -> None:
        self.cfg = cfg
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.keys = keys
        self.identities = identities
        self.registry: dict[str, type[msgspec.Struct]] = {**BUILTIN_TYPES, **(registry or {})}
        check_registry(self.registry)
        self.identity = cfg.identity
        self.service = cfg.name
        self.log = get_logger(cfg.name)
        self._stopping = asyncio.Event()
        self._generation = 0  # bumped on every reconnect: pull subscriptions and watchers re-create
        self._consumers: set[asyncio.Task[None]] = set()
        self._kvs: dict[str, KV] = {}
        # per-sender flood limit on what this identity consumes (None: off; the recorder, which must apply
        # every message in stream order, turns it off)
        self.sender_rate: SenderRateLimiter | None = SenderRateLimiter.from_config(cfg.extra)

    # ---- connection -------------------------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        cfg: ServiceConfig,
        *,
        registry: Registry | None = None,
        ensure: bool | None = None,
        timeout: float = 30.0,
    ) -> Bus:
        """Connect as ``cfg.identity``; ``ensure``: create/update streams and buckets (default: only
        when the identity is ``admin``; others wait until they exist)."""
        keys = IdentityKeys.load(cfg.data_dir, cfg.identity)
        identities = Identities.load(cfg.identities_file)
        holder: list[Bus] = []
        log = get_logger(cfg.name)

        async def on_error(exc: Exception) -> None:
            log.warning("nats error", error=repr(exc)[:300])

        async def on_disconnect() -> None:
            if not (holder and holder[0]._stopping.is_set()):
                log.warning("nats disconnected")

        async def on_reconnect() -> None:
            M.NATS_RECONNECTS.labels(cfg.name).inc()
            log.info("nats reconnected")
            if holder:
                holder[0]._generation += 1

        nc = await asyncio.wait_for(
            nats.connect(
                servers=[u.strip() for u in cfg.nats_url.split(",") if u.strip()],
                tls=_tls_context(cfg),
                name=f"{cfg.name}:{cfg.identity}",
                inbox_prefix=inbox_prefix(cfg.identity),
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                connect_timeout=5,
                drain_timeout=3,  # a stuck subscription must not hold a stopping service past the supervisor
                error_cb=on_error,
                disconnected_cb=on_disconnect,
                reconnected_cb=on_reconnect,
            ),
            timeout,
        )
        bus = cls(cfg, nc, keys, identities, registry)
        holder.append(bus)
        try:
            if ensure is None:
                ensure = cfg.identity == "admin"
            await bus.ensure_jetstream(create=ensure, timeout=timeout)
        except BaseException:
            await nc.close()
            raise
        return bus

    async def ensure_jetstream(self, *, create: bool, timeout: float = 30.0) -> None:
        """Streams and buckets from ``nats/jetstream.json``: created/updated (idempotent) when ``create``,
        else awaited until they exist.

        Creating retries until ``timeout`` while JetStream cannot answer yet: a cluster that has just
        started (or restarted on its stores) elects its meta leader and stream leaders first, and requests
        sent meanwhile time out or answer 503."""
        defs = jetstream_definitions()
        replicas = int(self.cfg.extra.get("nats_replicas", 1))
        if create:
            deadline = time.monotonic() + timeout
            delay = 0.25
            while True:
                try:
                    await self._create_jetstream(defs, replicas)
                    await self.ensure_durables([*self.cfg.nodes, *SERVICE_IDENTITIES])
                    return
                except JETSTREAM_NOT_READY as exc:
                    if time.monotonic() + delay > deadline:
                        raise StreamsMissing(
                            f"JetStream did not answer within {timeout:.0f}s: {type(exc).__name__}"
                        ) from exc
                    await asyncio.sleep(delay)
                    delay = min(2.0, delay * 2)
        names = [sd["name"] for sd in defs["streams"]] + [f"KV_{bd['bucket']}" for bd in defs["buckets"]]
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                try:
                    await self.js.stream_info(name)
                    break
                except nats.js.errors.NotFoundError:
                    if time.monotonic() > deadline:
                        raise StreamsMissing(
                            f"JetStream stream {name} does not exist: start the cluster with `mpcw up` "
                            "(or connect once as admin)"
                        ) from None
                    await asyncio.sleep(0.25)

    async def ensure_durables(self, identities: list[str]) -> None:
        """Make every durable consumer of ``identities`` (``schemas.names.CONSUMERS``) that does not exist
        yet, as a pull consumer (admin, with the streams). Its owner may then only update it: the server
        refuses to turn a pull consumer into a push one, and no identity may delete its durables, so none
        can have its deliveries pushed to a subject of its choosing (nats-server does not check a deliver
        subject against its creator's rights)."""
        d = jetstream_definitions()["consumer_defaults"]
        for identity in identities:
            for name, subject in consumers_of(identity).items():
                stream = stream_for(subject)
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    await self.js.consumer_info(stream, name)
                    continue
                config = api.ConsumerConfig(
                    name=name,
                    durable_name=name,
                    filter_subject=subject,
                    ack_policy=api.AckPolicy(d["ack_policy"]),
                    ack_wait=float(d["ack_wait"]),
                    max_ack_pending=int(d["max_ack_pending"]),
                    max_deliver=int(d["max_deliver"]),
                    deliver_policy=api.DeliverPolicy(d["deliver_policy"]),
                )
                await self.js.add_consumer(stream, config=config)

    async def _create_jetstream(self, defs: Mapping[str, Any], replicas: int) -> None:
        """One idempotent pass: every stream and bucket created, or brought up to date."""
        for sd in defs["streams"]:
            sc = _stream_config(sd, replicas)
            try:
                await self.js.stream_info(sc.name or "")
                await self.js.update_stream(sc)
            except nats.js.errors.NotFoundError:
                await self.js.add_stream(sc)
        for bd in defs["buckets"]:
            try:
                await self.js.key_value(bd["bucket"])
                # a bucket made by an older version: bring its TTL (the stream's max_age) up to date
                info = await self.js.stream_info(f"KV_{bd['bucket']}")
                ttl = float(bd.get("ttl") or 0)
                if abs(float(info.config.max_age or 0) - ttl) > 0.001:
                    info.config.max_age = ttl
                    await self.js.update_stream(info.config)
            except nats.js.errors.BucketNotFoundError:
                await self.js.create_key_value(
                    api.KeyValueConfig(
                        bucket=bd["bucket"],
                        description=bd.get("description"),
                        history=int(bd.get("history", 1)),
                        ttl=float(bd["ttl"]) if bd.get("ttl") else None,
                        storage=api.StorageType(bd.get("storage", "file")),
                        replicas=replicas,
                    )
                )

    @property
    def stopping(self) -> asyncio.Event:
        return self._stopping

    async def stop_consuming(self, timeout: float = 30.0) -> None:
        """Stop every consumer loop after its in-flight handler finished (and was acked)."""
        self._stopping.set()
        tasks = list(self._consumers)
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def close(self, timeout: float = 30.0) -> None:
        """Graceful: stop consuming, flush, drain the connection."""
        await self.stop_consuming(timeout)
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=2)
            with contextlib.suppress(Exception):
                await self.nc.drain()
            if not self.nc.is_closed:
                await self.nc.close()

    # ---- envelopes --------------------------------------------------------------------------------------

    def seal(self, subject: str, struct: msgspec.Struct, msg_id: str, to: str | None = None) -> bytes:
        """The signed (and for ``to``, encrypted) envelope bytes for ``struct`` on ``subject``."""
        env = seal(
            self.keys,
            self.identities,
            subject=subject,
            type_name=tag_of(type(struct)),
            payload=msgspec.msgpack.encode(struct),
            msg_id=msg_id,
            to=to,
        )
        return E.encode(env)

    def verify_envelope(self, raw: bytes) -> E.Envelope:
        """Check a raw envelope's signature (e.g. each vote of a quorum certificate); EnvelopeError if bad."""
        return _verify_envelope(raw, self.identities)

    def open(self, raw: bytes, subject: str, registry: Registry | None = None) -> tuple[E.Envelope, Any]:
        """Verify ``raw`` as delivered on ``subject``; return the envelope and the decoded payload (None
        when addressed to someone else). Raises :class:`EnvelopeError`."""
        env = _verify_envelope(raw, self.identities)
        check_delivery(env, subject)
        plain = open_payload(env, self.keys)
        if plain is None:
            return env, None
        reg = registry if registry is not None else self.registry
        try:
            return env, decode_payload(reg if env.type in reg else BUILTIN_TYPES, env.type, plain)
        except UnknownType as exc:
            raise EnvelopeError("unknown-type", str(exc), env.sender, True) from None
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EnvelopeError("bad-payload", f"{env.type[:64]}: {exc}"[:200], env.sender, True) from None

    # ---- publish ----------------------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        struct: msgspec.Struct,
        msg_id: str,
        to: str | None = None,
        *,
        timeout: float = 5.0,
    ) -> api.PubAck:
        """Sign (encrypt to ``to``), publish with ``Nats-Msg-Id: msg_id``, return the PubAck."""
        data = self.seal(subject, struct, msg_id, to)
        return await self.publish_raw(subject, data, msg_id, timeout=timeout)

    async def publish_raw(
        self, subject: str, data: bytes, msg_id: str, *, timeout: float = 5.0
    ) -> api.PubAck:
        """Publish already-sealed bytes (re-publishing, tests)."""
        stream = stream_for(subject)
        t0 = time.perf_counter()
        ack = await self.js.publish(
            subject, data, timeout=timeout, stream=stream, headers={"Nats-Msg-Id": msg_id}
        )
        M.PUBLISH_SECONDS.labels(self.service).observe(time.perf_counter() - t0)
        if ack.duplicate:
            M.PUBLISH_DUPLICATES.labels(self.service, stream).inc()
        else:
            M.MESSAGES_PUBLISHED.labels(self.service, stream).inc()
        return ack

    # ---- consume ----------------------------------------------------------------------------------------

    def start_consumer(
        self, subject_filter: str, durable: str, handler: Handler, **kw: Any
    ) -> asyncio.Task[None]:
        """Run :meth:`consume` as a task tracked for graceful shutdown."""
        return asyncio.get_running_loop().create_task(
            self.consume(subject_filter, durable, handler, **kw), name=f"consume:{durable}"
        )

    async def consume(
        self,
        subject_filter: str,
        durable: str,
        handler: Handler,
        *,
        registry: Registry | None = None,
        batch: int = 16,
        max_ack_pending: int = 1000,
        fetch_timeout: float = 1.0,
        ack_wait: float = 10.0,
        nak_delay: float = 0.5,
        poison_after: int = 5,
        deliver_policy: str = "all",
        stop: asyncio.Event | None = None,
    ) -> None:
        """Durable pull-consumer loop for a handler of one message: every fetched message is handled as a
        batch of one by :meth:`consume_batch` (the same verification, ack, nak and poison rules), in
        stream order, and acked before the next one is handled. ``batch``: messages per fetch; returns
        when the bus (or ``stop``) is stopping."""

        async def one(recs: list[Received]) -> None:
            await handler(recs[0])

        await self.consume_batch(
            subject_filter,
            durable,
            one,
            registry=registry,
            batch=batch,
            max_ack_pending=max_ack_pending,
            fetch_timeout=fetch_timeout,
            ack_wait=ack_wait,
            nak_delay=nak_delay,
            poison_after=poison_after,
            deliver_policy=deliver_policy,
            stop=stop,
            one_by_one=True,
        )

    async def _pull_loop(
        self,
        subject_filter: str,
        durable: str,
        process: Callable[[list[Msg], Callable[[], bool]], Awaitable[None]],
        *,
        batch: int,
        fetch_timeout: float,
        ack_wait: float,
        max_ack_pending: int,
        deliver_policy: str,
        stop: asyncio.Event | None,
        resume_from: Callable[[], Awaitable[int]] | None = None,
        linger: float = 0.0,
    ) -> None:
        """The pull-consumer loop behind :meth:`consume_batch` (and so :meth:`consume`).

        (Re)creates the durable pull subscription (on start, after a reconnect and after an error),
        fetches up to ``batch`` messages and awaits ``process(msgs, stopping)`` with them; ``stopping()``
        tells whether the bus (or ``stop``) is stopping, in which case ``process`` naks what it will not
        handle and the loop ends. A fetch timeout means no work. Any other error unsubscribes the failed
        subscription and re-subscribes after a growing back-off. The running task is registered in
        ``self._consumers`` so :meth:`stop_consuming` waits for it.
        """
        task = asyncio.current_task()
        if task is not None:
            self._consumers.add(task)
        stop_ev = stop or self._stopping

        def stopping() -> bool:
            return stop_ev.is_set() or self._stopping.is_set()

        stream = stream_for(subject_filter)
        sub: _PullFeed | None = None
        gen = -1
        backoff = 0.2
        try:
            while not stopping():
                try:
                    if sub is None or gen != self._generation:
                        if sub is not None:
                            await sub.stop()
                        gen = self._generation
                        config = api.ConsumerConfig(
                            ack_policy=api.AckPolicy.EXPLICIT,
                            ack_wait=ack_wait,
                            max_deliver=-1,
                            max_ack_pending=max_ack_pending,
                            deliver_policy=api.DeliverPolicy(deliver_policy),
                        )
                        await self._ensure_consumer(stream, durable, subject_filter, config)
                        if resume_from is not None:
                            start = max(1, await resume_from())
                            await self._reset_consumer(stream, durable, start)
                            self.log.info("consumer resumes", durable=durable, stream=stream, start_seq=start)
                        sub = _PullFeed(self.nc, stream, durable, batch)
                        await sub.start()
                    msgs = await sub.fetch(fetch_timeout, linger)
                    backoff = 0.2
                    if msgs:
                        await process(msgs, stopping)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.log.warning("consumer error; re-subscribing", durable=durable, error=repr(exc)[:300])
                    if sub is not None:  # a leaked subscription would stall drain() on close
                        await sub.stop()
                    sub = None
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            if sub is not None:
                await sub.stop()
            if task is not None:
                self._consumers.discard(task)

    async def _reset_consumer(self, stream: str, durable: str, seq: int) -> None:
        """Move the durable ``durable`` to stream sequence ``seq``: what it delivered and did not get acked
        is forgotten, the next delivery is the first message at or after ``seq``."""
        reply = await self.nc.request(
            f"$JS.API.CONSUMER.RESET.{stream}.{durable}", json.dumps({"seq": seq}).encode(), timeout=5.0
        )
        answer = json.loads(reply.data)
        if answer.get("error"):
            raise nats.js.errors.APIError.from_error(answer["error"])

    async def _ensure_consumer(
        self, stream: str, durable: str, subject_filter: str, config: api.ConsumerConfig
    ) -> None:
        """Create the durable pull consumer unless it exists; an existing one keeps its position and gets
        the current ``ack_wait`` and ``max_ack_pending`` (settings a newer version may have changed)."""
        try:
            info = await self.js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            info = None
        if info is not None:
            have = info.config
            if have.ack_wait != config.ack_wait or have.max_ack_pending != config.max_ack_pending:
                have.ack_wait, have.max_ack_pending = config.ack_wait, config.max_ack_pending
                try:
                    await self.js.add_consumer(stream, config=have)  # the same durable: an update
                except nats.js.errors.APIError as exc:
                    self.log.warning("consumer settings not updated", durable=durable, error=str(exc)[:200])
            return
        config.durable_name = durable
        config.name = durable
        config.filter_subject = subject_filter
        await self.js.add_consumer(stream, config=config)

    def start_batch_consumer(
        self, subject_filter: str, durable: str, handler_batch: BatchHandler, **kw: Any
    ) -> asyncio.Task[None]:
        """Run :meth:`consume_batch` as a task tracked for graceful shutdown."""
        return asyncio.get_running_loop().create_task(
            self.consume_batch(subject_filter, durable, handler_batch, **kw), name=f"consume:{durable}"
        )

    async def consume_batch(
        self,
        subject_filter: str,
        durable: str,
        handler_batch: BatchHandler,
        *,
        registry: Registry | None = None,
        batch: int = 256,
        max_ack_pending: int | None = None,
        fetch_timeout: float = 1.0,
        ack_wait: float = 10.0,  # a crashed consumer's messages come back after this (handlers keep alive)
        nak_delay: float = 0.5,
        poison_after: int = 5,
        deliver_policy: str = "all",
        stop: asyncio.Event | None = None,
        resume_from: Callable[[], Awaitable[int]] | None = None,
        linger: float = 0.0,
        one_by_one: bool = False,
    ) -> None:
        """Durable pull-consumer loop that hands ``handler_batch`` every fetched batch at once (with
        ``one_by_one``: every fetched message as a batch of its own, see :meth:`consume`).

        Each fetched message is verified (:meth:`_receive`); invalid ones are terminated, reported on
        ``node.violation.<offender>`` and left out. The valid ones are passed together, in stream order,
        to ONE awaited ``handler_batch(list[Received])`` call; all of them are acked only after it
        returns. When it raises :class:`RetryLater` they are all nak'ed with its delay; any other
        exception naks them all with a delay that doubles with every delivery (from ``nak_delay``),
        except those delivered ``poison_after`` times, which are terminated and reported.
        A ``CancelledError`` (a crash) acks nothing: the server redelivers after ``ack_wait``.

        ``max_ack_pending`` defaults to ``batch``: while this loop runs, the server never hands out a
        message before every earlier one was acked, so batches arrive in stream order. That alone does
        not hold across a crash: a dead instance's unacked batch is redelivered only after ``ack_wait``,
        and if it held fewer than ``max_ack_pending`` messages, later ones can be delivered first. A
        caller that keeps its own position (an exactly-once guard that skips ``seq <= stored``) passes
        ``resume_from``: on every (re)subscribe the durable is reset (``$JS.API.CONSUMER.RESET``; it keeps
        its name and configuration, and no identity may delete its durables) to start at the stream
        sequence ``await resume_from()`` returns (its position + 1), dropping the server's record of unacked
        deliveries, so nothing after the position can overtake anything before it.

        ``linger``: once a message is there, wait up to that many seconds for the batch to fill before
        handling it (for a handler whose cost is mostly per batch, like the recorder's transaction).
        """
        reg = {**BUILTIN_TYPES, **registry} if registry is not None else self.registry

        async def process(msgs: list[Msg], stopping: Callable[[], bool]) -> None:
            done = 0
            for group in [[msg] for msg in msgs] if one_by_one else [msgs]:
                if stopping():
                    await _nak_quietly(msgs[done:])  # hand back what we will not process
                    return
                await self._handle(group, durable, handler_batch, reg, nak_delay, poison_after, ack_wait)
                done += len(group)

        await self._pull_loop(
            subject_filter,
            durable,
            process,
            batch=batch,
            fetch_timeout=fetch_timeout,
            ack_wait=ack_wait,
            max_ack_pending=max_ack_pending if max_ack_pending is not None else batch,
            deliver_policy=deliver_policy,
            stop=stop,
            resume_from=resume_from,
            linger=linger,
        )

    def publisher_of(self, subject: str) -> str:
        """The one identity (admin aside) that may publish on ``subject``, else ``unknown``."""
        who = [i for i in self.identities if i != "admin" and sender_may_publish(i, subject)]
        return who[0] if len(who) == 1 else UNKNOWN

    async def _receive(self, msg: Msg, registry: Registry) -> Received | None:
        """Verify and decode one delivered message; an invalid one is reported, terminated, and None."""
        meta = msg.metadata
        seq = meta.sequence.stream
        stream = meta.stream
        try:
            env, payload = self.open(msg.data, msg.subject, registry)
        except EnvelopeError as exc:
            M.MESSAGES_REJECTED.labels(self.service, exc.kind).inc()
            self.log.warning(
                "dropped invalid message",
                kind=exc.kind,
                subject=msg.subject,
                stream=stream,
                seq=seq,
                detail=exc.detail[:200],
            )
            offender = exc.sender if (exc.verified and exc.sender) else UNKNOWN
            detail = (
                exc.detail
                if exc.verified or not exc.sender
                else f"{exc.detail} (claimed: {exc.sender[:64]!r})"
            )
            if exc.kind == "subject-mismatch":
                # a genuine message moved to another subject: its signer did not put it there (blaming it
                # would let any identity get an honest one banned by re-publishing its messages); the one
                # identity the broker lets publish on the delivery subject did
                offender = self.publisher_of(msg.subject)
                signer = (exc.sender or "")[:64]
                detail = f"{exc.detail}, signed by {signer}, delivered on {msg.subject[:200]}"
            await self.report(offender, exc.kind, detail, msg.subject, stream, seq, msg.data)
            await msg.term()
            return None
        now = time.monotonic()
        if self.sender_rate is not None and not self.sender_rate.admit(env.sender, now):
            # a flood: slowed, never dropped (the server redelivers it later), reported now and then
            M.MESSAGES_REJECTED.labels(self.service, "flood").inc()
            await msg.nak(delay=NAK_DELAY_S)
            over = self.sender_rate.report_due(env.sender, now)
            if over:
                limit = f"{self.sender_rate.per_second:g}/s (burst {self.sender_rate.burst:g})"
                self.log.warning("sender over its rate limit", sender=env.sender, over=over, limit=limit)
                detail = f"{over} messages over {limit} to {self.service}; delayed, not dropped"
                await self.report(env.sender, "flood", detail, msg.subject, stream, seq, msg.data)
            return None
        return Received(
            subject=msg.subject,
            sender=env.sender,
            payload=payload,
            seq=seq,
            msg_id=env.msg_id,
            envelope_raw=msg.data,
            envelope=env,
            stream=stream,
            num_delivered=meta.num_delivered,
        )

    async def _handle(
        self,
        msgs: list[Msg],
        durable: str,
        handler_batch: BatchHandler,
        registry: Registry,
        nak_delay: float,
        poison_after: int,
        ack_wait: float,
    ) -> None:
        """Verify ``msgs``, hand the valid ones to ``handler_batch`` in one call, then ack them all; on
        :class:`RetryLater` nak them with its delay, on any other error nak or terminate each
        (:meth:`_poison_or_nak`); on cancellation (a crash) leave them unacked."""
        valid: list[tuple[Msg, Received]] = []
        for msg in msgs:
            rec = await self._receive(msg, registry)
            if rec is not None:
                valid.append((msg, rec))
        if not valid:
            return
        keepalive = asyncio.get_running_loop().create_task(
            self._keepalive([msg for msg, _ in valid], ack_wait)
        )
        t0 = time.perf_counter()
        try:
            await handler_batch([rec for _, rec in valid])
        except asyncio.CancelledError:
            raise  # a crash: no ack, the server redelivers after ack_wait
        except RetryLater as later:
            for msg, _ in valid:
                await msg.nak(delay=later.delay)
            return
        except Exception as exc:
            M.HANDLER_FAILURES.labels(self.service, durable).inc()
            self.log.warning(
                "handler failed; nak",
                durable=durable,
                first_seq=valid[0][1].seq,
                last_seq=valid[-1][1].seq,
                error=repr(exc)[:300],
            )
            for msg, rec in valid:
                if rec.num_delivered >= poison_after:
                    self.log.warning(
                        "poison message terminated",
                        durable=durable,
                        subject=rec.subject,
                        seq=rec.seq,
                        deliveries=rec.num_delivered,
                    )
                await self._poison_or_nak(msg, rec, durable, exc, nak_delay, poison_after)
            return
        finally:
            keepalive.cancel()
        M.HANDLER_SECONDS.labels(self.service, durable).observe(time.perf_counter() - t0)
        for msg, _ in valid:
            await msg.ack()  # buffered: the client's flusher sends them with its next write
        M.MESSAGES_CONSUMED.labels(self.service, durable).inc(len(valid))

    async def _poison_or_nak(
        self, msg: Msg, rec: Received, durable: str, exc: Exception, nak_delay: float, poison_after: int
    ) -> None:
        """After a failed handler: terminate and report a message delivered ``poison_after`` times, else
        nak it with a delay that doubles with every delivery."""
        if rec.num_delivered >= poison_after:
            M.MESSAGES_REJECTED.labels(self.service, "poison").inc()
            why = f"{durable}: {type(exc).__name__}"
            await self.report(rec.sender, "poison", why, rec.subject, rec.stream, rec.seq, msg.data)
            await msg.term()
        else:
            await msg.nak(delay=nak_delay * (2 ** (rec.num_delivered - 1)))

    async def _keepalive(self, msgs: list[Msg], ack_wait: float) -> None:
        """Tell the server long handlers are still working, so it does not redeliver meanwhile."""
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(max(ack_wait / 3, 0.2))
                for msg in msgs:
                    await msg.in_progress()

    async def report(
        self, offender: str, kind: RejectionKind, detail: str, subject: str, stream: str, seq: int, raw: bytes
    ) -> None:
        """Publish a :class:`BusRejection` on ``node.violation.<offender>`` (best effort, never raises)."""
        try:
            rej = E.BusRejection(
                offender=offender,
                kind=kind,
                detail=detail[:500],
                reporter=self.identity,
                subject=subject,
                stream=stream,
                stream_seq=seq,
                evidence=raw[: E.EVIDENCE_MAX],
            )
            await self.publish(
                violation_subject(offender), rej, f"rej.{self.identity}.{self.service}.{stream}.{seq}.{kind}"
            )
        except Exception as exc:
            self.log.error("could not report a rejected message", kind=kind, error=repr(exc)[:300])

    # ---- key-value --------------------------------------------------------------------------------------

    async def kv(self, bucket: str) -> KV:
        kv = self._kvs.get(bucket)
        if kv is None:
            kv = KV(self, bucket, await self.js.key_value(bucket))
            self._kvs[bucket] = kv
        return kv


def verify_envelope(raw: bytes, identities: Identities) -> E.Envelope:
    """Module-level form for anyone holding identities.json (e.g. an auditor checking a certificate)."""
    return _verify_envelope(raw, identities)


__all__ = [
    "KV",
    "BatchHandler",
    "Bus",
    "CasConflict",
    "EnvelopeError",
    "Handler",
    "Identities",
    "KvEntry",
    "Received",
    "RetryLater",
    "StreamsMissing",
    "verify_envelope",
]


@dataclass(frozen=True)
class StoredMessage:
    """A message as a stream holds it."""

    stream_seq: int
    subject: str
    data: bytes


class StoredUnreadable(RuntimeError):
    """A stream's messages could not all be read (the broker stopped answering)."""


async def read_stored(
    js: JetStreamContext, stream: str, subjects: str, timeout: float = 10.0, batch: int = 1000
) -> list[StoredMessage]:
    """Every message stored in ``stream`` under ``subjects``, in stream order, through one ephemeral
    consumer (no acks; deleted afterwards). Raw bytes: the caller verifies what it reads."""
    sub = await js.pull_subscribe(
        subjects,
        stream=stream,
        config=api.ConsumerConfig(
            ack_policy=api.AckPolicy.NONE, deliver_policy=api.DeliverPolicy.ALL, inactive_threshold=60.0
        ),
    )
    out: list[StoredMessage] = []
    info = await sub.consumer_info()
    try:
        pending = int(info.num_pending or 0)
        while len(out) < pending:
            try:
                msgs = await sub.fetch(min(batch, pending - len(out)), timeout=timeout)
            except nats.errors.TimeoutError:
                raise StoredUnreadable(
                    f"{stream} {subjects}: read {len(out)} of {pending}, then nothing"
                ) from None
            out += [StoredMessage(m.metadata.sequence.stream, m.subject, m.data) for m in msgs]
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await js.delete_consumer(stream, info.name)
    out.sort(key=lambda s: s.stream_seq)
    return out
