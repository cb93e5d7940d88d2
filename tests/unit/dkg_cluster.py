"""A whole ChillDKG among signer-node participants (:class:`DkgParticipant`) without servers: real keystores
and identity keys, signed KV values in shared in-memory buckets, and a coordinator driven by the test
(the way ``consensus`` drives it, but free to lie)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from schemas import envelope as E
from schemas import kv as K
from schemas.messages import DkgMessage, DkgResult, DkgStart
from schemas.names import BUCKET_KEYS, node_names, proto_subject
from services.runtime.bus import Received
from services.runtime.config import ServiceConfig
from services.runtime.key_proof import dkg_key_record
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
from tss import chilldkg

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


@dataclass
class Cluster:
    """Five nodes sharing the buckets in ``kvs``; ``buses[identity]`` is what that identity published."""

    kvs: dict[str, FakeKV]
    buses: dict[str, SignedFakeBus]
    nodes: dict[str, DkgParticipant]
    keystores: dict[str, Keystore]

    def bus(self, identity: str) -> SignedFakeBus:
        got = self.buses.get(identity)
        if got is None:
            got = SignedFakeBus(identity=identity, kvs=self.kvs, identities=IDENTITIES)
            self.buses[identity] = got
        return got

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
        rec = sealed_from("consensus", proto_subject("chilldkg", session, round_, "consensus"), payload)
        for participant in self.nodes.values():
            await participant.on_message(rec)

    async def run(self, start: DkgStart) -> K.KeyRecord | None:
        """Drive the session as consensus does; the record it would write (None if it got stuck)."""
        session = start.session_id
        await self.deliver(start, session, 0)
        params = chilldkg.SessionParams(list(start.hostpubkeys), start.threshold)
        pmsgs1 = [self.sent(n, session, 1) for n in NODES]
        if not all(pmsgs1):
            return None
        state, cmsg1 = chilldkg.coordinator_step1([m[-1].data for m in pmsgs1], params)
        await self.deliver(DkgMessage(session_id=session, round=2, data=cmsg1), session, 2)
        pmsgs2 = [self.sent(n, session, 3) for n in NODES]
        if not all(pmsgs2):
            return None
        cmsg2, output, recovery = chilldkg.coordinator_finalize(state, [m[-1].data for m in pmsgs2])
        await self.deliver(DkgMessage(session_id=session, round=4, data=cmsg2), session, 4)
        return dkg_key_record(start, output, recovery, int(time.time() * 1000))


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
