"""A whole ChillDKG among signer-node participants (:class:`DkgParticipant`) and the coordinator
(:class:`DkgCoordinator`) without servers: real keystores and identity keys, signed KV values in shared
in-memory buckets, one shared log standing for the PROTO stream (what the coordinator reads back), and a
pump that delivers each stored message to the consumers whose filters match, as JetStream does. Tests
may deliver messages of their own (a coordinator that lies), and hook the pump to lose a publish,
change what a party stores, or replay and reorder deliveries."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from schemas import envelope as E
from schemas import kv as K
from schemas.messages import DkgResult, DkgStart
from schemas.names import BUCKET_KEYS, node_names, proto_subject
from services.consensus.dkg_coordinator import DkgCoordinator
from services.runtime.bus import Received
from services.runtime.chilldkg_wire import parse_subject
from services.runtime.config import ServiceConfig
from services.runtime.logging import Logger
from services.runtime.seal import seal
from services.runtime.signed_kv import SignedKV
from services.signer.dkg_participant import DkgParticipant
from services.signer.keystore import Keystore
from tests.unit.service_fakes import (
    FakeKV,
    SignedFakeBus,
    fake_identities,
    identity_keys,
    service_context,
)

N, T = 5, 4
NODES = node_names(N)
NAMES = [*NODES, "consensus", "admin", "intake"]


IDENTITIES = fake_identities(NAMES)


def node_config(node: str) -> ServiceConfig:
    return service_context(node, None, n=N, t=T, nodes=tuple(NODES)).cfg


def sealed_from(sender: str, subject: str, payload: msgspec.Struct) -> Received:
    """A delivery of ``payload`` really signed by ``sender`` (the evidence a report carries)."""
    env = seal(
        identity_keys(sender),
        IDENTITIES,
        subject=subject,
        type_name=type(payload).__name__,
        payload=msgspec.msgpack.encode(payload),
        msg_id=subject,
    )
    raw = E.encode(env)
    return Received(subject, sender, payload, 1, subject, raw, env, "PROTO")


Entry = tuple[str, Any, str, str]  # one stored message: (subject, payload, msg id, sender)
Store = Callable[[Entry], Entry | None]  # what is stored instead of a publish (None: the publish is lost)
Delivery = tuple[str, Received]  # (consumer: a node or "consensus", what it is handed)


@dataclass
class Cluster:
    """Five nodes sharing the buckets in ``kvs``; ``buses[identity]`` publishes into the shared ``log``."""

    kvs: dict[str, FakeKV]
    buses: dict[str, SignedFakeBus]
    nodes: dict[str, DkgParticipant]
    keystores: dict[str, Keystore]
    log: list[Entry] = field(default_factory=list)
    seen_ids: set[str] = field(default_factory=set)
    pumped: int = 0  # log entries handed to the consumers so far
    store: Store | None = None
    coordinator: DkgCoordinator | None = None
    in_flight: list[Delivery] = field(default_factory=list)  # what a pump that raised left undelivered

    def bus(self, identity: str) -> SignedFakeBus:
        got = self.buses.get(identity)
        if got is None:
            got = SignedFakeBus(
                identity=identity,
                kvs=self.kvs,
                identities=IDENTITIES,
                published=self.log,
                seen_ids=self.seen_ids,
            )
            self.buses[identity] = got
        return got

    def consensus(self) -> DkgCoordinator:
        if self.coordinator is None:
            cfg = service_context("consensus", None, n=N, t=T, nodes=tuple(NODES)).cfg
            self.coordinator = DkgCoordinator(cfg, self.bus("consensus"), Logger("consensus"), self.last)  # type: ignore[arg-type]
        return self.coordinator

    async def last(self, subject: str) -> Received | None:
        """The newest stored message on ``subject`` (``services.runtime.lookup.last_message``)."""
        for entry in reversed(self.log):
            if entry[0] == subject:
                return sealed_from(entry[3], subject, entry[1])
        return None

    async def signed(self, identity: str, bucket: str = BUCKET_KEYS) -> SignedKV:
        """A fresh reader/writer of ``bucket`` as ``identity``."""
        return await SignedKV.open(self.bus(identity), bucket)  # type: ignore[arg-type]

    async def hostpubkeys(self) -> list[bytes]:
        keys = await self.signed("consensus")
        out = []
        for node in NODES:
            got = await keys.get(K.hostpubkey_key(node), K.HostPubkey)
            assert got is not None
            out.append(got.value.hostpubkey)
        return out

    def sent(self, node: str, session: str, round_: int) -> list[Any]:
        return self.bus(node).all(proto_subject("chilldkg", session, round_, node))

    def result(self, node: str, session: str) -> DkgResult | None:
        got = self.sent(node, session, 9)
        return got[-1] if got else None

    async def deliver(self, payload: msgspec.Struct, session: str, round_: int) -> None:
        """``payload`` from consensus straight to every node (bypassing the log)."""
        rec = sealed_from("consensus", proto_subject("chilldkg", session, round_, "consensus"), payload)
        for participant in self.nodes.values():
            await participant.on_message(rec)

    def _stored(self) -> list[Delivery]:
        """The deliveries of what was published since the last call (after ``store`` had its say)."""
        out: list[Delivery] = []
        while self.pumped < len(self.log):
            entry = self.log[self.pumped]
            kept = self.store(entry) if self.store is not None else entry
            if kept is None:  # lost: never stored, so a retry under the same id is not a duplicate
                del self.log[self.pumped]
                self.seen_ids.discard(entry[2])
                continue
            self.log[self.pumped] = kept
            self.pumped += 1
            out.extend(_consumers(kept))
        return out

    async def pump(
        self,
        rng: random.Random | None = None,
        deliveries: Callable[[Delivery], list[Delivery]] | None = None,
        limit: int = 10_000,
    ) -> None:
        """Deliver until nothing is in flight; ``rng`` picks the next delivery at random (reordering),
        ``deliveries`` turns one delivery into what arrives (replays, duplicates). A handler that raises
        stops the pump; its delivery is gone (the test hands it again), the others stay in flight."""
        in_flight = self.in_flight
        in_flight.extend(self._stored())
        while in_flight and limit:
            limit -= 1
            target, rec = in_flight.pop(rng.randrange(len(in_flight)) if rng else 0)
            for to, arriving in deliveries((target, rec)) if deliveries else [(target, rec)]:
                if to == "consensus":
                    await self.consensus().on_message(arriving)
                else:
                    await self.nodes[to].on_message(arriving)
            in_flight.extend(self._stored())

    async def retransmit(self) -> None:
        """Every node sends its stalled sessions' last messages again (as after its timeout)."""
        for participant in self.nodes.values():
            await participant.retransmit_stalled(after_s=0)

    async def record(self, start: DkgStart) -> K.KeyRecord | None:
        keys = await self.signed("intake")
        got = await keys.get(K.key_record_key(start.scheme, start.key_id), K.KeyRecord)
        return None if got is None else got.value

    async def run(self, start: DkgStart, **pump: Any) -> K.KeyRecord | None:
        """Publish ``start`` as consensus and pump: the record consensus wrote (None if it got stuck)."""
        await self.bus("consensus").publish(
            proto_subject("chilldkg", start.session_id, 0, "consensus"), start, f"dkg.{start.session_id}.0"
        )
        await self.pump(**pump)
        return await self.record(start)


def _consumers(entry: Entry) -> list[Delivery]:
    """Who gets a stored message: nodes take the coordinator's messages (``proto.chilldkg.*.*.consensus``
    and their own ``proto.chilldkg.*.6.consensus.<node>``), consensus every ``proto.chilldkg.*.*.*``."""
    subject, payload, _, sender = entry
    parts = parse_subject(subject)
    if parts is None:
        return []
    rec = sealed_from(sender, subject, payload)
    if parts.to is not None:
        return [(parts.to, rec)] if parts.sender == "consensus" and parts.round == 6 else []
    if parts.sender == "consensus":
        return [(node, rec) for node in NODES]
    return [("consensus", rec)]


async def make_cluster(tmp: Path) -> Cluster:
    kvs: dict[str, FakeKV] = {}
    cluster = Cluster(kvs, {}, {}, {})
    for node in NODES:
        ks = Keystore(tmp, node)
        participant = DkgParticipant(node_config(node), cluster.bus(node), ks, lambda: None)  # type: ignore[arg-type]
        await participant.publish_hostpubkey()
        cluster.nodes[node] = participant
        cluster.keystores[node] = ks
    return cluster


async def start_of(cluster: Cluster, session: str = "s1", **change: Any) -> DkgStart:
    fields: dict[str, Any] = {
        "session_id": session,
        "scheme": "frost",
        "nodes": list(NODES),
        "threshold": T,
        "key_id": K.DEFAULT_KEY_ID,
        **change,
    }
    if "hostpubkeys" not in fields:
        fields["hostpubkeys"] = await cluster.hostpubkeys()
    return DkgStart(**fields)
