"""The signed envelope every bus message travels in, and the report a receiver files when one is bad.

Wire format: ``msgspec.msgpack.encode(Envelope)``. The signature is Ed25519 by the sender's node identity
key over :func:`signing_bytes`: a domain tag followed by the msgpack array of every other field in
declaration order, so no field (not even ``subject`` or ``to``) can be changed without breaking it.

Point-to-point payloads (``to`` set) are encrypted to the recipient's X25519 key: ``eph`` is a fresh
X25519 public key, the key is ``HKDF-SHA256(ECDH(eph, to), salt=eph || to_pub, info=HKDF_INFO)``,
``payload`` is ``ChaCha20-Poly1305(key, nonce, plaintext, aad=aad(env))``. The AAD binds version,
sender, recipient, subject, type and msg_id, so a ciphertext cannot be moved to another envelope.
(The cryptography lives in ``services.runtime.seal``; this module is the pure wire contract.)
"""

from __future__ import annotations

import msgspec

from schemas.kinds import REJECTION_KINDS as REJECTION_KINDS  # the kinds, for readers of this module
from schemas.kinds import RejectionKind
from schemas.wire import BusMessage, WireStruct

ENVELOPE_VERSION = 1
SIG_DOMAIN = b"mpcw/envelope/v1\x00"
AAD_DOMAIN = b"mpcw/p2p-aad/v1\x00"
HKDF_INFO = b"mpcw/p2p-key/v1"
MAX_ENVELOPE_BYTES = 4 * 1024 * 1024


class Envelope(WireStruct, frozen=True, kw_only=True):
    v: int
    sender: str  # identity name (``node-3``, ``consensus``...), a key of identities.json
    type: str  # the payload's message type: its class name (``schemas.wire.tag_of``), its tag
    msg_id: str  # also the ``Nats-Msg-Id`` header (JetStream de-duplication)
    ts_ms: int
    subject: str  # the subject it was published on (a copy moved elsewhere does not verify there)
    to: str = ""  # recipient identity for point-to-point (payload encrypted), "" for broadcast
    payload: bytes = b""  # msgpack of the struct, or its ciphertext when ``to`` is set
    eph: bytes = b""  # ephemeral X25519 public key (encrypted only)
    nonce: bytes = b""  # ChaCha20-Poly1305 nonce (encrypted only)
    sig: bytes = b""  # Ed25519 over signing_bytes()


def signing_bytes(env: Envelope) -> bytes:
    """The canonical byte string the sender signs: every field but ``sig``, in declaration order."""
    return SIG_DOMAIN + msgspec.msgpack.encode(
        [
            env.v,
            env.sender,
            env.type,
            env.msg_id,
            env.ts_ms,
            env.subject,
            env.to,
            env.payload,
            env.eph,
            env.nonce,
        ]
    )


def aad(env: Envelope) -> bytes:
    """Associated data of a point-to-point ciphertext."""
    return AAD_DOMAIN + msgspec.msgpack.encode([env.v, env.sender, env.to, env.subject, env.type, env.msg_id])


def encode(env: Envelope) -> bytes:
    return msgspec.msgpack.encode(env)


def decode(raw: bytes) -> Envelope:
    """Parse (not verify) an envelope; raises ``msgspec.DecodeError``/``ValidationError`` on malformed."""
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise msgspec.ValidationError("envelope too large")
    return msgspec.msgpack.decode(raw, type=Envelope)


class BusRejection(BusMessage, frozen=True, kw_only=True):
    """``node.violation.<offender>``: a receiver dropped a message on the bus and says why.

    ``offender`` is the envelope sender when the signature verified (so the sender really sent it), the
    claimed sender prefixed with ``claimed:`` in ``detail`` otherwise, and ``unknown`` when nothing can be
    attributed. ``evidence`` is the raw message (at most 64 KiB), never decrypted content.
    """

    offender: str
    kind: RejectionKind
    detail: str
    reporter: str
    subject: str
    stream: str = ""
    stream_seq: int = 0
    evidence: bytes = b""


EVIDENCE_MAX = 64 * 1024
