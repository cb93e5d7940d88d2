"""Render the nats-server configuration (``nats/*.tmpl``) and read the JetStream definitions.

The users table is generated from ``schemas.names.PUBLISH_RIGHTS`` so broker and bus enforce the same rule.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Literal

from schemas.names import (
    BUCKETS,
    JS_CLIENT_SUBSCRIBE,
    consumers_of,
    inbox_prefix,
    kv_reads_of,
    kv_writes_of,
    publish_rights,
    stream_for,
    stream_reads_of,
)

# The JetStream API a deployment (consumer_rights="own") gives every non-admin identity: stream info (the
# bus checks at connect that every stream exists). Reading single messages back (``STREAM_READERS``,
# ``KV_READERS``), watches and its own durables come on top, per identity. Nothing lists or inspects
# other identities' consumers (``$JS.API.CONSUMER.NAMES/LIST``, ``INFO`` but on its own): a consumer's
# info names its deliver subject, an inbox of its owner, and nats-server does not check the deliver
# subject of a new consumer, nor the reply subject of any request, against the creator's rights. No
# stream names or list (nobody looks streams up by subject), no account info, no direct get (the buckets
# are made without ``allow_direct``: the server would not answer).
JS_API_BASE: tuple[str, ...] = ("$JS.API.STREAM.INFO.*",)
# consumer_rights="any" (the integration tests' broker: their consumers have names of their own and they
# watch whatever bucket they test): the broad rights of before, every consumer operation on every
# consumer, and every ack
JS_API_ANY: tuple[str, ...] = (
    "$JS.API.INFO",
    "$JS.API.STREAM.INFO.*",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.LIST",
    "$JS.API.STREAM.MSG.GET.*",
    "$JS.API.DIRECT.GET.>",
    "$JS.FC.>",
    "$JS.API.CONSUMER.>",
    "$JS.ACK.>",
)
ConsumerRights = Literal["own", "any"]


def consumer_rights_of(identity: str) -> list[str]:
    """The JetStream API subjects of ``identity``'s own durable consumers (``schemas.names.CONSUMERS``):
    create or update (only in the form that names the filter subject, so the filter stays the table's),
    look up, reset (a restart at a stored position), pull from, and ack on them; nothing on anybody
    else's. No delete: admin makes them all as pull consumers (``Bus.ensure_durables``), and the server
    refuses to turn a pull consumer into a push one, so an identity cannot have its deliveries pushed to a
    subject of its choosing."""
    out: list[str] = []
    for name, subject in consumers_of(identity).items():
        s = stream_for(subject)
        out += [
            f"$JS.API.CONSUMER.CREATE.{s}.{name}.{subject}",
            f"$JS.API.CONSUMER.INFO.{s}.{name}",
            f"$JS.API.CONSUMER.RESET.{s}.{name}",
            f"$JS.API.CONSUMER.MSG.NEXT.{s}.{name}",
            f"$JS.ACK.{s}.{name}.>",
        ]
    return out


def kv_rights_of(identity: str) -> list[str]:
    """The JetStream API subjects of ``identity``'s KV reads (``schemas.names.KV_READERS``): message gets
    on the buckets it reads or writes (a create-only write reads the key back on a conflict); on the
    buckets it watches, the ephemeral consumers of a watch or key listing (the server names them), their
    info (the watch asks how many values are pending) and flow control."""
    reads = kv_reads_of(identity)
    out: list[str] = []
    for bucket in BUCKETS:
        if bucket in reads or bucket in kv_writes_of(identity):
            out.append(f"$JS.API.STREAM.MSG.GET.KV_{bucket}")
        if reads.get(bucket) == "watch":
            out += [
                f"$JS.API.CONSUMER.CREATE.KV_{bucket}",
                f"$JS.API.CONSUMER.INFO.KV_{bucket}.*",
                f"$JS.FC.KV_{bucket}.>",
            ]
    return out


def js_api_rights_of(identity: str, consumer_rights: ConsumerRights = "own") -> list[str]:
    """Every JetStream API subject a non-admin ``identity`` may publish on."""
    if consumer_rights == "any":
        return list(JS_API_ANY)
    reads = [f"$JS.API.STREAM.MSG.GET.{s}" for s in stream_reads_of(identity)]
    return [*JS_API_BASE, *reads, *kv_rights_of(identity), *consumer_rights_of(identity)]


def nats_conf_dir() -> Path:
    env = os.environ.get("MPCW_NATS_CONF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "nats"


def jetstream_definitions() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((nats_conf_dir() / "jetstream.json").read_text())
    return data


def _q(s: str) -> str:
    return json.dumps(s)  # a double-quoted string, valid in nats config


def user_entry(
    identity: str, consumer_rights: ConsumerRights = "own", subjects: Sequence[str] | None = None
) -> str:
    """The users of ``identity``: one per certificate subject the broker accepts for it (``CN=<identity>``
    unless given; two while a certificate rotation runs: ``services.localcluster.pki``), same rights."""
    if identity == "admin":
        pub = [">"]
        sub = [">"]
    else:
        pub = [*publish_rights(identity), *js_api_rights_of(identity, consumer_rights)]
        sub = [p.replace("{inbox}", inbox_prefix(identity)) for p in JS_CLIENT_SUBSCRIBE]
    return "\n".join(
        f"    {{ user: {_q(dn)}, permissions: {{\n"
        f"        publish: {{ allow: [{', '.join(_q(p) for p in pub)}] }},\n"
        f"        subscribe: {{ allow: [{', '.join(_q(p) for p in sub)}] }} }} }}"
        for dn in (subjects or [f"CN={identity}"])
    )


@dataclass(frozen=True)
class NatsPorts:
    client: int
    http: int
    cluster: int | None = None


def render_server_config(
    *,
    identities: list[str],
    ports: NatsPorts,
    store_dir: Path,
    ca_file: Path,
    server_cert: Path,
    server_key: Path,
    server_name: str = "mpcw-1",
    routes: list[int] | None = None,
    cluster_name: str = "mpcw",
    consumer_rights: ConsumerRights = "own",
    subjects: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """``subjects``: the certificate subjects accepted per identity (default ``CN=<identity>``).
    ``consumer_rights``: "own" (every deployment) lets each identity use only its own durable
    consumers; "any" (the integration tests' shared broker) lets it use any."""
    d = nats_conf_dir()
    common = {
        "server_cert": str(server_cert),
        "server_key": str(server_key),
        "ca_file": str(ca_file),
    }
    cluster = ""
    if ports.cluster is not None:
        cluster = Template((d / "cluster.conf.tmpl").read_text()).substitute(
            cluster_name=cluster_name,
            cluster_port=ports.cluster,
            routes="\n".join(f"    nats-route://localhost:{p}" for p in (routes or [])),
            **common,
        )
    return Template((d / "server.conf.tmpl").read_text()).substitute(
        server_name=server_name,
        port=ports.client,
        http_port=ports.http,
        store_dir=str(store_dir),
        users="\n".join(user_entry(i, consumer_rights, (subjects or {}).get(i)) for i in identities),
        cluster=cluster,
        **common,
    )


def render_cluster_configs(
    *,
    identities: list[str],
    ports: list[NatsPorts],
    store_root: Path,
    ca_file: Path,
    server_cert: Path,
    server_key: Path,
    consumer_rights: ConsumerRights = "own",
    subjects: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """One config per server of a JetStream cluster (each routes to all the others)."""
    confs = []
    for i, p in enumerate(ports):
        others = [q.cluster for j, q in enumerate(ports) if j != i and q.cluster is not None]
        confs.append(
            render_server_config(
                identities=identities,
                ports=p,
                store_dir=store_root / f"n{i + 1}",
                ca_file=ca_file,
                server_cert=server_cert,
                server_key=server_key,
                server_name=f"mpcw-{i + 1}",
                routes=others,
                consumer_rights=consumer_rights,
                subjects=subjects,
            )
        )
    return confs
