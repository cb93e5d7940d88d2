"""The broker itself enforces identity: TLS client certificates (verify_and_map) and publish rights."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
from nats.aio.msg import Msg
from nats.js import api

import nats
from schemas.messages import REGISTRY, TxRequested
from schemas.names import (
    BUCKET_CONFIG,
    all_identities,
    consumers_of,
    consumers_with_prefix,
    durable,
    kv_reads_of,
    publish_rights,
    sender_may_publish,
    stream_for,
)
from services.localcluster.embedded import start_nats
from services.localcluster.pki import init_pki
from services.runtime.bus import Bus, Received
from services.runtime.config import load_config
from services.runtime.lookup import last_message
from services.runtime.natsconf import (
    NatsPorts,
    consumer_rights_of,
    render_cluster_configs,
    render_server_config,
)
from services.runtime.pki_files import tls_files

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
    yield from production_broker(pki, tmp_path)


def production_broker(pki: Path, d: Path) -> Iterator[str]:
    """Start a broker in ``d`` rendered as ``mpcw up`` renders it, make the streams, yield its URL."""
    (d / "pki").symlink_to(pki / "pki", target_is_directory=True)
    (d / "cluster.id").symlink_to(pki / "cluster.id")  # the same secrets directory (server key)
    servers = start_nats(d, all_identities(5), consumer_rights="own")

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

        kv = await node.kv(BUCKET_CONFIG)  # a watch: an ephemeral consumer the server names
        watch = kv.watch("policy")
        assert await asyncio.wait_for(anext(watch), 10) is None  # initial values done (none)
        await watch.aclose()
    finally:
        await node.close()
        await intake.close()


def test_every_service_consumer_is_in_the_table() -> None:
    """The names the services use are the broker's: ``durable`` refuses one the table lacks."""
    assert set(consumers_of("recorder")) == {
        "recorder-tx",
        "recorder-vote",
        "recorder-violation",
        "recorder-unban",
    }
    assert consumers_with_prefix("recorder", "rec42") == {
        "rec42-tx": "tx.>",
        "rec42-vote": "vote.>",
        "rec42-violation": "node.violation.>",
        "rec42-unban": "node.unban.>",
    }
    assert consumers_of("intake") == {} and consumers_of("presig") == {}
    with pytest.raises(KeyError):
        durable("node-3", "signer-node-2-requests")
    rights = consumer_rights_of("node-3")
    assert "$JS.API.CONSUMER.MSG.NEXT.TX.signer-node-3-requests" in rights
    names = {
        re.sub(r"^\$JS\.(API\.CONSUMER\.(MSG\.)?[A-Z]+|ACK)\.[A-Z]+\.", "", r).split(".")[0] for r in rights
    }
    assert names == set(consumers_of("node-3"))  # its own, by name
    assert (
        f"$JS.API.CONSUMER.CREATE.PROTO.signer-node-3-dkg.{durable('node-3', 'signer-{self}-dkg')[0]}"
        in rights
    )


# ---- least privilege on the JetStream API (issue 10, item 2), on a broker rendered as `mpcw up` does ----


@pytest.fixture(scope="module")
def prod_nats(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One production-rendered broker (``consumer_rights="own"``) for the tests below, which name their
    consumers apart."""
    yield from production_broker(pki, tmp_path_factory.mktemp("prod-nats"))


def create_body(stream: str, deliver: str | None = None, name: str | None = None, **config: object) -> bytes:
    """A consumer create request as a client would send it (``deliver``: a push consumer's subject)."""
    cfg: dict[str, object] = {"ack_policy": "none", "deliver_policy": "last_per_subject", **config}
    if deliver is not None:
        cfg["deliver_subject"] = deliver
    if name is not None:
        cfg["name"] = name
    return json.dumps({"stream_name": stream, "config": cfg}).encode()


async def refused_subjects(
    url: str, pki: Path, identity: str, attempts: list[tuple[str, bytes]], reply: str | None = None
) -> list[str]:
    """Publish every ``(subject, body)`` as ``identity`` (reply in its own inbox unless given); the
    subjects the broker refused with a permissions violation, in order."""
    errors: list[str] = []
    nc = await connect(url, ctx(pki, identity), errors, inbox_prefix=f"_INBOX.{identity}")
    try:
        for subject, body in attempts:
            await nc.publish(subject, body, reply=reply or f"_INBOX.{identity}.probe")
        await nc.flush(timeout=2)
        await asyncio.sleep(0.3)
    finally:
        await nc.close()
    said = [e.lower() for e in errors if "permissions violation for publish" in e.lower()]
    return [s for s, _ in attempts if any(f'"{s.lower()}"' in e for e in said)]


async def admin_consumers(admin: Bus, stream: str) -> list[api.ConsumerInfo]:
    return [c for c in await admin.js.consumers_info(stream)]


@pytest.mark.parametrize("bucket", ["config", "bans", "keys", "rounds", "presig", "nodes"])
@pytest.mark.parametrize("victim", ["consensus", "node-1"])
async def test_node3_makes_no_kv_consumer_but_on_what_it_watches(
    pki: Path, prod_nats: str, bucket: str, victim: str
) -> None:
    """Every form of consumer create on a bucket node-3 does not watch is refused; on those it watches
    (config, keys, presig) only the watch's own form passes (see the next test for what the server then
    does not check)."""
    stream = f"KV_{bucket}"
    deliver = f"_INBOX.{victim}.kvwatch-{bucket}"
    body = create_body(stream, deliver, filter_subject=f"$KV.{bucket}.>")
    attempts = [
        (f"$JS.API.CONSUMER.CREATE.{stream}", body),  # what nats-py's watch sends
        (f"$JS.API.CONSUMER.CREATE.{stream}.evil-{bucket}.$KV.{bucket}.>", body),
        (f"$JS.API.CONSUMER.CREATE.{stream}.evil-{bucket}", body),
        (f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.evil-{bucket}", body),
    ]
    refused = await refused_subjects(prod_nats, pki, "node-3", attempts)
    watched = kv_reads_of("node-3").get(bucket) == "watch"
    assert watched == (bucket in ("config", "keys", "presig"))
    if watched:
        assert refused == [s for s, _ in attempts[1:]]  # only the watch's own (server-named) form
    else:
        assert refused == [s for s, _ in attempts]
    admin = await Bus.connect(load_config("admin", pki, nats_url=prod_nats))
    try:
        made = [c for c in await admin_consumers(admin, stream) if c.config.deliver_subject == deliver]
        assert len(made) == (1 if watched else 0)
    finally:
        await admin.close()


async def test_the_server_does_not_check_a_deliver_subject(pki: Path, prod_nats: str) -> None:
    """What the broker cannot refuse, measured: nats-server does not check a new consumer's deliver
    subject against its creator's rights. On KV_config (node-3 watches the policy) node-3 can make a
    push consumer that delivers into consensus's inbox, if it knows a subject there (it cannot list or
    inspect others' consumers, which name them). What arrives is only what is stored in KV_config, which
    node-3 cannot write: a genuine value (the signed-KV readers check the writer anyway; on keys and
    presig, which it also watches, its own signed values are only believed at its own keys). A push
    consumer delivering onto a stream subject stores nothing there."""
    admin = await Bus.connect(load_config("admin", pki, nats_url=prod_nats))
    consensus = await connect(prod_nats, ctx(pki, "consensus"), inbox_prefix="_INBOX.consensus")
    n3 = await connect(prod_nats, ctx(pki, "node-3"), inbox_prefix="_INBOX.node-3")
    try:
        await (await admin.kv("config")).put("policy", b"genuine policy")
        got: list[tuple[str, bytes]] = []

        async def on_msg(m: Msg) -> None:
            got.append((m.subject, m.data))

        sub = await consensus.subscribe("_INBOX.consensus.watch-1", cb=on_msg)
        await consensus.flush()
        with pytest.raises(nats.errors.TimeoutError):  # node-3 cannot write there
            await n3.jetstream().publish("$KV.config.policy", b"forged policy", timeout=1.0)
        reply = await n3.request(
            "$JS.API.CONSUMER.CREATE.KV_config",
            create_body("KV_config", "_INBOX.consensus.watch-1", filter_subject="$KV.config.>"),
            timeout=5,
        )
        created = json.loads(reply.data)
        assert "error" not in created and created["config"]["deliver_subject"] == "_INBOX.consensus.watch-1"
        for _ in range(50):
            if got:
                break
            await asyncio.sleep(0.1)
        assert got == [("$KV.config.policy", b"genuine policy")]
        await sub.unsubscribe()
        # onto a stream subject node-3 may not publish: accepted, but nothing is stored
        reply = await n3.request(
            "$JS.API.CONSUMER.CREATE.KV_config",
            create_body("KV_config", "vote.deliver.node-2", filter_subject="$KV.config.>"),
            timeout=5,
        )
        assert "error" not in json.loads(reply.data)
        await asyncio.sleep(1.0)
        with pytest.raises(nats.js.errors.NotFoundError):
            await admin.js.get_last_msg("VOTE", "vote.deliver.node-2")
    finally:
        await n3.close()
        await consensus.close()
        await admin.close()


async def test_node3_cannot_list_or_inspect_others_consumers(pki: Path, prod_nats: str) -> None:
    admin = await Bus.connect(load_config("admin", pki, nats_url=prod_nats))
    try:
        for name in ("recorder-vote", "consensus-votes"):
            await admin.js.add_consumer(
                "VOTE", config=api.ConsumerConfig(name=name, durable_name=name, filter_subject="vote.>")
            )
    finally:
        await admin.close()
    streams = ["TX", "VOTE", "PROTO", "NODE", *(f"KV_{b}" for b in ("config", "bans", "keys", "rounds"))]
    attempts = [
        *((f"$JS.API.CONSUMER.NAMES.{s}", b"{}") for s in streams),
        *((f"$JS.API.CONSUMER.LIST.{s}", b"{}") for s in streams),
        ("$JS.API.CONSUMER.INFO.VOTE.consensus-votes", b""),
        ("$JS.API.CONSUMER.INFO.VOTE.recorder-vote", b""),
        ("$JS.API.CONSUMER.INFO.TX.signer-node-2-requests", b""),
        ("$JS.API.CONSUMER.INFO.KV_bans.anything", b""),
        ("$JS.API.STREAM.NAMES", b"{}"),
        ("$JS.API.STREAM.LIST", b"{}"),
        ("$JS.API.INFO", b""),
        ("$JS.API.DIRECT.GET.KV_config", b'{"last_by_subj":"$KV.config.policy"}'),
        ("$JS.API.STREAM.MSG.GET.KV_bans", b'{"last_by_subj":"$KV.bans.node-3"}'),  # not a bucket it reads
        *(
            (f"$JS.API.STREAM.MSG.GET.{s}", b'{"seq":1}') for s in ("VOTE", "PROTO", "NODE")
        ),  # it reads TX only
    ]
    assert await refused_subjects(prod_nats, pki, "node-3", attempts) == [s for s, _ in attempts]


async def test_node3_consumers_on_streams_are_its_own_with_the_tables_filter(
    pki: Path, prod_nats: str
) -> None:
    """On TX/VOTE/PROTO node-3 may create only its durables, each with the table's filter: it cannot
    make a consumer of its own messages (whose deliveries it could redirect), nor any other."""
    push = create_body("TX", "vote.stored.node-2")
    attempts = [
        ("$JS.API.CONSUMER.CREATE.TX", push),  # ephemeral
        ("$JS.API.CONSUMER.CREATE.VOTE", create_body("VOTE", "_INBOX.consensus.x")),
        ("$JS.API.CONSUMER.CREATE.TX.signer-node-3-requests", push),  # no filter in the subject
        ("$JS.API.CONSUMER.CREATE.TX.signer-node-3-requests.tx.approved.>", push),  # another filter
        ("$JS.API.CONSUMER.CREATE.VOTE.signer-node-3-requests.vote.>", push),
        ("$JS.API.CONSUMER.CREATE.PROTO.signer-node-3-dkg.proto.frost.*.*.node-3", push),  # its own
        ("$JS.API.CONSUMER.DURABLE.CREATE.TX.signer-node-3-requests", push),
        ("$JS.API.CONSUMER.CREATE.VOTE.consensus-votes.vote.>", push),
        ("$JS.API.CONSUMER.CREATE.TX.signer-node-2-requests.tx.requested.>", push),
    ]
    assert await refused_subjects(prod_nats, pki, "node-3", attempts) == [s for s, _ in attempts]
    admin = await Bus.connect(load_config("admin", pki, nats_url=prod_nats))
    try:
        for s in ("TX", "VOTE", "PROTO"):
            assert not [c.name for c in await admin_consumers(admin, s) if c.config.deliver_subject]
    finally:
        await admin.close()


async def test_node3_cannot_delete_or_pull_from_others_consumers(pki: Path, prod_nats: str) -> None:
    attempts = [
        ("$JS.API.CONSUMER.DELETE.TX.signer-node-3-requests", b""),  # nor its own: admin made them
        ("$JS.API.CONSUMER.DELETE.VOTE.recorder-vote", b""),
        ("$JS.API.CONSUMER.DELETE.TX.signer-node-2-requests", b""),
        ("$JS.API.CONSUMER.DELETE.KV_config.anything", b""),
        ("$JS.API.CONSUMER.MSG.NEXT.VOTE.consensus-votes", b'{"batch":1}'),
        ("$JS.API.CONSUMER.MSG.NEXT.KV_config.anything", b'{"batch":1}'),  # a pull consumer it made
        ("$JS.API.CONSUMER.RESET.VOTE.recorder-vote", b""),
        ("$JS.API.CONSUMER.RESET.TX.signer-node-2-requests", b""),
        ("$JS.API.CONSUMER.PAUSE.VOTE.recorder-vote", b"{}"),
        ("$JS.ACK.VOTE.consensus-votes.1.1.1.1795000000000000000.0", b""),
    ]
    assert await refused_subjects(prod_nats, pki, "node-3", attempts) == [s for s, _ in attempts]


async def test_node3_cannot_make_its_own_durables_push_to_a_subject_of_its_choosing(
    pki: Path, prod_nats: str
) -> None:
    """Admin made every durable of the table as a pull consumer; node-3 may update its own but the server
    refuses to turn one into a push consumer, and node-3 may not delete one to make it afresh (the test
    below)."""
    admin = await Bus.connect(load_config("admin", pki, nats_url=prod_nats))
    n3 = await connect(prod_nats, ctx(pki, "node-3"), inbox_prefix="_INBOX.node-3")
    try:
        for ident in all_identities(5):
            for name, subject in consumers_of(ident).items():
                info = await admin.js.consumer_info(stream_for(subject), name)
                assert info.config.deliver_subject is None and info.config.filter_subject == subject
        for name, subject in consumers_of("node-3").items():
            s = stream_for(subject)
            for deliver in ("_INBOX.consensus.watch-1", "vote.pushed.node-2"):
                body = create_body(
                    s,
                    deliver,
                    name,
                    durable_name=name,
                    filter_subject=subject,
                    ack_policy="explicit",
                    deliver_policy="all",
                )
                reply = await n3.request(f"$JS.API.CONSUMER.CREATE.{s}.{name}.{subject}", body, timeout=5)
                error = json.loads(reply.data).get("error")
                assert error and "can not update pull consumer to push based" in error["description"], error
            assert (await admin.js.consumer_info(s, name)).config.deliver_subject is None
    finally:
        await n3.close()
        await admin.close()


@pytest.mark.parametrize("victim", ["consensus", "node-1", "admin", "recorder"])
async def test_node3_cannot_publish_into_another_identitys_inbox(
    pki: Path, prod_nats: str, victim: str
) -> None:
    attempts = [(f"_INBOX.{victim}.x", b"forged"), (f"_INBOX.{victim}.abc.def", b"forged")]
    assert await refused_subjects(prod_nats, pki, "node-3", attempts) == [s for s, _ in attempts]


async def test_reply_subjects_are_not_checked_by_the_broker(pki: Path, prod_nats: str) -> None:
    """What the broker cannot refuse, measured: nats-server checks no reply subject against the
    requester's rights (only the reserved ``_R_.``), and whatever a JetStream request answers is published
    on its reply subject, where a stream listening there may store it.

    - a pull from node-3's own consumer with its reply on ``vote.<x>.node-2`` or ``tx.approved.<x>``:
      nothing is stored. The delivery keeps its own subject and headers, and every bus message says
      ``Nats-Expected-Stream`` (VOTE refuses a TX message) and ``Nats-Msg-Id`` (TX drops the copy);
    - any API request with its reply on ``$KV.config.<key>``: KV_config stores the server's JSON answer
      as a value of that key (no struct decodes from it; the signed-KV readers reject it as unsigned).
    Closing the last needs one account per identity (service imports rewrite reply subjects)."""
    intake = await Bus.connect(load_config("intake", pki, nats_url=prod_nats))
    node = await Bus.connect(load_config("node-3", pki, nats_url=prod_nats))
    admin = await Bus.connect(load_config("admin", pki, nats_url=prod_nats))
    try:
        subject, name = durable("node-3", "signer-{self}-requests")
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL)
        await node._ensure_consumer("TX", name, subject, config)
        req = TxRequested(
            tx_id="relay", key_id="default", scheme="frost", network="regtest", recipient="x", amount=1,
            fee_rate=1.0, fee=0, unsigned_tx=b"", inputs=[],
        )  # fmt: skip
        await intake.publish("tx.requested.relay", req, "relay")

        async def counts() -> tuple[int, int]:
            return (
                (await admin.js.stream_info("TX")).state.messages,
                (await admin.js.stream_info("VOTE")).state.messages,
            )

        before = await counts()
        for reply in ("vote.relay.node-2", "tx.approved.relay"):
            await node.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.TX.{name}", b'{"batch":1}', reply=reply)
            await node.nc.flush()
            for _ in range(50):  # delivered (to the reply subject) ...
                if (await admin.js.consumer_info("TX", name)).num_waiting == 0:
                    break
                await asyncio.sleep(0.1)
            await node.nc.publish(f"$JS.ACK.TX.{name}.1.1.1.0.0", b"-NAK")  # (it came back: nak, retry)
        await asyncio.sleep(0.5)
        info = await admin.js.consumer_info("TX", name)
        assert info.num_redelivered >= 1  # ... both times
        assert await counts() == before  # ... and stored nowhere

        await node.nc.publish("$JS.API.STREAM.INFO.KV_config", b"", reply="$KV.config.relay")
        answer = None
        for _ in range(50):
            with contextlib.suppress(nats.js.errors.NotFoundError):
                answer = await admin.js.get_last_msg("KV_config", "$KV.config.relay")
                break
            await asyncio.sleep(0.1)
        assert answer is not None, "the JSON answer was not stored (has the server closed this?)"
        assert (answer.data or b"").startswith(b'{"type":"io.nats.jetstream.api.v1.stream_info_response"')
        await admin.js.purge_stream("KV_config", subject="$KV.config.relay")
    finally:
        await admin.close()
        await node.close()
        await intake.close()


async def test_node3_does_everything_a_signer_needs(pki: Path, prod_nats: str) -> None:
    """Its durables (update, info, reset), the policy watch and get, its own KV writes, reading a request
    back from TX (the durables' pull and ack: ``test_a_node_uses_its_own_consumers_and_watches_kv``)."""
    admin = await Bus.connect(load_config("admin", pki, nats_url=prod_nats))
    node = await Bus.connect(load_config("node-3", pki, nats_url=prod_nats), registry=REGISTRY)
    intake = await Bus.connect(load_config("intake", pki, nats_url=prod_nats))
    try:
        req = TxRequested(
            tx_id="readback", key_id="default", scheme="frost", network="regtest", recipient="x", amount=1,
            fee_rate=1.0, fee=0, unsigned_tx=b"", inputs=[],
        )  # fmt: skip
        await intake.publish("tx.requested.readback", req, "readback")
        back = await last_message(node, "tx.requested.readback")
        assert back is not None and back.sender == "intake" and back.payload == req
        await (await admin.kv("config")).put("policy", b"p1")
        cfg = await node.kv("config")
        assert (await cfg.get("policy")) is not None
        watch = cfg.watch("policy")
        first = await asyncio.wait_for(anext(watch), 10)
        assert first is not None and first.value == b"p1"
        assert await asyncio.wait_for(anext(watch), 10) is None  # current values done
        await (await admin.kv("config")).put("policy", b"p2")
        change = await asyncio.wait_for(anext(watch), 10)
        assert change is not None and change.value == b"p2"
        await watch.aclose()
        await (await node.kv("nodes")).put("node-3", b"beat")
        await (await node.kv("keys")).put("hostpubkey.node-3", b"hostkey")
        presig = await node.kv("presig")
        await presig.create("frost.default.node-3.b.b9_0", b"commitments")
        assert (await presig.get("frost.default.node-3.b.b9_0")) is not None
        own = presig.watch("frost.*.node-3.b.*")  # its batches, to withdraw at start
        first = await asyncio.wait_for(anext(own), 10)
        assert first is not None and first.key == "frost.default.node-3.b.b9_0"
        await own.aclose()
        assert "hostpubkey.node-3" in await (await node.kv("keys")).keys()  # statements to restate
        for cname in (
            "signer-{self}-signing",
            "signer-{self}-noncegen",
            "signer-{self}-dkg",
            "signer-{self}-dkg-inv",
        ):
            subject, name = durable("node-3", cname)
            config = api.ConsumerConfig(
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=7.0,
                max_ack_pending=64,
                deliver_policy=api.DeliverPolicy.ALL,
            )
            await node._ensure_consumer(
                stream_for(subject), name, subject, config
            )  # an update: admin made it
            info = await node.js.consumer_info(stream_for(subject), name)
            assert info.config.filter_subject == subject and info.config.ack_wait == 7.0
            await node._reset_consumer(stream_for(subject), name, 1)  # a restart at a stored position
    finally:
        await intake.close()
        await node.close()
        await admin.close()
