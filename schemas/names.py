"""Subject, stream, bucket and identity names, and who may publish what: one table, used twice.

``PUBLISH_RIGHTS`` is the authorization table of the bus. The nats-server configuration is rendered from
it (``services.runtime.natsconf``) so the broker refuses a client that publishes outside its rights, and
every consumer checks it again for the *envelope* sender (``sender_may_publish``), so a message signed by
node-2 is only accepted on subjects node-2 may publish (``vote.<tx>.node-2``, ``proto.*.*.*.node-2``...).
Patterns use NATS wildcards; ``{self}`` stands for the identity's own name.

Subjects (first token = stream):

- ``tx.<event>.<tx_id>``
- ``vote.<tx_id>.<node>``
- ``proto.<protocol>.<session>.<round>.<from>`` (broadcast), ``...<from>.<to>`` (point to point)
- ``node.heartbeat.<identity>``, ``node.violation.<offender>`` (any identity may report)
- ``node.unban.<node>``: the operator lifts a ban (``admin`` only)
- ``audit.anchor.<recorder>.<chain>``: signed checkpoints of the audit chain of database ``<chain>``
"""

from __future__ import annotations

import functools
import re
from typing import Final

# ---- identities -----------------------------------------------------------------------------------------

SERVICE_IDENTITIES: Final[tuple[str, ...]] = (
    "intake",
    "consensus",
    "monitor",
    "presig",
    "broadcaster",
    "recorder",
    "admin",
)
UNKNOWN: Final = "unknown"  # offender token when the sender of a bad message cannot be established

# \Z, not $: "$" also matches before a trailing newline ("node-3\n" is no identity)
_NODE_RE = re.compile(r"^node-([1-9][0-9]*)\Z")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]+\Z")


def node_names(n: int) -> list[str]:
    return [f"node-{i}" for i in range(1, n + 1)]


def all_identities(n: int) -> list[str]:
    return [*node_names(n), *SERVICE_IDENTITIES]


def is_node(identity: str) -> bool:
    return _NODE_RE.match(identity) is not None


def node_index(identity: str) -> int:
    """``node-3`` -> 3."""
    m = _NODE_RE.match(identity)
    if m is None:
        raise ValueError(f"not a node identity: {identity!r}")
    return int(m.group(1))


def check_token(token: str) -> str:
    """A subject token must be non-empty and contain no ``.``, ``*``, ``>`` or whitespace."""
    if not _TOKEN_RE.match(token):
        raise ValueError(f"invalid subject token: {token!r}")
    return token


# ---- streams and subjects -------------------------------------------------------------------------------

STREAM_TX: Final = "TX"
STREAM_VOTE: Final = "VOTE"
STREAM_PROTO: Final = "PROTO"
STREAM_NODE: Final = "NODE"
STREAM_AUDIT: Final = "AUDIT"  # the audit chain's signed anchors: no delete, no purge, no rollup
STREAM_FOR_PREFIX: Final[dict[str, str]] = {
    "tx": STREAM_TX,
    "vote": STREAM_VOTE,
    "proto": STREAM_PROTO,
    "node": STREAM_NODE,
    "audit": STREAM_AUDIT,
}


def stream_for(subject: str) -> str:
    return STREAM_FOR_PREFIX[subject.split(".", 1)[0]]


def tx_subject(event: str, tx_id: str) -> str:
    return f"tx.{check_token(event)}.{check_token(tx_id)}"


def vote_subject(tx_id: str, node: str) -> str:
    return f"vote.{check_token(tx_id)}.{check_token(node)}"


def proto_subject(protocol: str, session: str, round_: int | str, sender: str, to: str | None = None) -> str:
    tokens = [check_token(t) for t in (protocol, session, str(round_), sender)]
    base = "proto." + ".".join(tokens)
    return base if to is None else f"{base}.{check_token(to)}"


def heartbeat_subject(identity: str) -> str:
    return f"node.heartbeat.{check_token(identity)}"


def violation_subject(offender: str) -> str:
    return f"node.violation.{check_token(offender)}"


def unban_subject(node: str) -> str:
    """Where the operator (``admin``) lifts ``node``'s ban."""
    return f"node.unban.{check_token(node)}"


def audit_anchor_subject(recorder: str, chain: str) -> str:
    """Where ``recorder`` anchors the audit chain of the database ``chain`` (``services.recorder.anchor``)."""
    return f"audit.anchor.{check_token(recorder)}.{check_token(chain)}"


def audit_anchor_filter(chain: str) -> str:
    """Every recorder's anchors of the audit chain ``chain``."""
    return f"audit.anchor.*.{check_token(chain)}"


def proto_recipient(subject: str) -> str | None:
    """The ``<to>`` token of a point-to-point protocol subject, else None."""
    parts = subject.split(".")
    if parts[0] == "proto" and len(parts) == 6:
        return parts[5]
    return None


# ---- buckets --------------------------------------------------------------------------------------------

BUCKET_NODES: Final = "nodes"
BUCKET_BANS: Final = "bans"
BUCKET_ROUNDS: Final = "rounds"
BUCKET_PRESIG: Final = "presig"
BUCKET_KEYS: Final = "keys"
BUCKET_CONFIG: Final = "config"
BUCKETS: Final[tuple[str, ...]] = (
    BUCKET_NODES,
    BUCKET_BANS,
    BUCKET_ROUNDS,
    BUCKET_PRESIG,
    BUCKET_KEYS,
    BUCKET_CONFIG,
)

# ---- who signs which KV value --------------------------------------------------------------------------

# bucket -> (key pattern, identity) pairs. A value a service acts on is a signed envelope
# (``services.runtime.signed_kv``) whose subject is ``$KV.<bucket>.<key>``; a reader accepts it only when
# its signer is named here for that key ("node" = every node-k; "{self}" in a pattern = the signer's own
# name). The broker's write rights (PUBLISH_RIGHTS) are the first line; this table is checked on every read.
KV_WRITERS: Final[dict[str, tuple[tuple[str, str], ...]]] = {
    BUCKET_CONFIG: (
        ("policy", "admin"),  # the spending policy (``mpcw policy set``)
        ("dkg.*", "admin"),  # a DKG request (``mpcw dkg start``)
    ),
    BUCKET_BANS: (("*", "monitor"),),  # ``<identity>`` -> BanRecord
    BUCKET_KEYS: (
        ("hostpubkey.{self}", "node"),  # each node its own ChillDKG host key
        ("*.*.result.{self}", "node"),  # each node its statement of a DKG result it holds a share of
        ("frost.*", "consensus"),  # the DKG result record, as coordinator (believed only with the statements)
    ),
}


def kv_subject(bucket: str, key: str) -> str:
    """The subject a KV write of ``key`` in ``bucket`` is stored under (what a signed value is bound to)."""
    return f"$KV.{check_token(bucket)}.{key}"


def kv_writer_allowed(identity: str, bucket: str, key: str) -> bool:
    """Whether a value at ``bucket``/``key`` signed by ``identity`` may be acted on (``KV_WRITERS``)."""
    role = "node" if is_node(identity) else identity
    return any(
        who == role and subject_matches(pattern.replace("{self}", identity), key)
        for pattern, who in KV_WRITERS.get(bucket, ())
    )


# ---- authorization table --------------------------------------------------------------------------------

_OWN: Final[tuple[str, ...]] = (
    "node.heartbeat.{self}",
    "node.violation.*",
    "proto.*.*.*.{self}",
    "proto.*.*.*.{self}.*",
    "$KV.nodes.{self}",
)
_NODE: Final[tuple[str, ...]] = (
    *_OWN,
    "vote.*.{self}",
    "$KV.presig.frost.*.{self}.b.*",  # its own nonce commitments only (never a claim)
    "$KV.keys.hostpubkey.{self}",  # its own ChillDKG host key only
    "$KV.keys.*.*.result.{self}",  # its own statement of a DKG result (``<scheme>.<key_id>.result.<node>``)
)

# identity (or "node" for every node-k) -> subjects it may publish (stream subjects and KV writes)
PUBLISH_RIGHTS: Final[dict[str, tuple[str, ...]]] = {
    "node": _NODE,
    "intake": (*_OWN, "tx.requested.>"),
    "consensus": (
        *_OWN,
        "tx.voting.>",
        "tx.approved.>",
        "tx.rejected.>",
        "tx.signing.>",
        "tx.failed.>",
        "$KV.rounds.>",
        "$KV.presig.>",
        "$KV.keys.frost.*",  # the DKG result record, as ChillDKG coordinator (never a node's statement)
    ),
    "monitor": (*_OWN, "node.violation.>", "$KV.bans.>"),
    "presig": (*_OWN, "$KV.presig.>"),
    "broadcaster": (
        *_OWN,
        "tx.signed.>",
        "tx.broadcast.>",
        "tx.confirmed.>",
        "tx.failed.>",
        "$KV.rounds.final.>",  # the final-outcome arbiter (create-only ``final.<tx>``), never a round
    ),
    "recorder": (*_OWN, "audit.anchor.{self}.*"),
    "admin": (">",),
}

# identity (or "node" for every node-k) -> its durable consumers: name ("{self}" substituted) -> filter
# subject. The broker lets an identity create, read from, ack on and delete only these durables (on the
# stream of their filter), so no identity can take another's deliveries (a node acking the recorder's
# or consensus's messages away would leave gaps in the audit log or starve a vote count). The services
# name their consumers from this table (``durable(identity, name)``).
CONSUMERS: Final[dict[str, dict[str, str]]] = {
    "node": {
        "signer-{self}-requests": "tx.requested.>",
        "signer-{self}-signing": "tx.signing.>",
        "signer-{self}-noncegen": "proto.noncegen.*.1.presig.{self}",
        "signer-{self}-dkg": "proto.chilldkg.*.*.consensus",
        "signer-{self}-dkg-inv": "proto.chilldkg.*.6.consensus.{self}",  # its ChillDKG investigation data
    },
    "consensus": {
        "consensus-requested": "tx.requested.>",
        "consensus-votes": "vote.>",
        "consensus-signed": "tx.signed.>",
        "consensus-failed": "tx.failed.>",
        "consensus-refusals": "proto.frost.*.refused.*",
        "consensus-dkg": "proto.chilldkg.*.*.*",
        "consensus-violations": "node.violation.*",
    },
    "broadcaster": {
        "broadcaster-psigs": "proto.frost.*.2.*",
        "broadcaster-signed": "tx.signed.>",
        "broadcaster-confirm": "tx.broadcast.>",
    },
    "recorder": {
        "recorder-tx": "tx.>",
        "recorder-vote": "vote.>",
        "recorder-violation": "node.violation.>",
        "recorder-unban": "node.unban.>",
    },
    "monitor": {
        "monitor-heartbeat": "node.heartbeat.>",
        "monitor-violation": "node.violation.>",
        "monitor-unban": "node.unban.>",
    },
}


# identity (or "node" for every node-k) -> the KV buckets it reads: bucket -> "get" (single keys, by a
# stream message get: no consumer) or "watch" (also watches and key listings, which need an ephemeral
# consumer on the bucket's stream). The broker lets an identity make consumers only on the buckets it
# watches, and pull from none of them. nats-server does not check the deliver subject of a new consumer
# against its creator's rights: on a bucket it watches, an identity could have values pushed into an
# inbox of another identity whose name it knows (names are not listable: no consumer list or foreign
# info); they are stored values, and a reader acts only on a value signed by a writer ``KV_WRITERS``
# allows for that key (``services.runtime.signed_kv``). Buckets it writes (``PUBLISH_RIGHTS``) it may get.
KV_READERS: Final[dict[str, dict[str, str]]] = {
    # the policy; its DKG statements to restate (a key listing); its own nonce batches to withdraw
    "node": {BUCKET_CONFIG: "watch", BUCKET_KEYS: "watch", BUCKET_PRESIG: "watch"},
    "intake": {BUCKET_NODES: "watch", BUCKET_KEYS: "get", BUCKET_CONFIG: "get"},
    "consensus": {
        BUCKET_ROUNDS: "watch",
        BUCKET_BANS: "watch",
        BUCKET_CONFIG: "watch",  # DKG requests
        BUCKET_PRESIG: "watch",  # the nonce pool
        BUCKET_KEYS: "get",
    },
    "presig": {BUCKET_PRESIG: "watch", BUCKET_KEYS: "get"},
    "broadcaster": {BUCKET_KEYS: "get", BUCKET_ROUNDS: "get"},
    "monitor": {},
    "recorder": {},
}


# identity (or "node") -> the message streams it reads single messages back from, verified
# (``services.runtime.lookup``); its consumers read the rest
STREAM_READERS: Final[dict[str, tuple[str, ...]]] = {
    "node": (STREAM_TX,),  # the request of a signing
    "consensus": (STREAM_TX, STREAM_PROTO),
    "broadcaster": (STREAM_TX, STREAM_PROTO),
}


def stream_reads_of(identity: str) -> tuple[str, ...]:
    return STREAM_READERS.get("node" if is_node(identity) else identity, ())


def kv_reads_of(identity: str) -> dict[str, str]:
    """``KV_READERS`` of ``identity``: bucket -> "get" or "watch"."""
    return dict(KV_READERS.get("node" if is_node(identity) else identity, {}))


def kv_writes_of(identity: str) -> list[str]:
    """The buckets ``identity`` may write some key of (from ``PUBLISH_RIGHTS``)."""
    return [b for b in BUCKETS if any(p.startswith(f"$KV.{b}.") for p in publish_rights(identity))]


def consumers_of(identity: str) -> dict[str, str]:
    """The durable consumers ``identity`` may use: concrete name -> filter subject."""
    table = CONSUMERS.get("node" if is_node(identity) else identity, {})
    return {name.replace("{self}", identity): f.replace("{self}", identity) for name, f in table.items()}


def consumers_with_prefix(identity: str, prefix: str) -> dict[str, str]:
    """:func:`consumers_of` with ``<prefix>-`` instead of ``<identity>-`` at the start of each name (tests
    run a second recorder or monitor beside the first under other names; a broker rendered with
    ``consumer_rights="own"``, as ``mpcw up`` renders it, admits only the table's names)."""
    head = f"{identity}-"
    return {
        (f"{prefix}-{name[len(head) :]}" if name.startswith(head) else name): subject
        for name, subject in consumers_of(identity).items()
    }


def durable(identity: str, name: str) -> tuple[str, str]:
    """``(filter subject, durable name)`` of the consumer ``name`` (as written in ``CONSUMERS``, e.g.
    ``signer-{self}-requests``) of ``identity``; KeyError for a consumer the table does not give it."""
    concrete = name.replace("{self}", identity)
    return consumers_of(identity)[concrete], concrete


# every JetStream client also needs these (see DESIGN.md, Known pitfalls); "{inbox}" is its inbox prefix
JS_CLIENT_SUBSCRIBE: Final[tuple[str, ...]] = ("{inbox}.>",)


def inbox_prefix(identity: str) -> str:
    """Each identity's private reply-subject prefix (the server lets it subscribe only there)."""
    return f"_INBOX.{check_token(identity)}"


def publish_rights(identity: str) -> list[str]:
    """The concrete publish patterns of ``identity`` (``{self}`` substituted)."""
    key = "node" if is_node(identity) else identity
    patterns = PUBLISH_RIGHTS.get(key)
    if patterns is None:
        return []
    return [p.replace("{self}", identity) for p in patterns]


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard match: ``*`` one token, ``>`` one or more trailing tokens."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, tok in enumerate(p):
        if tok == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if tok != "*" and tok != s[i]:
            return False
    return len(p) == len(s)


def _pattern_regex(pattern: str) -> str:
    """A NATS subject pattern as a regular expression (the same match as :func:`subject_matches`)."""
    parts = []
    for tok in pattern.split("."):
        parts.append("[^.]+" if tok == "*" else "[^.]+(?:\\.[^.]+)*" if tok == ">" else re.escape(tok))
    return r"\.".join(parts)


@functools.lru_cache(maxsize=1024)
def _sender_subjects(identity: str) -> re.Pattern[str]:
    """One compiled expression for the stream subjects ``identity`` may publish on (every consumer asks
    this for every message it receives)."""
    if identity == "admin":
        # the operator may write anything the broker lets it, but never speaks for a node or a service
        alternatives = [
            _pattern_regex("node.violation.>"),
            _pattern_regex("node.unban.*"),  # the operator lifts bans
            re.escape(heartbeat_subject("admin")),
        ]
    else:
        alternatives = [_pattern_regex(p) for p in publish_rights(identity) if not p.startswith("$")]
    return re.compile("|".join(f"(?:{a})" for a in alternatives) or "(?!)")


def sender_may_publish(identity: str, subject: str) -> bool:
    """Whether ``identity`` may be the (signed) sender of a message on ``subject``."""
    return _sender_subjects(identity).fullmatch(subject) is not None
