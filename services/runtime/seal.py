"""Signing, verifying, encrypting and opening envelopes (``schemas.envelope``) with node identity keys."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Container, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from schemas import envelope as E
from schemas.kinds import RejectionKind
from schemas.names import proto_recipient, sender_may_publish

from .pki_files import identity_key_dir
from .secrets_dir import read_secret


class EnvelopeError(Exception):
    """A message that must be dropped. ``kind`` is one of ``schemas.kinds.RejectionKind``;
    ``sender`` is the *claimed* sender (or None), ``verified`` whether the signature checked out."""

    def __init__(
        self, kind: RejectionKind, detail: str, sender: str | None = None, verified: bool = False
    ) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.sender = sender
        self.verified = verified


class Ed25519Verifier:
    """An Ed25519 public key (libsodium through PyNaCl: about half the time of OpenSSL's verify, which
    every bus delivery pays); ``verify`` raises ``InvalidSignature`` like ``cryptography``'s keys."""

    __slots__ = ("_key",)

    def __init__(self, raw: bytes) -> None:
        self._key = nacl.signing.VerifyKey(raw)

    def verify(self, signature: bytes, data: bytes) -> None:
        if len(signature) != 64:
            raise InvalidSignature()
        try:
            self._key.verify(data, signature)
        except nacl.exceptions.BadSignatureError:
            raise InvalidSignature() from None


class Ed25519Signer:
    """An Ed25519 private key: ``sign(data)`` returns the 64-byte signature."""

    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        self._key = nacl.signing.SigningKey(seed)

    def sign(self, data: bytes) -> bytes:
        return bytes(self._key.sign(data).signature)

    def __repr__(self) -> str:
        return "Ed25519Signer(...)"


@dataclass(frozen=True)
class PublicIdentity:
    name: str
    ed25519: Ed25519Verifier
    x25519: x25519.X25519PublicKey
    x25519_raw: bytes


class Identities(Mapping[str, PublicIdentity]):
    """The public identity keys of every participant (``pki/identities.json``)."""

    def __init__(self, table: Mapping[str, Mapping[str, str]]) -> None:
        self._ids: dict[str, PublicIdentity] = {}
        for name, keys in table.items():
            xraw = bytes.fromhex(keys["x25519"])
            self._ids[name] = PublicIdentity(
                name=name,
                ed25519=Ed25519Verifier(bytes.fromhex(keys["ed25519"])),
                x25519=x25519.X25519PublicKey.from_public_bytes(xraw),
                x25519_raw=xraw,
            )

    @classmethod
    def load(cls, path: Path) -> Identities:
        return cls(json.loads(path.read_text()))

    def __getitem__(self, name: str) -> PublicIdentity:
        return self._ids[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass(frozen=True)
class IdentityKeys:
    """One identity's private keys (never logged, never sent)."""

    name: str
    signing: Ed25519Signer
    exchange: x25519.X25519PrivateKey

    @classmethod
    def load(cls, data_dir: Path, name: str) -> IdentityKeys:
        d = identity_key_dir(data_dir, name)
        return cls(
            name=name,
            signing=Ed25519Signer(read_secret(d / "ed25519.key", f"{name}'s signing key")),
            exchange=x25519.X25519PrivateKey.from_private_bytes(
                read_secret(d / "x25519.key", f"{name}'s exchange key")
            ),
        )

    def __repr__(self) -> str:  # keep keys out of tracebacks and logs
        return f"IdentityKeys({self.name!r})"


def _raw(pub: x25519.X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _p2p_key(shared: bytes, eph_pub: bytes, to_pub: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph_pub + to_pub, info=E.HKDF_INFO).derive(shared)


def seal(
    keys: IdentityKeys,
    identities: Identities,
    *,
    subject: str,
    type_name: str,
    payload: bytes,
    msg_id: str,
    to: str | None = None,
    ts_ms: int | None = None,
) -> E.Envelope:
    """Build and sign an envelope; encrypt ``payload`` to ``to`` when given."""
    env = E.Envelope(
        v=E.ENVELOPE_VERSION,
        sender=keys.name,
        type=type_name,
        msg_id=msg_id,
        ts_ms=int(time.time() * 1000) if ts_ms is None else ts_ms,
        subject=subject,
        to=to or "",
        payload=payload,
    )
    if to:
        recipient = identities[to]
        eph = x25519.X25519PrivateKey.generate()
        eph_pub = _raw(eph.public_key())
        nonce = os.urandom(12)
        key = _p2p_key(eph.exchange(recipient.x25519), eph_pub, recipient.x25519_raw)
        env = msgspec.structs.replace(env, eph=eph_pub, nonce=nonce, payload=b"")
        ct = ChaCha20Poly1305(key).encrypt(nonce, payload, E.aad(env))
        env = msgspec.structs.replace(env, payload=ct)
    sig = keys.signing.sign(E.signing_bytes(env))
    return msgspec.structs.replace(env, sig=sig)


def verify_envelope(raw: bytes, identities: Identities) -> E.Envelope:
    """Parse ``raw`` and check its signature against ``identities``; raises :class:`EnvelopeError`.

    This is all a third party needs to check a quorum certificate (a list of raw vote envelopes).
    """
    try:
        env = E.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EnvelopeError("malformed", str(exc)[:200]) from None
    if env.v != E.ENVELOPE_VERSION:
        raise EnvelopeError("malformed", f"unsupported envelope version {env.v}", env.sender)
    ident = identities.get(env.sender)
    if ident is None:
        raise EnvelopeError("unknown-sender", f"sender {env.sender[:64]!r} not in identities", env.sender)
    try:
        ident.ed25519.verify(env.sig, E.signing_bytes(env))
    except InvalidSignature:
        raise EnvelopeError("bad-signature", "Ed25519 signature does not verify", env.sender) from None
    return env


def check_delivery(env: E.Envelope, subject: str) -> None:
    """The envelope must have been published on ``subject`` and its sender may publish there."""
    if env.subject != subject:
        raise EnvelopeError("subject-mismatch", f"signed for {env.subject!r}", env.sender, verified=True)
    if not sender_may_publish(env.sender, subject):
        raise EnvelopeError(
            "sender-not-allowed", f"{env.sender} may not publish on {subject}", env.sender, verified=True
        )
    to = proto_recipient(subject)
    if (to or "") != env.to:
        raise EnvelopeError("bad-recipient", f"envelope to {env.to!r}, subject to {to!r}", env.sender, True)
    if env.to and (not env.eph or len(env.nonce) != 12):
        raise EnvelopeError("bad-recipient", "point-to-point envelope without encryption", env.sender, True)


def open_payload(env: E.Envelope, keys: IdentityKeys | None) -> bytes | None:
    """The plaintext payload: as is for broadcasts, decrypted when addressed to ``keys``, and None when
    it is addressed to somebody else (a monitor sees that the message exists, not what it says)."""
    if not env.to:
        return env.payload
    if keys is None or env.to != keys.name:
        return None
    try:
        eph = x25519.X25519PublicKey.from_public_bytes(env.eph)
        key = _p2p_key(keys.exchange.exchange(eph), env.eph, _raw(keys.exchange.public_key()))
        return ChaCha20Poly1305(key).decrypt(env.nonce, env.payload, E.aad(env))
    except (InvalidTag, ValueError):
        raise EnvelopeError("decrypt-failed", "ciphertext does not open", env.sender, verified=True) from None


def verify_certificate(
    certificate: list[bytes],
    identities: Identities,
    *,
    type_name: str = "Vote",
    own: Container[bytes] = (),
) -> list[E.Envelope]:
    """Verify every envelope of a quorum certificate; distinct senders, each allowed on its subject.

    ``own``: envelopes the caller sealed itself, byte for byte (its own vote): their signature needs no
    check. Returns the envelopes (decode their payloads with the message registry); raises EnvelopeError.
    """
    seen: set[str] = set()
    out: list[E.Envelope] = []
    for raw in certificate:
        if raw in own:
            try:
                env = E.decode(raw)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise EnvelopeError("malformed", str(exc)[:200]) from None
        else:
            env = verify_envelope(raw, identities)
        check_delivery(env, env.subject)
        if env.type != type_name:
            raise EnvelopeError("unknown-type", f"certificate entry of type {env.type!r}", env.sender, True)
        if env.sender in seen:
            raise EnvelopeError(
                "malformed", f"duplicate signer {env.sender} in certificate", env.sender, True
            )
        seen.add(env.sender)
        out.append(env)
    return out
