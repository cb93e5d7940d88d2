"""Every message on the bus, one ``msgspec.Struct`` per kind, their tagged union, and the registry
receivers decode with (derived from the union).

Subjects (see ``schemas.names``): ``tx.<event>.<tx_id>`` carry the lifecycle events below,
``vote.<tx_id>.<node>`` a :class:`Vote`, ``proto.<protocol>.<session>.<round>.<from>[.<to>]`` the
protocol messages, ``node.heartbeat.<node>`` a :class:`Heartbeat`. Each struct travels inside a signed
envelope (``schemas.envelope``) whose ``type`` names it; every message derives from
``schemas.wire.BusMessage`` (frozen, keyword-only, unknown fields refused, tagged with its class name under
``type``: see ``schemas.wire``), and :data:`AnyMessage` is their union. Bytes fields are raw bytes
(msgpack bin); amounts are integer satoshis. Version: bump ``SCHEMA_VERSION`` on any incompatible change.
"""

from __future__ import annotations

import msgspec

from schemas.envelope import BusRejection
from schemas.kinds import Scheme, ViolationKind
from schemas.wire import BusMessage, WireStruct, registry_of

# 2: every payload carries its tag (``type``, the class name); version 1 payloads (no tag) still decode,
# but a version 1 reader refuses a version 2 payload (an unknown field)
SCHEMA_VERSION = 2


class InputRef(WireStruct, frozen=True, kw_only=True):
    """One input of an unsigned spend: the outpoint and what it spends (for the sighash)."""

    txid: str  # hex, display order
    vout: int
    amount: int  # satoshis of the prevout
    script_pubkey: bytes
    # non-hardened BIP-32 path from the threshold key (empty = root)
    derivation: list[int] = msgspec.field(default_factory=list)


class TxRequested(BusMessage, frozen=True, kw_only=True):
    """``tx.requested.<tx_id>``: a spend proposed by intake; every signer votes on it."""

    tx_id: str
    key_id: str
    scheme: Scheme
    network: str
    recipient: str
    amount: int
    fee_rate: float  # sat/vB the spend was built for
    fee: int
    unsigned_tx: bytes  # serialized transaction without witnesses
    inputs: list[InputRef]
    change_index: int | None = None  # output index of the change, None when there is none
    change_derivation: list[int] = msgspec.field(default_factory=list)
    requested_by: str = ""
    requested_at_ms: int = 0


class Vote(BusMessage, frozen=True, kw_only=True):
    """``vote.<tx_id>.<node>``: one node's verdict after checking the request itself."""

    tx_id: str
    node: str
    approve: bool
    reasons: list[str] = msgspec.field(default_factory=list)
    # the node's own recomputation, one per input
    sighashes: list[bytes] = msgspec.field(default_factory=list)
    policy_version: int = 0


class TxVoting(BusMessage, frozen=True, kw_only=True):
    """``tx.voting.<tx_id>``: consensus opened the voting round."""

    tx_id: str
    round_id: str
    threshold: int
    total_nodes: int


class TxApproved(BusMessage, frozen=True, kw_only=True):
    """``tx.approved.<tx_id>``: quorum reached; ``certificate`` holds the ``t`` signed vote envelopes."""

    tx_id: str
    round_id: str
    certificate: list[bytes]  # raw signed envelopes of approving votes


class TxRejected(BusMessage, frozen=True, kw_only=True):
    """``tx.rejected.<tx_id>``: approval became impossible (or the request was invalid)."""

    tx_id: str
    reasons: list[str]
    # raw signed envelopes of the rejecting votes
    certificate: list[bytes] = msgspec.field(default_factory=list)


class NonceRef(WireStruct, frozen=True, kw_only=True):
    """A pooled FROST nonce commitment claimed for one input of one signing attempt."""

    nonce_id: str
    pubnonce: bytes  # 66 bytes, BIP-445 encoding


class TxSigning(BusMessage, frozen=True, kw_only=True):
    """``tx.signing.<tx_id>``: one signing attempt: the signer set and, per signer, a nonce per input."""

    tx_id: str
    attempt: int
    session_id: str
    signers: list[str]  # node names
    signer_ids: list[int]  # their BIP-445 participant identifiers (0-based)
    nonces: dict[str, list[NonceRef]]  # node -> one nonce per input
    certificate: list[bytes]  # the quorum certificate again, so a signer needs nothing else


class PartialSignatures(BusMessage, frozen=True, kw_only=True):
    """``proto.frost.<session>.2.<node>``: a signer's partial signatures, one per input."""

    tx_id: str
    session_id: str
    attempt: int
    node: str
    psigs: list[bytes]  # 32 bytes each


class SigningRefused(BusMessage, frozen=True, kw_only=True):
    """``proto.frost.<session>.refused.<node>``: why a signer will not sign this attempt."""

    tx_id: str
    session_id: str
    attempt: int
    node: str
    reason: str


class TxSigned(BusMessage, frozen=True, kw_only=True):
    """``tx.signed.<tx_id>``: the finished transaction, verified."""

    tx_id: str
    txid: str
    signed_tx: bytes
    attempt: int


class TxBroadcast(BusMessage, frozen=True, kw_only=True):
    tx_id: str
    txid: str


class TxConfirmed(BusMessage, frozen=True, kw_only=True):
    tx_id: str
    txid: str
    block_height: int
    confirmations: int


class TxFailed(BusMessage, frozen=True, kw_only=True):
    tx_id: str
    reason: str


class Heartbeat(BusMessage, frozen=True, kw_only=True):
    """``node.heartbeat.<node>``."""

    node: str
    ts_ms: int
    version: str = ""
    ready: bool = True
    detail: dict[str, int] = msgspec.field(default_factory=dict)


class Violation(BusMessage, frozen=True, kw_only=True):
    """``node.violation.<node>``: a node (or unknown sender) misbehaved; reported to the monitor."""

    offender: str
    kind: ViolationKind
    detail: str
    reporter: str
    subject: str = ""
    tx_id: str = ""
    evidence: bytes = b""  # the signed message that shows it (the offender's own where there is one)


class NodeUnban(BusMessage, frozen=True, kw_only=True):
    """``node.unban.<node>``: the operator lifts ``node``'s ban (only ``admin`` may publish it). The monitor
    clears the ban and counts only violations after it; the recorder audits it."""

    node: str
    reason: str


class NonceBatchRequest(BusMessage, frozen=True, kw_only=True):
    """``proto.noncegen.<batch>.1.presig.<node>``: presig asks a signer to precompute nonces."""

    batch_id: str
    node: str
    count: int


class DkgStart(BusMessage, frozen=True, kw_only=True):
    """``proto.chilldkg.<session>.0.<coordinator>``: start ChillDKG among ``nodes``."""

    session_id: str
    scheme: Scheme
    nodes: list[str]
    threshold: int
    hostpubkeys: list[bytes]
    key_id: str = "default"


class DkgMessage(BusMessage, frozen=True, kw_only=True):
    """``proto.chilldkg.<session>.<round>.<from>[.<to>]``: one ChillDKG message, encoded as the draft does."""

    session_id: str
    round: int
    data: bytes


class DkgResult(BusMessage, frozen=True, kw_only=True):
    """``proto.chilldkg.<session>.9.<node>``: a participant finished: the public output it holds."""

    session_id: str
    node: str
    threshold_pubkey: bytes
    pubshares: list[bytes]
    ok: bool = True
    reason: str = ""


class AuditAnchor(BusMessage, frozen=True, kw_only=True):
    """``audit.anchor.<recorder>.<chain>``: the audit log of database ``chain`` held row ``seq`` (its
    ``audit_log.id``) with hash ``hash`` when the recorder committed it; that hash covers every row before
    it (``services.recorder.anchor``)."""

    chain: str
    seq: int
    hash: bytes  # SHA-256, 32 bytes


AnyMessage = (
    TxRequested
    | Vote
    | TxVoting
    | TxApproved
    | TxRejected
    | TxSigning
    | PartialSignatures
    | SigningRefused
    | TxSigned
    | TxBroadcast
    | TxConfirmed
    | TxFailed
    | Heartbeat
    | Violation
    | NodeUnban
    | NonceBatchRequest
    | DkgStart
    | DkgMessage
    | DkgResult
    | AuditAnchor
    | BusRejection
)
"""Every bus message: a msgspec tagged union (tag field ``type``, tag the class name)."""

REGISTRY = registry_of(AnyMessage)
"""``type`` name -> message class, for the envelope's ``type`` (``schemas.wire.decode_payload``)."""
