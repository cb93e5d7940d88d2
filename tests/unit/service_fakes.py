"""In-memory stand-ins for driving a service's handlers without servers (the consensus and broadcaster
unit tests): a KV bucket with compare-and-set, a bus that records what is published, a service context,
a verified delivery, and identity keys made from names (for signed values and envelopes)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from schemas import kv as K
from services.runtime.bus import CasConflict, KvEntry, Received
from services.runtime.config import ServiceConfig
from services.runtime.logging import Logger
from services.runtime.seal import Ed25519Signer, Identities, IdentityKeys
from services.runtime.service import ServiceContext


class FakeKV:
    """A KV bucket: create-only, compare-and-set on the revision, every write recorded."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        self.data: dict[str, tuple[int, bytes]] = {}
        self.rev = itertools.count(1)
        self.writes: list[str] = []  # keys written (create / update_cas / put), in order
        self.reads: list[str] = []  # keys read (get), in order

    async def get(self, key: str) -> KvEntry | None:
        await asyncio.sleep(0)
        self.reads.append(key)
        if key not in self.data:
            return None
        rev, value = self.data[key]
        return KvEntry(key, value, rev)

    async def create(self, key: str, value: bytes | msgspec.Struct) -> int:
        await asyncio.sleep(0)
        if key in self.data:
            raise CasConflict(self.bucket, key, None)
        return self._write(key, value)

    async def update_cas(self, key: str, value: bytes | msgspec.Struct, revision: int) -> int:
        await asyncio.sleep(0)
        if key not in self.data or self.data[key][0] != revision:
            raise CasConflict(self.bucket, key, revision)
        return self._write(key, value)

    async def put(self, key: str, value: bytes | msgspec.Struct) -> int:
        return self._write(key, value)

    async def keys(self) -> list[str]:
        return list(self.data)

    async def watch(self, key: str = ">") -> AsyncIterator[KvEntry | None]:
        """Current values, then None (a test's resume() stops there)."""
        for k, (rev, raw) in list(self.data.items()):
            await asyncio.sleep(0)
            yield KvEntry(k, raw, rev)
        yield None

    def _write(self, key: str, value: bytes | msgspec.Struct) -> int:
        raw = value if isinstance(value, bytes) else msgspec.msgpack.encode(value)
        rev = next(self.rev)
        self.data[key] = (rev, raw)
        self.writes.append(key)
        return rev

    def round(self, tx_id: str) -> K.RoundRecord:
        return msgspec.msgpack.decode(self.data[tx_id][1], type=K.RoundRecord)

    def final(self, tx_id: str) -> K.FinalRecord | None:
        got = self.data.get(K.final_key(tx_id))
        return None if got is None else msgspec.msgpack.decode(got[1], type=K.FinalRecord)


@dataclass
class FakeBus:
    """The bus as a service uses it: KV buckets, and publishes recorded as (subject, payload, msg_id,
    sender), de-duplicated by message id as JetStream does."""

    identity: str = "test"
    kvs: dict[str, FakeKV] = field(default_factory=dict)
    published: list[tuple[str, Any, str, str]] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)

    async def kv(self, bucket: str) -> FakeKV:
        return self.kvs.setdefault(bucket, FakeKV(bucket))

    async def publish(self, subject: str, payload: Any, msg_id: str, to: str | None = None) -> None:
        """``to`` (the recipient the real bus encrypts to) is not recorded: it is the subject's last token."""
        await asyncio.sleep(0)
        if msg_id in self.seen_ids:
            return  # JetStream de-duplication
        self.seen_ids.add(msg_id)
        self.published.append((subject, payload, msg_id, self.identity))

    def all(self, subject: str) -> list[Any]:
        return [p for s, p, _, _ in self.published if s == subject]

    def subjects(self, tx_id: str) -> list[str]:
        return [s for s, _, _, _ in self.published if s.startswith("tx.") and s.endswith(f".{tx_id}")]


def service_context(name: str, bus: Any, **cfg: Any) -> ServiceContext:
    """A context for service ``name`` on ``bus`` (a fake); ``cfg``: ServiceConfig fields beyond the paths,
    which point nowhere."""
    nowhere = Path("/nonexistent")
    config = ServiceConfig(
        identity=name,
        data_dir=nowhere,
        nats_url="",
        ca_file=nowhere,
        cert_file=nowhere,
        key_file=nowhere,
        identities_file=nowhere,
        **cfg,
    )
    return ServiceContext(name=name, cfg=config, log=Logger(name), stop=asyncio.Event(), bus_=bus)


def received(payload: Any, subject: str, sender: str, msg_id: str = "m") -> Received:
    """A delivery whose envelope the bus verified (tests hand payloads straight to handlers)."""
    return Received(
        subject=subject,
        sender=sender,
        payload=payload,
        seq=0,
        msg_id=msg_id,
        envelope_raw=b"",
        envelope=None,  # type: ignore[arg-type]
    )


# ---- identities -----------------------------------------------------------------------------------------


def _seed(name: str) -> bytes:
    return hashlib.sha256(b"test identity " + name.encode()).digest()


def _x25519(name: str) -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.from_private_bytes(hashlib.sha256(b"x " + name.encode()).digest())


def fake_identities(names: list[str]) -> Identities:
    """The public keys of ``names`` (each derived from its name: see :func:`identity_keys`)."""
    return Identities(
        {
            n: {
                "ed25519": bytes(nacl.signing.SigningKey(_seed(n)).verify_key).hex(),
                "x25519": _x25519(n)
                .public_key()
                .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
                .hex(),
            }
            for n in names
        }
    )


def identity_keys(name: str) -> IdentityKeys:
    """The private keys of ``name`` in :func:`fake_identities`."""
    return IdentityKeys(name=name, signing=Ed25519Signer(_seed(name)), exchange=_x25519(name))


@dataclass
class Report:
    """One ``Bus.report`` call."""

    offender: str
    kind: str
    detail: str
    subject: str
    raw: bytes


@dataclass
class SignedFakeBus(FakeBus):
    """:class:`FakeBus` with what signed values need: identity keys, a log, and ``report`` (recorded)."""

    identities: Identities = field(default_factory=lambda: Identities({}))
    reports: list[Report] = field(default_factory=list)
    log: Logger = field(default_factory=lambda: Logger("test"))

    @property
    def keys(self) -> IdentityKeys:
        return identity_keys(self.identity)

    async def report(
        self, offender: str, kind: str, detail: str, subject: str, stream: str, seq: int, raw: bytes
    ) -> None:
        self.reports.append(Report(offender, kind, detail, subject, raw))
