"""Envelopes without a network: sign/verify, encryption round trip, tamper detection, certificates."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from schemas import envelope as E
from services.runtime.seal import (
    EnvelopeError,
    Identities,
    IdentityKeys,
    check_delivery,
    open_payload,
    seal,
    verify_certificate,
    verify_envelope,
)
from services.runtime.secrets_dir import secrets_dir


class Secret(msgspec.Struct):
    share: bytes
    note: str


@pytest.fixture(scope="module")
def ids(pki: Path) -> Identities:
    return Identities.load(pki / "pki" / "identities.json")


def keys(pki: Path, name: str) -> IdentityKeys:
    return IdentityKeys.load(pki, name)


def test_private_files_are_0600_and_outside_the_data_directory(pki: Path) -> None:
    sdir = secrets_dir(pki)
    assert pki.resolve() not in sdir.resolve().parents
    keys = [*(sdir / "pki").glob("*.key"), *(sdir / "identities").glob("*/*.key")]
    assert len(keys) == 1 + 1 + 12 + 2 * 12  # CA, server, a TLS key and two identity keys per identity
    for p in keys:
        assert p.stat().st_mode & 0o777 == 0o600, p
    for d in (sdir, sdir / "pki", *(sdir / "identities").iterdir()):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert len(list((sdir / "identities").iterdir())) == 12  # node-1..5 + 7 services
    assert not list(pki.rglob("*.key")), "a private key in the data directory"
    assert (pki / "pki").stat().st_mode & 0o777 == 0o700
    # as root, PostgreSQL runs as the user "pgserver", who must traverse the data directory (x only)
    allowed = {0o700, 0o711} if os.geteuid() == 0 else {0o700}
    assert pki.stat().st_mode & 0o777 in allowed, oct(pki.stat().st_mode)


def test_sign_verify_round_trip(pki: Path, ids: Identities) -> None:
    env = seal(
        keys(pki, "node-1"), ids, subject="vote.t1.node-1", type_name="Vote", payload=b"p", msg_id="m1"
    )
    raw = E.encode(env)
    got = verify_envelope(raw, ids)
    assert got == env
    check_delivery(got, "vote.t1.node-1")
    assert open_payload(got, None) == b"p"


@pytest.mark.parametrize("field", ["sender", "type", "msg_id", "ts_ms", "subject", "payload", "sig"])
def test_tampering_any_field_breaks_the_signature(pki: Path, ids: Identities, field: str) -> None:
    env = seal(
        keys(pki, "node-1"), ids, subject="vote.t1.node-1", type_name="Vote", payload=b"p", msg_id="m1"
    )
    changed = {
        "sender": "node-2",
        "type": "TxApproved",
        "msg_id": "m2",
        "ts_ms": env.ts_ms + 1,
        "subject": "vote.t2.node-1",
        "payload": b"q",
        "sig": bytes(64),
    }[field]
    bad = msgspec.structs.replace(env, **{field: changed})
    with pytest.raises(EnvelopeError) as ei:
        verify_envelope(E.encode(bad), ids)
    assert ei.value.kind == "bad-signature"


def test_forged_with_wrong_key(pki: Path, ids: Identities) -> None:
    mallory = IdentityKeys(
        name="node-1", signing=keys(pki, "node-3").signing, exchange=keys(pki, "node-3").exchange
    )
    env = seal(mallory, ids, subject="vote.t1.node-1", type_name="Vote", payload=b"p", msg_id="m1")
    with pytest.raises(EnvelopeError, match="bad-signature"):
        verify_envelope(E.encode(env), ids)


@pytest.mark.parametrize("raw", [b"", b"\x00\x01garbage", msgspec.msgpack.encode({"v": 1}), b"\xc1" * 10])
def test_malformed(ids: Identities, raw: bytes) -> None:
    with pytest.raises(EnvelopeError) as ei:
        verify_envelope(raw, ids)
    assert ei.value.kind == "malformed"
    assert not ei.value.verified


def test_unknown_sender(pki: Path, ids: Identities) -> None:
    ghost = IdentityKeys(
        name="node-9", signing=keys(pki, "node-1").signing, exchange=keys(pki, "node-1").exchange
    )
    env = seal(ghost, ids, subject="vote.t1.node-9", type_name="Vote", payload=b"p", msg_id="m1")
    with pytest.raises(EnvelopeError, match="unknown-sender"):
        verify_envelope(E.encode(env), ids)


def test_sender_must_match_subject(pki: Path, ids: Identities) -> None:
    env = seal(
        keys(pki, "node-2"), ids, subject="vote.t1.node-1", type_name="Vote", payload=b"p", msg_id="m1"
    )
    got = verify_envelope(E.encode(env), ids)  # the signature is fine...
    with pytest.raises(EnvelopeError) as ei:
        check_delivery(got, "vote.t1.node-1")  # ...but node-2 may not speak on node-1's subject
    assert ei.value.kind == "sender-not-allowed" and ei.value.verified
    with pytest.raises(EnvelopeError, match="subject-mismatch"):
        check_delivery(got, "vote.t1.node-2")


def test_encrypt_round_trip_and_tamper(pki: Path, ids: Identities) -> None:
    secret = msgspec.msgpack.encode(Secret(share=b"\x42" * 32, note="top"))
    subj = "proto.frost.s1.1.node-1.node-2"
    env = seal(
        keys(pki, "node-1"), ids, subject=subj, type_name="Secret", payload=secret, msg_id="p1", to="node-2"
    )
    raw = E.encode(env)
    assert b"\x42" * 32 not in raw and b"top" not in raw
    got = verify_envelope(raw, ids)
    check_delivery(got, subj)
    assert open_payload(got, keys(pki, "node-2")) == secret
    assert open_payload(got, keys(pki, "node-3")) is None  # not for node-3: it cannot read it
    # a ciphertext moved into another envelope (re-signed by its sender) fails the AAD
    moved = msgspec.structs.replace(got, msg_id="p2", sig=b"")
    moved = msgspec.structs.replace(moved, sig=keys(pki, "node-1").signing.sign(E.signing_bytes(moved)))
    with pytest.raises(EnvelopeError, match="decrypt-failed"):
        open_payload(verify_envelope(E.encode(moved), ids), keys(pki, "node-2"))
    # recipient in the subject and in the envelope must agree
    with pytest.raises(EnvelopeError, match="bad-recipient"):
        env3 = seal(
            keys(pki, "node-1"), ids, subject=subj, type_name="Secret", payload=b"x", msg_id="p3", to="node-3"
        )
        check_delivery(verify_envelope(E.encode(env3), ids), subj)


def test_quorum_certificate(pki: Path, ids: Identities) -> None:
    cert = [
        E.encode(
            seal(keys(pki, n), ids, subject=f"vote.tx9.{n}", type_name="Vote", payload=b"yes", msg_id=f"v{n}")
        )
        for n in ("node-1", "node-2", "node-4", "node-5")
    ]
    envs = verify_certificate(cert, ids)
    assert [e.sender for e in envs] == ["node-1", "node-2", "node-4", "node-5"]
    with pytest.raises(EnvelopeError, match="duplicate signer"):
        verify_certificate([*cert, cert[0]], ids)
    forged = seal(
        keys(pki, "node-3"), ids, subject="vote.tx9.node-2", type_name="Vote", payload=b"y", msg_id="x"
    )
    with pytest.raises(EnvelopeError, match="sender-not-allowed"):
        verify_certificate([*cert[:3], E.encode(forged)], ids)


def test_a_certificate_entry_the_caller_sealed_itself_skips_only_the_signature_check(
    pki: Path, ids: Identities
) -> None:
    cert = [
        E.encode(
            seal(keys(pki, n), ids, subject=f"vote.tx8.{n}", type_name="Vote", payload=b"yes", msg_id=f"v{n}")
        )
        for n in ("node-1", "node-2", "node-3", "node-4")
    ]
    mine = {cert[0]: None}
    assert [e.sender for e in verify_certificate(cert, ids, own=mine)] == [
        "node-1",
        "node-2",
        "node-3",
        "node-4",
    ]
    # the same envelope with its signature broken is not the caller's own any more: checked, refused
    env = E.decode(cert[0])
    broken = E.encode(msgspec.structs.replace(env, sig=bytes(64)))
    with pytest.raises(EnvelopeError):
        verify_certificate([broken, *cert[1:]], ids, own=mine)
    # an own entry still has to be a vote, on a subject its sender may publish, once per sender
    with pytest.raises(EnvelopeError, match="duplicate signer"):
        verify_certificate([*cert, cert[0]], ids, own=mine)
    moved = E.encode(msgspec.structs.replace(env, subject="vote.tx8.node-2"))
    with pytest.raises(EnvelopeError, match="sender-not-allowed"):
        verify_certificate([moved, *cert[2:]], ids, own={moved: None})
