"""The closed vocabularies of the wire contract: schemes and the kinds of misbehaviour a
receiver reports. Each is a ``Literal`` of the strings that travel (the wire format is unchanged), so
msgspec refuses any other value when it decodes, and mypy refuses one in the code that writes it.

A new value is added here first; a value is never removed while messages or stored values that carry it
may still be read."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal, get_args


class TxState(StrEnum):
    """A spend's state as REST and the recorder show it; what may follow what is ``core.lifecycle``'s."""

    PENDING = "pending"
    VOTING = "voting"
    APPROVED = "approved"
    SIGNING = "signing"
    SIGNED = "signed"
    BROADCAST = "broadcast"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"
    FAILED = "failed"


Scheme = Literal["frost"]
"""A threshold signature scheme the wallet signs with (``frost``: FROST / BIP-445, P2TR key path)."""

ViolationKind = Literal[
    "bad-vote",  # a vote whose body does not match its subject or sender
    "equivocation",  # a node voted both ways
    "sighash-mismatch",  # a node approved other sighashes than the quorum
    "invalid-partial-sig",  # a partial signature that does not verify
    "dkg-invalid-message",  # a ChillDKG message blamed on its sender
    "dkg-invalid-signature",  # a ChillDKG certificate signature blamed on its sender
    "bad-event",  # a lifecycle event with a wrong payload (the recorder)
    "illegal-transition",  # a lifecycle event the transaction cannot take (the recorder)
    "dkg-invalid-ack",  # a ChillDKG recovery acknowledgment blamed on its sender
    "dkg-blamed",  # a ChillDKG participant blamed by the session (written by earlier versions)
    "timeout",  # a signer of an attempt sent no partial signature before the attempt timed out
]
"""What a service reports in a ``schemas.messages.Violation``."""

NOT_COUNTING_VIOLATIONS: frozenset[str] = frozenset({"timeout"})
"""Kept and shown, never counted toward a ban: a node that is down or slow is not malicious, and banning
it would take a node the quorum needs out for a day."""

RejectionKind = Literal[
    "malformed",  # bytes are not an envelope
    "unknown-sender",  # sender not in identities.json
    "bad-signature",  # signature does not verify (forged or tampered)
    "subject-mismatch",  # envelope subject differs from the delivery subject
    "sender-not-allowed",  # the sender may not publish on this subject
    "flood",  # a verified sender over its rate limit (slowed, not dropped: services.runtime.flood)
    "bad-recipient",  # point-to-point fields inconsistent with the subject
    "decrypt-failed",  # ciphertext does not open
    "unknown-type",  # payload type not in the receiver's registry
    "bad-payload",  # payload does not decode as its type
    "poison",  # the handler failed on it too many times
    "stale",  # a signed KV value not newer than the one in force for its key (a replay)
    "wrong-stream",  # a KV watch delivery from another stream or outside the watched keys
    "key-record-unproven",  # a key record its nodes' statements contradict (services.runtime.key_proof)
    "dkg-bad-participants",  # a DKG start naming other nodes than the cluster's (the participant refuses)
    "dkg-bad-threshold",  # a DKG start with another threshold than the cluster's
    "dkg-bad-hostpubkey",  # a DKG start with host keys the nodes did not publish
    "dkg-invalid-message",  # a ChillDKG message the participant's machine refused (the sender's)
    "dkg-blamed",  # a party a failed ChillDKG session blames
]
"""Why a receiver dropped a message, or refused a value or a request, and reported it
(``schemas.envelope.BusRejection``)."""

SCHEMES: tuple[str, ...] = get_args(Scheme)
VIOLATION_KINDS: tuple[str, ...] = get_args(ViolationKind)
REJECTION_KINDS: tuple[str, ...] = get_args(RejectionKind)
