"""``services.recorder.anchor.check_anchors`` without servers: a chain of rows, anchors sealed with real
Ed25519 identity keys, and what the check makes of them when anchors are sparse (one every few rows, as
the recorder publishes them under load)."""

from __future__ import annotations

import hashlib
import os

import msgspec
import nacl.signing
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schemas import envelope as E
from schemas.messages import AuditAnchor
from schemas.names import audit_anchor_subject
from services.recorder.anchor import StoredAnchor, check_anchors
from services.runtime.db import AuditProblem
from services.runtime.seal import Ed25519Signer, Identities, IdentityKeys, seal

CHAIN = "mpcw"
SEEDS = {name: os.urandom(32) for name in ("recorder", "node-1")}
KEYS = {
    n: IdentityKeys(n, Ed25519Signer(seed), x25519.X25519PrivateKey.generate()) for n, seed in SEEDS.items()
}
IDS = Identities(
    {
        n: {
            "ed25519": bytes(nacl.signing.SigningKey(SEEDS[n]).verify_key).hex(),
            "x25519": k.exchange.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw).hex(),
        }
        for n, k in KEYS.items()
    }
)


def _chain(n: int) -> dict[int, bytes]:
    out, prev = {}, bytes(32)
    for i in range(1, n + 1):
        prev = hashlib.sha256(prev + f"row {i}".encode()).digest()
        out[i] = prev
    return out


def _anchor(stream_seq: int, seq: int, digest: bytes, signer: str = "recorder") -> StoredAnchor:
    subject = audit_anchor_subject("recorder", CHAIN)
    env = seal(
        KEYS[signer],
        IDS,
        subject=subject,
        type_name="AuditAnchor",
        payload=msgspec.msgpack.encode(AuditAnchor(chain=CHAIN, seq=seq, hash=digest)),
        msg_id=f"a{stream_seq}",
    )
    return StoredAnchor(stream_seq, subject, E.encode(env))


def test_sparse_anchors_bound_the_first_bad_row_from_below() -> None:
    honest = _chain(12)
    anchors = [_anchor(i, seq, honest[seq]) for i, seq in enumerate((4, 8, 12), 1)]
    assert check_anchors(CHAIN, honest, [], anchors, IDS).ok
    # row 6 rewritten, 6..12 re-hashed: the anchors at 8 and 12 disagree; 4 still vouches for 1..4
    forged = {i: (h if i < 6 else hashlib.sha256(h).digest()) for i, h in honest.items()}
    report = check_anchors(CHAIN, forged, [], anchors, IDS)
    assert not report.ok and report.first_bad == 5
    assert [(p.seq, p.first_bad) for p in report.anchor_problems] == [(8, 5), (12, 5)]
    assert report.anchored_to == 4 and report.unanchored == 8


def test_rows_after_the_last_anchor_are_counted_not_failed() -> None:
    rows = _chain(10)
    report = check_anchors(CHAIN, rows, [], [_anchor(1, 7, rows[7])], IDS)
    assert report.ok and report.anchored_to == 7 and report.unanchored == 3
    none = check_anchors(CHAIN, rows, [], [], IDS)
    assert none.ok and none.anchored_to == 0 and none.unanchored == 10


def test_a_truncated_tail_reports_the_row_after_the_last_good_anchor() -> None:
    rows = _chain(10)
    anchors = [_anchor(1, 5, rows[5]), _anchor(2, 9, rows[9])]
    cut = {i: h for i, h in rows.items() if i < 7}
    report = check_anchors(CHAIN, cut, [], anchors, IDS)
    assert report.first_bad == 6 and "missing" in report.anchor_problems[0].reason


def test_the_first_bad_sequence_is_the_lower_of_chain_and_anchors() -> None:
    rows = _chain(10)
    anchors = [_anchor(1, 5, rows[5]), _anchor(2, 10, b"\0" * 32)]  # rows 6..10 not as anchored
    low = check_anchors(CHAIN, rows, [AuditProblem(3, "hash does not match")], anchors, IDS)
    assert low.first_bad == 3
    high = check_anchors(CHAIN, rows, [AuditProblem(8, "hash does not match")], anchors, IDS)
    assert high.first_bad == 6


def test_an_anchor_signed_by_a_node_is_ignored_even_when_it_would_pass() -> None:
    rows = _chain(5)
    report = check_anchors(CHAIN, rows, [], [_anchor(1, 5, rows[5], signer="node-1")], IDS)
    assert report.ok and report.anchors == [] and report.anchored_to == 0
    assert [(i.sender, i.reason.split(":")[0]) for i in report.ignored] == [("node-1", "sender-not-allowed")]
