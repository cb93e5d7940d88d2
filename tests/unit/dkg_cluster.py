"""A whole ChillDKG among signer-node participants (:class:`DkgParticipant`) without servers: real keystores
and identity keys, signed KV values in shared in-memory buckets, and a coordinator driven by the test
(the way ``consensus`` drives it, but free to lie)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from schemas import envelope as E
from schemas import kv as K
from schemas.messages import DkgMessage, DkgResult, DkgStart
from schemas.names import BUCKET_KEYS, node_names, proto_subject
from services.runtime.bus import Received
from services.runtime.config import ServiceConfig
from services.runtime.logging import Logger
from services.runtime.seal import Ed25519Signer, Identities, IdentityKeys, seal
from services.runtime.signed_kv import SignedKV
from services.signer.dkg_participant import DkgParticipant
from services.signer.keystore import Keystore
from tests.unit.service_fakes import FakeBus, FakeKV
from tss import chilldkg
from wallet.threshold_account import dkg_chain_code

N, T = 5, 4
NODES = node_names(N)
NAMES = [*NODES, "consensus", "admin", "intake"]


def _seed(name: str) -> bytes:
    return hashlib.sha256(b"dkg test identity " + name.encode()).digest()


def _x25519(name: str) -> x25519.X25519PrivateKey:
    return x25519.X25519PrivateKey.from_private_bytes(hashlib.sha256(b"x " + name.encode()).digest())


def _x25519_pub(name: str) -> str:
    pub = _x25519(name).public_key()
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()


IDENTITIES = Identities(
    {
        n: {"ed25519": bytes(nacl.signing.SigningKey(_seed(n)).verify_key).hex(), "x25519": _x25519_pub(n)}
        for n in NAMES
    }
)


def identity_keys(name: str) -> IdentityKeys:
    return IdentityKeys(name=name, signing=Ed25519Signer(_seed(name)), exchange=_x25519(name))


@dataclass
class Report:
    offender: str
    kind: str
    detail: str
    subject: str
    evidence: bytes


@dataclass
class SignedFakeBus(FakeBus):
    """:class:`FakeBus` with what signed values need: identity keys, a log, and ``report``."""

    reports: list[Report] = field(default_factory=list)
    log: Logger = field(default_factory=lambda: Logger("test"))
    identities: Identities = field(default_factory=lambda: IDENTITIES)

    @property
    def keys(self) -> IdentityKeys:
        return identity_keys(self.identity)

    async def report(
        self, offender: str, kind: str, detail: str, subject: str, stream: str, seq: int, raw: bytes
    ) -> None:
        self.reports.append(Report(offender, kind, detail, subject, raw))


def node_config(node: str, data_dir: Path, t: int = T) -> ServiceConfig:
    nowhere = Path("/nonexistent")
    return ServiceConfig(
        identity=node,
        data_dir=data_dir,
        nats_url="",
        ca_file=nowhere,
        cert_file=nowhere,
        key_file=nowhere,
        identities_file=nowhere,
        n=N,
        t=t,
        nodes=tuple(NODES),
    )


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
            got = self.buses[identity] = SignedFakeBus(identity=identity, kvs=self.kvs)
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
        return K.KeyRecord(
            key_id=start.key_id,
            scheme=start.scheme,
            threshold_pubkey=output.thresh_pk,
            pubshares=list(output.pubshares),
            chain_code=dkg_chain_code(chilldkg.params_hash(params), output.thresh_pk),
            nodes=list(start.nodes),
            n=len(start.nodes),
            t=start.threshold,
            session_id=session,
            hostpubkeys=list(start.hostpubkeys),
            recovery_data=bytes(recovery),
            created_ms=int(time.time() * 1000),
        )


async def make_cluster(tmp: Path) -> Cluster:
    kvs: dict[str, FakeKV] = {}
    cluster = Cluster(kvs, {}, {}, {})
    for node in NODES:
        ks = Keystore(tmp, node)
        participant = DkgParticipant(node_config(node, tmp), cluster.bus(node), ks, lambda: None)  # type: ignore[arg-type]
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
