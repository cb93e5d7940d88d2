"""The broker itself enforces identity: TLS client certificates (verify_and_map) and publish rights."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.js import api

import nats
from schemas.messages import REGISTRY, TxRequested
from schemas.names import (
    BUCKET_NODES,
    all_identities,
    consumers_of,
    consumers_with_prefix,
    durable,
    publish_rights,
    sender_may_publish,
)
from services.runtime.bus import Bus, Received
from services.runtime.config import load_config
from services.runtime.embedded import start_nats
from services.runtime.natsconf import (
    NatsPorts,
    consumer_rights_of,
    render_cluster_configs,
    render_server_config,
)
from services.runtime.pki import init_pki, tls_files

BusFactory = Callable[..., Awaitable[Bus]]


def ctx(pki: Path, identity: str | None) -> ssl.SSLContext:
    c = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "pki" / "ca.crt"))
    if identity:
        tls = tls_files(pki, identity)
        c.load_cert_chain(str(tls.cert), str(tls.key))
    return c


async def connect(url: str, tls: ssl.SSLContext | None, errors: list[str] | None = None, **kw: object):  # type: ignore[no-untyped-def]
    async def on_error(e: Exception) -> None:
        if errors is not None:
            errors.append(str(e))

    return await nats.connect(
        servers=url.split(","),
        tls=tls,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=3,
        error_cb=on_error,
        **kw,
    )


async def test_client_without_certificate_is_refused(pki: Path, nats_server: str) -> None:
    with pytest.raises(Exception):  # noqa: B017 - TLS handshake failure or NoServers, depending on timing
        nc = await connect(nats_server, ctx(pki, None))
        await nc.flush(timeout=2)
        await nc.close()


async def test_plaintext_client_is_refused(nats_server: str) -> None:
    with pytest.raises(Exception):  # noqa: B017
        nc = await connect(nats_server.replace("tls://", "nats://"), None)
        await nc.flush(timeout=2)


async def test_certificate_from_another_ca_is_refused(tmp_path: Path, nats_server: str) -> None:
    init_pki(tmp_path, nodes=1)  # a different CA, also issuing "node-1"
    other = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=None)
    other.check_hostname = False
    other.verify_mode = ssl.CERT_NONE
    other.load_cert_chain(str(tls_files(tmp_path, "node-1").cert), str(tls_files(tmp_path, "node-1").key))
    with pytest.raises(Exception):  # noqa: B017
        nc = await connect(nats_server, other)
        await nc.flush(timeout=2)


async def test_node3_cannot_publish_as_node2(pki: Path, nats_server: str) -> None:
    errors: list[str] = []
    nc = await connect(nats_server, ctx(pki, "node-3"), errors, inbox_prefix="_INBOX.node-3")
    try:
        js = nc.jetstream()
        with pytest.raises(nats.errors.TimeoutError):  # the server drops it: no PubAck
            await js.publish("vote.x.node-2", b"forged vote", timeout=1.0)
        await asyncio.sleep(0.2)
        assert any("permissions violation" in e.lower() and "vote.x.node-2" in e for e in errors), errors
        # its own subject works
        ack = await js.publish("vote.x.node-3", b"own vote (unsigned: consumers would drop it)", timeout=5.0)
        assert ack.stream == "VOTE"
    finally:
        await nc.close()


@pytest.mark.parametrize(
    ("identity", "subject"),
    [
        ("node-3", "tx.approved.t1"),  # only consensus
        ("node-3", "proto.frost.s.1.node-2"),  # protocol message as another node
        ("node-3", "node.heartbeat.node-2"),
        ("intake", "tx.approved.t1"),
        ("broadcaster", "tx.requested.t1"),
        ("recorder", "tx.confirmed.t1"),
        ("node-3", "$JS.API.STREAM.DELETE.TX"),  # only admin manages streams
        ("node-3", "$KV.bans.node-3"),  # only monitor bans
        ("broadcaster", "$KV.rounds.t1"),  # a round is consensus's; the broadcaster writes final.<tx> only
        ("node-3", "$KV.presig.frost.default.node-3.c.b1-0"),  # a claim, even on its own nonce
        ("node-3", "$KV.presig.frost.default.node-2.b.b1_0"),  # another node's nonce commitments
    ],
)
async def test_publish_rights(pki: Path, nats_server: str, identity: str, subject: str) -> None:
    errors: list[str] = []
    nc = await connect(nats_server, ctx(pki, identity), errors, inbox_prefix=f"_INBOX.{identity}")
    try:
        await nc.publish(subject, b"x")
        await nc.flush(timeout=2)
        await asyncio.sleep(0.2)
        assert any("permissions violation for publish" in e.lower() for e in errors), errors
    finally:
        await nc.close()


async def test_subscribe_only_own_inbox(pki: Path, nats_server: str) -> None:
    errors: list[str] = []
    nc = await connect(nats_server, ctx(pki, "node-3"), errors, inbox_prefix="_INBOX.node-3")
    try:
        await nc.subscribe("_INBOX.node-2.>")  # another identity's replies
        await nc.subscribe("proto.>")  # core tap on the protocol traffic
        await nc.flush(timeout=2)
        await asyncio.sleep(0.2)
        assert sum("permissions violation for subscription" in e.lower() for e in errors) == 2, errors
    finally:
        await nc.close()


def test_rights_table_and_bus_check_agree() -> None:
    assert "vote.*.node-3" in publish_rights("node-3")
    assert sender_may_publish("node-3", "vote.t.node-3")
    assert not sender_may_publish("node-3", "vote.t.node-2")
    assert sender_may_publish("node-3", "proto.frost.s.1.node-3")
    assert sender_may_publish("node-3", "proto.frost.s.1.node-3.node-1")
    assert not sender_may_publish("node-3", "proto.frost.s.1.node-1.node-3")
    assert sender_may_publish("intake", "tx.requested.t")
    assert not sender_may_publish("intake", "tx.approved.t")
    assert sender_may_publish("consensus", "tx.approved.t")
    assert "$KV.rounds.final.>" in publish_rights("broadcaster")  # the final-outcome arbiter
    assert not sender_may_publish("admin", "vote.t.node-1")  # the operator never speaks for a node
    for ident in all_identities(5):
        assert sender_may_publish(ident, "node.violation.unknown")


def test_cluster_config_renders(pki: Path) -> None:
    ports = [NatsPorts(4301 + i, 8301 + i, 6301 + i) for i in range(3)]
    confs = render_cluster_configs(
        identities=all_identities(5),
        ports=ports,
        store_root=pki / "x",
        ca_file=pki / "pki" / "ca.crt",
        server_cert=pki / "pki" / "server.crt",
        server_key=pki / "pki" / "server.key",
    )
    assert len(confs) == 3
    assert "nats-route://localhost:6302" in confs[0] and "nats-route://localhost:6301" not in confs[0]
    assert all("verify_and_map: true" in c and 'user: "CN=node-3"' in c for c in confs)
    single = render_server_config(
        identities=["node-1"],
        ports=NatsPorts(4301, 8301),
        store_dir=pki / "s",
        ca_file=pki / "pki" / "ca.crt",
        server_cert=pki / "pki" / "server.crt",
        server_key=pki / "pki" / "server.key",
    )
    assert "cluster {" not in single and '"vote.*.node-1"' in single


# ---- consumers: each identity uses only its own durables (schemas.names.CONSUMERS) ----------------------


@pytest.fixture
def strict_nats(pki: Path, tmp_path: Path) -> Iterator[str]:
    """A broker of this test's own, rendered as ``mpcw up`` renders it (``consumer_rights="own"``; the
    session's shared broker admits any consumer name, for the tests that make fresh ones)."""
    (tmp_path / "pki").symlink_to(pki / "pki", target_is_directory=True)
    (tmp_path / "cluster.id").symlink_to(pki / "cluster.id")  # the same secrets directory (server key)
    servers = start_nats(tmp_path, all_identities(5), consumer_rights="own")

    async def ensure() -> None:
        admin = await Bus.connect(load_config("admin", pki, nats_url=servers.url), ensure=True)
        await admin.close()

    asyncio.run(ensure())
    try:
        yield servers.url
    finally:
        servers.stop()


async def test_a_node_cannot_take_use_or_delete_others_consumers(pki: Path, strict_nats: str) -> None:
    admin = await Bus.connect(load_config("admin", pki, nats_url=strict_nats))
    try:
        # the recorder's and consensus's durables, as their services create them
        for name in ("recorder-vote", "consensus-votes"):
            await admin.js.add_consumer(
                "VOTE", config=api.ConsumerConfig(name=name, durable_name=name, filter_subject="vote.>")
            )
        errors: list[str] = []
        nc = await connect(strict_nats, ctx(pki, "node-3"), errors, inbox_prefix="_INBOX.node-3")
        try:
            forbidden = [
                "$JS.API.CONSUMER.MSG.NEXT.VOTE.recorder-vote",  # pull the recorder's deliveries away
                "$JS.API.CONSUMER.MSG.NEXT.VOTE.consensus-votes",  # ... or consensus's votes
                "$JS.API.CONSUMER.DELETE.VOTE.recorder-vote",
                "$JS.API.CONSUMER.CREATE.VOTE.consensus-votes.vote.>",  # re-point it
                "$JS.API.CONSUMER.DURABLE.CREATE.VOTE.recorder-vote",
                "$JS.API.CONSUMER.CREATE.VOTE",  # an ephemeral one on a stream (only KV watches)
                "$JS.API.CONSUMER.CREATE.TX.signer-node-2-requests.tx.requested.>",  # another node's
                "$JS.ACK.VOTE.recorder-vote.1.1.1.1795000000000000000.0",  # ack in the recorder's name
                "$JS.API.STREAM.PURGE.VOTE",
            ]
            for subject in forbidden:
                await nc.publish(subject, b"{}", reply="_INBOX.node-3.x")
            await nc.flush(timeout=2)
            await asyncio.sleep(0.3)
            said = [e.lower() for e in errors if "permissions violation" in e.lower()]
            refused = [s for s in forbidden if any(s.lower() in e for e in said)]
            assert refused == forbidden, errors
        finally:
            await nc.close()
        # nothing happened to them
        for name in ("recorder-vote", "consensus-votes"):
            info = await admin.js.consumer_info("VOTE", name)
            assert info.delivered.stream_seq == 0 and info.config.filter_subject == "vote.>"
    finally:
        await admin.close()


async def test_a_node_uses_its_own_consumers_and_watches_kv(pki: Path, strict_nats: str) -> None:
    intake = await Bus.connect(load_config("intake", pki, nats_url=strict_nats))
    node = await Bus.connect(load_config("node-3", pki, nats_url=strict_nats))
    try:
        got: list[str] = []
        stop = asyncio.Event()

        async def handler(batch: list[Received]) -> None:
            got.extend(r.subject for r in batch)
            stop.set()

        subject, name = durable("node-3", "signer-{self}-requests")
        assert (subject, name) == ("tx.requested.>", "signer-node-3-requests")
        task = asyncio.create_task(node.consume_batch(subject, name, handler, registry=REGISTRY, stop=stop))
        req = TxRequested(
            tx_id="acl-test", key_id="default", scheme="frost", network="regtest", recipient="x", amount=1,
            fee_rate=1.0, fee=0, unsigned_tx=b"", inputs=[],
        )  # fmt: skip
        await intake.publish("tx.requested.acl-test", req, "acl-test")
        await asyncio.wait_for(task, 10)
        assert got == ["tx.requested.acl-test"]
        for _ in range(100):  # its ack goes through (acks are sent with the client's next write)
            if (await node.js.consumer_info("TX", name)).num_ack_pending == 0:
                break
            await asyncio.sleep(0.05)
        assert (await node.js.consumer_info("TX", name)).num_ack_pending == 0

        kv = await node.kv(BUCKET_NODES)  # a watch: an ephemeral consumer the server names
        watch = kv.watch()
        assert await asyncio.wait_for(anext(watch), 10) is None  # initial values done (none)
        await watch.aclose()
    finally:
        await node.close()
        await intake.close()


def test_every_service_consumer_is_in_the_table() -> None:
    """The names the services use are the broker's: ``durable`` refuses one the table lacks."""
    assert set(consumers_of("recorder")) == {"recorder-tx", "recorder-vote", "recorder-violation"}
    assert consumers_with_prefix("recorder", "rec42") == {
        "rec42-tx": "tx.>",
        "rec42-vote": "vote.>",
        "rec42-violation": "node.violation.>",
    }
    assert consumers_of("intake") == {} and consumers_of("presig") == {}
    with pytest.raises(KeyError):
        durable("node-3", "signer-node-2-requests")
    rights = consumer_rights_of("node-3")
    assert "$JS.API.CONSUMER.MSG.NEXT.TX.signer-node-3-requests" in rights
    assert not any("node-2" in r or "recorder" in r or "consensus" in r for r in rights)
