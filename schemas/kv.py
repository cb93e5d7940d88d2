"""Values stored in the JetStream key-value buckets (msgpack), and their key names.

- ``keys``: ``hostpubkey.<node>`` -> :class:`HostPubkey` (signed by that node);
  ``<scheme>.<key_id>`` -> :class:`KeyRecord` (signed by consensus, the ChillDKG coordinator: believed only
  with its proof); ``<scheme>.<key_id>.result.<node>`` -> :class:`KeyResultStatement` (signed by that node:
  the result its own ChillDKG finalized)
- ``presig``: ``frost.<key_id>.<node>.b.<batch>`` -> :class:`NonceBatch` (a node's nonce commitments, put
  by that node); ``frost.<key_id>.<node>.c.<batch>`` -> :class:`NonceClaim` (create-only: whoever creates
  it has the batch's nonces, and nobody ever gets one of them again)
- ``rounds``: ``<tx_id>`` -> :class:`RoundRecord` (CAS on revision); ``final.<tx_id>`` -> :class:`FinalRecord`
  (create-only: the one arbiter of a spend's final outcome, ``signed`` or ``failed``)
- ``config``: ``policy`` -> ``schemas.rest.Policy``; ``dkg.<session>`` -> :class:`DkgRequest`
- ``bans``: ``<identity>`` -> :class:`BanRecord` (written by the monitor)
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import msgspec

from schemas.kinds import Scheme
from schemas.names import check_token

DEFAULT_KEY_ID = "default"
POLICY_KEY = "policy"


class HostPubkey(msgspec.Struct, frozen=True, kw_only=True):
    node: str
    hostpubkey: bytes  # ChillDKG host public key (33 bytes)


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The public result of a DKG: what anyone needs to derive addresses and check signatures."""

    key_id: str
    scheme: Scheme
    threshold_pubkey: bytes  # 33-byte compressed
    pubshares: list[bytes]  # in participant order (= ``nodes`` order)
    chain_code: bytes
    nodes: list[str]
    n: int
    t: int
    session_id: str
    hostpubkeys: list[bytes]
    recovery_data: bytes = b""  # ChillDKG recovery data: public, lets any node restore its share
    created_ms: int = 0

    def statement(self) -> KeyResultStatement:
        """What every node's own statement of this result must say, field for field."""
        return KeyResultStatement(
            key_id=self.key_id,
            scheme=self.scheme,
            threshold_pubkey=self.threshold_pubkey,
            pubshares=list(self.pubshares),
            chain_code=self.chain_code,
            nodes=list(self.nodes),
            n=self.n,
            t=self.t,
            session_id=self.session_id,
            hostpubkeys=list(self.hostpubkeys),
            recovery_hash=recovery_hash(self.recovery_data),
        )


class KeyResultStatement(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """KV ``keys`` ``<scheme>.<key_id>.result.<node>``, signed by ``<node>``: the public result of a DKG as
    that node's own ChillDKG finalized it (after checking the threshold, the participants and their host
    keys itself). A :class:`KeyRecord` is the wallet's key only when the statements of all ``n`` nodes
    equal its :meth:`KeyRecord.statement` (``services.runtime.key_proof``): the coordinator that wrote the
    record cannot choose or swap the key."""

    key_id: str
    scheme: Scheme
    threshold_pubkey: bytes
    pubshares: list[bytes]
    chain_code: bytes
    nodes: list[str]
    n: int
    t: int
    session_id: str
    hostpubkeys: list[bytes]
    recovery_hash: bytes  # SHA-256 of the ChillDKG recovery data


def recovery_hash(recovery_data: bytes) -> bytes:
    return hashlib.sha256(recovery_data).digest()


# KV ``presig`` keeps an entry 24 h (its TTL in nats/jetstream.json), then drops it without a trace in the
# watch: a pool offers a nonce only while it is younger than this, and a signer deletes its secret
# nonces older than the TTL (NONCE_FILE_MAX_AGE_S), which can no longer be claimed.
NONCE_MAX_AGE_MS = 23 * 3600 * 1000
NONCE_FILE_MAX_AGE_S = 25 * 3600


NONCE_BATCH_MAX = 64  # nonce commitments per KV entry (one put announces them all)


class NonceCommitment(msgspec.Struct, frozen=True, array_like=True):
    nonce_id: str
    pubnonce: bytes  # BIP-445 public nonce, 66 bytes


class NonceBatch(msgspec.Struct, frozen=True, kw_only=True):
    """Nonce commitments a node precomputed together; offered until ``created_ms + NONCE_MAX_AGE_MS``."""

    node: str
    batch_id: str
    created_ms: int
    nonces: list[NonceCommitment]


class NonceClaim(msgspec.Struct, frozen=True, kw_only=True):
    """Batch ``batch_id`` of ``node`` is taken by ``by`` (a consensus process), which hands its nonces
    out one at a time, each at most once; what it has not handed out when it stops is never used."""

    node: str
    batch_id: str
    by: str
    claimed_ms: int


class DkgRequest(msgspec.Struct, frozen=True, kw_only=True):
    session_id: str
    scheme: Scheme
    key_id: str
    nodes: list[str]
    threshold: int
    requested_ms: int = 0


class RoundOutcome(StrEnum):
    """``RoundRecord.outcome`` in KV ``rounds``: how the vote ended (the strings stored since v1)."""

    OPEN = "open"
    APPROVED = "approved"
    REJECTED = "rejected"


class FinalOutcome(StrEnum):
    """``FinalRecord.outcome`` in KV ``rounds`` ``final.<tx_id>``: how the spend's signing ended."""

    SIGNED = "signed"
    FAILED = "failed"


class RoundRecord(msgspec.Struct, kw_only=True):
    tx_id: str
    n: int
    t: int
    nodes: list[str]
    opened: bool = False  # tx.voting published
    votes: dict[str, bytes] = {}  # node -> raw signed vote envelope (first vote counts)
    approve: dict[str, bool] = {}
    reasons: dict[str, list[str]] = {}
    outcome: RoundOutcome = RoundOutcome.OPEN  # how the vote ended
    amount: int = 0
    inputs: int = 0
    attempt: int = 0
    attempt_started_ms: int = 0
    failed_signers: list[str] = []
    done: bool = False  # signed, rejected or failed
    sighashes: dict[str, list[bytes]] = {}  # approving node -> the sighashes its vote approves
    approved_ms: int = 0  # when the round was approved (wall clock)
    final: FinalOutcome | None = None  # how the spend ended (set with done; None in older records)


class FinalRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """KV ``rounds`` ``final.<tx_id>``, create-only: whoever creates it decides how the spend ends.

    Consensus creates it with ``failed`` before publishing ``tx.failed``, the broadcaster with ``signed``
    before publishing ``tx.signed``; whoever finds it already there with the other outcome stands down.
    """

    outcome: FinalOutcome
    by: str  # identity that created it
    at_ms: int
    reason: str = ""  # why it failed (repeated in tx.failed if that has to be sent again)


class BanRecord(msgspec.Struct, frozen=True, kw_only=True):
    """KV ``bans`` ``<identity>``: banned until ``until_ms`` (consumers compare with their clock)."""

    node: str
    until_ms: int
    banned_at_ms: int
    violations: int
    reason: str = ""


def key_record_key(scheme: str, key_id: str) -> str:
    return f"{check_token(scheme)}.{check_token(key_id)}"


def key_result_key(scheme: str, key_id: str, node: str) -> str:
    """Where ``node`` states the result of the DKG of ``<scheme>.<key_id>`` (bucket ``keys``)."""
    return f"{key_record_key(scheme, key_id)}.result.{check_token(node)}"


def hostpubkey_key(node: str) -> str:
    return f"hostpubkey.{check_token(node)}"


FINAL_KEY_PREFIX = "final."


def final_key(tx_id: str) -> str:
    """The final-outcome arbiter of a spend, in bucket ``rounds`` (round keys are bare tx ids)."""
    return f"{FINAL_KEY_PREFIX}{check_token(tx_id)}"


def nonce_batch_key(key_id: str, node: str, batch_id: str) -> str:
    return f"frost.{check_token(key_id)}.{check_token(node)}.b.{check_token(batch_id)}"


def nonce_claim_key(key_id: str, node: str, batch_id: str) -> str:
    return f"frost.{check_token(key_id)}.{check_token(node)}.c.{check_token(batch_id)}"


def parse_presig_key(key: str) -> tuple[str, str, str, str] | None:
    """``(key_id, node, "b" | "c", batch id)`` of a ``presig`` key, None for anything else."""
    parts = key.split(".")
    if len(parts) != 5 or parts[0] != "frost" or parts[3] not in ("b", "c"):
        return None
    return parts[1], parts[2], parts[3], parts[4]
