"""Signed key-value entries: every KV value a service acts on is signed by the identity entitled to write it,
and checked on every read and every watch update.

Theory of operation
-------------------
A signed value IS a bus envelope (``schemas.envelope.Envelope``) sealed with the writer's identity key, with
``subject = $KV.<bucket>.<key>`` (so a value copied to another key or bucket does not verify there),
``type`` = the payload struct's name and ``ts_ms`` = the value's version: the writer makes it strictly
greater than the ``ts_ms`` of the value it replaces (``max(now, previous + 1)``), so per key the versions
only grow. Who may sign which key is data: ``schemas.names.KV_WRITERS``.

A reader (:class:`SignedKV`, one per bucket and process) accepts a value at ``<bucket>/<key>`` only if
it is an envelope, its signature verifies, its signer may write the key it names, it names this very key,
its type is the one expected and its version is newer than the last value accepted for that key. Anything
else is ignored, the value in force stays in force, and the rejection is published on
``node.violation.<offender>`` (``Bus.report``) with the stored bytes as evidence. The offender is the
signer only when the signature itself convicts it (it signed a value for a key it may not write, or a
payload that does not decode as its type); a copied, replayed, unsigned or badly signed value convicts
nobody we can name: ``unknown``.

Deletions (DEL, PURGE) carry no signature: only the broker's write rights stand behind them, and a
reader applies one only if its stream revision is newer than that of the value it removes (an old
deletion marker replayed by another consumer changes nothing).

The same bytes seen again (a watch re-created after a reconnect replays the current values) are not a
replay: they are simply not handed out again.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgspec

from schemas import envelope as E
from schemas.kinds import RejectionKind
from schemas.names import UNKNOWN, kv_subject, kv_writer_allowed

from .bus import KV, Bus, CasConflict, KvEntry
from .seal import EnvelopeError, Identities, IdentityKeys, seal, verify_envelope

T = TypeVar("T", bound=msgspec.Struct)


class KvValueRejected(Exception):
    """A stored value that must not be acted on. ``kind``: one of ``schemas.kinds.RejectionKind``;
    ``offender``: the identity it convicts (``unknown`` when none)."""

    def __init__(self, kind: RejectionKind, detail: str, offender: str = UNKNOWN) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.offender = offender


class NoVerifiedValue(Exception):
    """A key holds a value that does not verify, and no good value of it is known (the caller decides
    what to do without one: refuse to act, usually)."""

    def __init__(self, bucket: str, key: str, why: KvValueRejected) -> None:
        super().__init__(f"kv {bucket}/{key}: no verified value ({why.kind}: {why.detail[:200]})")
        self.bucket = bucket
        self.key = key
        self.why = why


@dataclass(frozen=True)
class Signed(Generic[T]):
    """A verified value: who signed it, its version, where it was stored, the stored bytes."""

    key: str
    value: T
    sender: str
    ts_ms: int  # the version
    revision: int
    raw: bytes


@dataclass(frozen=True)
class Removed:
    """A verified key's value was deleted (or purged, or expired)."""

    key: str
    revision: int
    operation: str


# ---- pure: sealing and checking ------------------------------------------------------------------------


def seal_value(
    keys: IdentityKeys, identities: Identities, bucket: str, key: str, value: msgspec.Struct, ts_ms: int
) -> bytes:
    """The stored bytes of ``value`` at ``bucket``/``key``, signed by ``keys``, version ``ts_ms``."""
    subject = kv_subject(bucket, key)
    env = seal(
        keys,
        identities,
        subject=subject,
        type_name=type(value).__name__,
        payload=msgspec.msgpack.encode(value),
        msg_id=f"{subject}@{ts_ms}",
        ts_ms=ts_ms,
    )
    return E.encode(env)


def value_digest(raw: bytes) -> int:
    """A 56-bit digest of a stored value's bytes (a heartbeat reports the digest of the policy its node
    applied: small enough for any integer field, long enough that two values never share one by chance)."""
    return int.from_bytes(hashlib.sha256(raw).digest()[:7], "big")


def stored_version(raw: bytes) -> int:
    """The version (``ts_ms``) a stored value claims, unverified; 0 when it is not an envelope. (A writer
    uses it only to make its own version larger.)"""
    try:
        return E.decode(raw).ts_ms
    except (msgspec.DecodeError, msgspec.ValidationError):
        return 0


def verify_value(
    raw: bytes, identities: Identities, bucket: str, key: str, typ: type[T]
) -> tuple[E.Envelope, T]:
    """Check a stored value as the value of ``bucket``/``key`` of type ``typ``; raises
    :class:`KvValueRejected` (freshness is :class:`KeyVersions`' business)."""
    try:
        env = verify_envelope(raw, identities)
    except EnvelopeError as exc:
        if exc.kind == "malformed":
            raise KvValueRejected("malformed", f"not a signed value ({exc.detail[:150]})") from None
        claimed = f" (claimed: {exc.sender[:64]!r})" if exc.sender else ""
        raise KvValueRejected(exc.kind, exc.detail + claimed) from None
    named = env.subject
    if not named.startswith("$KV."):
        raise KvValueRejected("subject-mismatch", f"signed for {named[:200]!r}, not a KV key")
    named_bucket, _, named_key = named[4:].partition(".")
    if not kv_writer_allowed(env.sender, named_bucket, named_key):
        # the signature convicts its signer: it signed a value for a key it may not write
        raise KvValueRejected("sender-not-allowed", f"{env.sender} may not write {named[:200]}", env.sender)
    if named != kv_subject(bucket, key):
        # a genuine value of another key, copied here: its signer did not put it here
        raise KvValueRejected("subject-mismatch", f"signed by {env.sender} for {named[:200]!r}")
    if env.to or env.eph or env.nonce:
        raise KvValueRejected("malformed", "a KV value is never encrypted", env.sender)
    if env.type != typ.__name__:
        raise KvValueRejected("unknown-type", f"type {env.type[:64]!r}, expected {typ.__name__}", env.sender)
    try:
        return env, msgspec.msgpack.decode(env.payload, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise KvValueRejected("bad-payload", str(exc)[:200], env.sender) from None


@dataclass
class _Held:
    ts_ms: int  # version of the value in force (kept after a deletion: older values stay refused)
    revision: int
    raw: bytes | None  # None: deleted


class KeyVersions:
    """Per key, the version and revision of the value in force: what is not newer is a replay."""

    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def is_current(self, key: str, raw: bytes) -> bool:
        """``raw`` is exactly the value in force (seen again, not a replay)."""
        held = self._held.get(key)
        return held is not None and held.raw == raw

    def check(self, key: str, env: E.Envelope) -> None:
        held = self._held.get(key)
        if held is not None and env.ts_ms <= held.ts_ms:
            raise KvValueRejected(
                "stale", f"version {env.ts_ms} of {env.sender}, not newer than {held.ts_ms} in force"
            )

    def accept(self, key: str, ts_ms: int, revision: int, raw: bytes) -> None:
        self._held[key] = _Held(ts_ms, revision, raw)

    def remove(self, key: str, revision: int) -> bool:
        """Apply a deletion at ``revision``; False (ignored) when it is not newer than the value in force."""
        held = self._held.get(key)
        if held is None:
            self._held[key] = _Held(0, revision, None)
            return True
        if revision <= held.revision:
            return False
        self._held[key] = _Held(held.ts_ms, revision, None)
        return True


# ---- on the bus ----------------------------------------------------------------------------------------


class SignedKV:
    """One bucket's signed values, as one process reads and writes them (it remembers, per key, the value
    in force: keep one instance per bucket for the life of the process)."""

    def __init__(self, bus: Bus, kv: KV) -> None:
        self.bus = bus
        self.kv = kv
        self.bucket = kv.bucket
        self.versions = KeyVersions()
        self._good: dict[str, Signed[msgspec.Struct]] = {}

    @classmethod
    async def open(cls, bus: Bus, bucket: str) -> SignedKV:
        return cls(bus, await bus.kv(bucket))

    # ---- write ---------------------------------------------------------------------------------------

    async def _sealed(self, key: str, value: msgspec.Struct) -> tuple[bytes, KvEntry | None]:
        current = await self.kv.get(key)
        floor = stored_version(current.value) if current is not None else 0
        ts = max(int(time.time() * 1000), floor + 1)
        return seal_value(self.bus.keys, self.bus.identities, self.bucket, key, value, ts), current

    async def put(self, key: str, value: msgspec.Struct) -> int:
        """Sign and write ``value`` (a version newer than the stored one); returns the revision."""
        raw, _ = await self._sealed(key, value)
        return await self.kv.put(key, raw)

    async def create(self, key: str, value: msgspec.Struct) -> int:
        """Sign and create ``key``; :class:`CasConflict` when it exists."""
        raw, current = await self._sealed(key, value)
        if current is not None:
            raise CasConflict(self.bucket, key, None)
        return await self.kv.create(key, raw)

    async def update(self, key: str, value: msgspec.Struct, revision: int) -> int:
        """Sign and write ``value`` only if ``key`` is still at ``revision``; :class:`CasConflict` if not."""
        raw, _ = await self._sealed(key, value)
        return await self.kv.update_cas(key, raw, revision)

    async def write(self, key: str, value: msgspec.Struct, revision: int | None) -> int:
        """:meth:`create` when ``revision`` is None, else :meth:`update` (compare-and-set)."""
        if revision is None:
            return await self.create(key, value)
        return await self.update(key, value, revision)

    # ---- read ----------------------------------------------------------------------------------------

    async def _reject(self, key: str, revision: int, raw: bytes, why: KvValueRejected) -> None:
        self.bus.log.warning(
            "ignored a kv value", bucket=self.bucket, key=key[:200], kind=why.kind, detail=why.detail[:200]
        )
        await self.bus.report(
            why.offender,
            why.kind,
            why.detail,
            kv_subject(self.bucket, key),
            f"KV_{self.bucket}",
            revision,
            raw,
        )

    async def admit(self, entry: KvEntry, typ: type[T]) -> Signed[T] | None:
        """Check one stored value of ``entry.key``: the :class:`Signed` value if it is new and good, None if
        it is the value in force again; raises :class:`KvValueRejected` (after reporting it) otherwise."""
        if self.versions.is_current(entry.key, entry.value):
            return None
        try:
            env, value = verify_value(entry.value, self.bus.identities, self.bucket, entry.key, typ)
            self.versions.check(entry.key, env)
        except KvValueRejected as why:
            await self._reject(entry.key, entry.revision, entry.value, why)
            raise
        self.versions.accept(entry.key, env.ts_ms, entry.revision, entry.value)
        signed = Signed(entry.key, value, env.sender, env.ts_ms, entry.revision, entry.value)
        self._good[entry.key] = signed  # type: ignore[assignment]
        return signed

    def in_force(self, key: str, typ: type[T]) -> Signed[T] | None:
        """The last good value of ``key`` this process accepted (None if none, or deleted since)."""
        held = self._good.get(key)
        return held if held is not None and isinstance(held.value, typ) else None  # type: ignore[return-value]

    async def get(self, key: str, typ: type[T]) -> Signed[T] | None:
        """The verified value of ``key``; None when the key is absent. A stored value that does not verify
        is reported and the last good one returned; without one, :class:`NoVerifiedValue`."""
        entry = await self.kv.get(key)
        if entry is None:
            return None
        try:
            fresh = await self.admit(entry, typ)
        except KvValueRejected as why:
            held = self.in_force(key, typ)
            if held is None:
                raise NoVerifiedValue(self.bucket, key, why) from None
            return held
        return fresh if fresh is not None else self.in_force(key, typ)

    async def watch(self, key: str, typ: type[T]) -> AsyncGenerator[Signed[T] | Removed | None, None]:
        """The verified values of the keys matching ``key`` (a NATS pattern), then ``None`` once the current
        values are in, then every verified change: a :class:`Signed` value or a :class:`Removed` key.
        What does not verify (or is older than the value in force) is reported and skipped."""
        async for entry in self.kv.watch(key):
            if entry is None:
                yield None
                continue
            if entry.operation != "PUT":
                if self.versions.remove(entry.key, entry.revision):
                    self._good.pop(entry.key, None)
                    yield Removed(entry.key, entry.revision, entry.operation)
                continue
            try:
                signed = await self.admit(entry, typ)
            except KvValueRejected:
                continue
            if signed is not None:
                yield signed


__all__ = [
    "KeyVersions",
    "KvValueRejected",
    "NoVerifiedValue",
    "Removed",
    "Signed",
    "SignedKV",
    "seal_value",
    "stored_version",
    "value_digest",
    "verify_value",
]
