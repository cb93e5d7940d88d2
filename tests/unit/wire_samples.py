"""One sample of every bus message, each with a subject its sender may publish on (the wire fixtures and
the round-trip tests use them: see ``tests/unit/fixtures/README-wire-v1-envelopes.md``)."""

from __future__ import annotations

from typing import Any

from schemas import envelope as E
from schemas import messages as m

SENDERS = [
    "intake",
    "consensus",
    "broadcaster",
    "presig",
    "recorder",
    "monitor",
    *(f"node-{i}" for i in range(1, 6)),
]
"""Every identity that sends (or, the monitor, receives) a sample."""
TX = "tx-0123456789abcdef"
SESSION = "s-feedface"


def samples() -> list[tuple[str, str, Any]]:
    """``(subject, sender, message)`` for every message type, in a fixed order."""
    inp = m.InputRef(txid="ab" * 32, vout=1, amount=50_000, script_pubkey=b"\x51\x20" + b"\x02" * 32)
    return [
        (
            f"tx.requested.{TX}",
            "intake",
            m.TxRequested(
                tx_id=TX,
                key_id="default",
                scheme="frost",
                network="regtest",
                recipient="bcrt1qexampleexampleexample",
                amount=12_345,
                fee_rate=2.5,
                fee=300,
                unsigned_tx=b"\x02\x00\x00\x00",
                inputs=[inp],
                change_index=1,
                change_derivation=[0, 7],
                requested_by="api-key-1",
                requested_at_ms=1_700_000_000_000,
            ),
        ),
        (
            f"vote.{TX}.node-1",
            "node-1",
            m.Vote(tx_id=TX, node="node-1", approve=True, sighashes=[b"\x11" * 32], policy_version=3),
        ),
        (f"tx.voting.{TX}", "consensus", m.TxVoting(tx_id=TX, round_id="r1", threshold=4, total_nodes=5)),
        (f"tx.approved.{TX}", "consensus", m.TxApproved(tx_id=TX, round_id="r1", certificate=[b"v1", b"v2"])),
        (
            f"tx.rejected.{TX}",
            "consensus",
            m.TxRejected(tx_id=TX, reasons=["over limit"], certificate=[b"v"]),
        ),
        (
            f"tx.signing.{TX}",
            "consensus",
            m.TxSigning(
                tx_id=TX,
                attempt=1,
                session_id=SESSION,
                signers=["node-1", "node-2"],
                signer_ids=[0, 1],
                nonces={"node-1": [m.NonceRef(nonce_id="n1", pubnonce=b"\x02" * 66)]},
                certificate=[b"v1"],
            ),
        ),
        (
            f"proto.frost.{SESSION}.2.node-1",
            "node-1",
            m.PartialSignatures(tx_id=TX, session_id=SESSION, attempt=1, node="node-1", psigs=[b"\x33" * 32]),
        ),
        (
            f"proto.frost.{SESSION}.refused.node-2",
            "node-2",
            m.SigningRefused(tx_id=TX, session_id=SESSION, attempt=1, node="node-2", reason="nonce used"),
        ),
        (
            f"tx.signed.{TX}",
            "broadcaster",
            m.TxSigned(tx_id=TX, txid="cd" * 32, signed_tx=b"\x02\x00", attempt=1),
        ),
        (f"tx.broadcast.{TX}", "broadcaster", m.TxBroadcast(tx_id=TX, txid="cd" * 32)),
        (
            f"tx.confirmed.{TX}",
            "broadcaster",
            m.TxConfirmed(tx_id=TX, txid="cd" * 32, block_height=101, confirmations=1),
        ),
        (f"tx.failed.{TX}", "consensus", m.TxFailed(tx_id=TX, reason="no quorum of signers")),
        (
            "node.heartbeat.node-3",
            "node-3",
            m.Heartbeat(node="node-3", ts_ms=1_700_000_000_000, version="0.1", detail={"nonces": 12}),
        ),
        (
            "node.violation.node-3",
            "consensus",
            m.Violation(
                offender="node-3", kind="equivocation", detail="voted both ways", reporter="consensus"
            ),
        ),
        (
            "proto.noncegen.b1.1.presig.node-2",
            "presig",
            m.NonceBatchRequest(batch_id="b1", node="node-2", count=16),
        ),
        (
            f"proto.chilldkg.{SESSION}.0.consensus",
            "consensus",
            m.DkgStart(
                session_id=SESSION,
                scheme="frost",
                nodes=["node-1", "node-2", "node-3"],
                threshold=2,
                hostpubkeys=[b"\x02" * 33] * 3,
            ),
        ),
        (
            f"proto.chilldkg.{SESSION}.1.node-1.node-2",
            "node-1",
            m.DkgMessage(session_id=SESSION, round=1, data=b"\x00\x01\x02"),
        ),
        (
            f"proto.chilldkg.{SESSION}.9.node-1",
            "node-1",
            m.DkgResult(
                session_id=SESSION, node="node-1", threshold_pubkey=b"\x03" * 33, pubshares=[b"\x02" * 33]
            ),
        ),
        (
            "audit.anchor.recorder.wallet",
            "recorder",
            m.AuditAnchor(chain="wallet", seq=42, hash=b"\x44" * 32),
        ),
        ("node.unban.node-3", "admin", m.NodeUnban(node="node-3", reason="reviewed: a false positive")),
        (
            "node.violation.node-4",
            "node-1",
            E.BusRejection(
                offender="node-4",
                kind="bad-signature",
                detail="Ed25519 signature does not verify",
                reporter="node-1",
                subject=f"vote.{TX}.node-4",
                stream="VOTES",
                stream_seq=7,
                evidence=b"\x85",
            ),
        ),
    ]
