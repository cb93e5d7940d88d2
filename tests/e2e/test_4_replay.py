"""Replays: a stored ``tx.requested`` and a stored vote, re-published byte for byte as ``admin`` under a
fresh ``Nats-Msg-Id`` (so JetStream de-duplication does not hide them), change nothing.

The test waits until every durable consumer of the stream has acknowledged the replayed message (so
every service has handled it) before it compares: same state and timeline, no second transaction, vote
or transition row, no new event for the spend, no new signing round, and no violation blamed on the node
whose genuine vote an outsider replayed.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from services.runtime.bus import Bus
from services.runtime.lookup import last_message
from tests.e2e.conftest import Cluster, wait_consumers_caught_up

pytestmark = pytest.mark.e2e


def _snapshot(cluster: Cluster, tx_id: str) -> dict[str, Any]:
    t = cluster.get_tx(tx_id)
    return {
        "state": t["state"],
        "timeline": t["timeline"],
        "votes": t["votes"],
        "txid": t["txid"],
        "tx_rows": [
            dict(r) for r in cluster.fetch("SELECT id, state, txid FROM transactions WHERE id = $1", tx_id)
        ],
        "spend_requests": cluster.fetch("SELECT count(*) AS n FROM spend_requests WHERE tx_id = $1", tx_id)[
            0
        ]["n"],
        "vote_rows": [
            (r["node_id"], r["approve"])
            for r in cluster.fetch(
                "SELECT node_id, approve FROM votes WHERE tx_id = $1 ORDER BY node_id", tx_id
            )
        ],
        "transitions": [
            (r["from_state"], r["to_state"])
            for r in cluster.fetch(
                "SELECT from_state, to_state FROM transaction_transitions WHERE tx_id = $1 ORDER BY id", tx_id
            )
        ],
        "events": {k: v for k, v in cluster.tx_events(tx_id).items() if k != "requested"},
        "frost": sorted(
            s for s in cluster.subject_counts("PROTO", "proto.frost.>") if s.split(".")[2].startswith(tx_id)
        ),
        "violations": cluster.fetch("SELECT count(*) AS n FROM byzantine_violations")[0]["n"],
        "nodes": [
            dict(r) for r in cluster.fetch("SELECT node_id, banned_until FROM node_status ORDER BY node_id")
        ],
    }


def _replay(cluster: Cluster, subject: str) -> tuple[int, int]:
    """Re-publish the stored message on ``subject`` under a new msg id; wait until every consumer of its
    stream acknowledged it. Returns (sequence of the replay, number of consumers that handled it)."""

    async def go(bus: Bus) -> tuple[int, int]:
        original = await last_message(bus, subject)
        assert original is not None, f"nothing stored on {subject}"
        ack = await bus.publish_raw(subject, original.envelope_raw, f"replay-{uuid.uuid4().hex}")
        assert not ack.duplicate and ack.seq > original.seq
        n = await wait_consumers_caught_up(bus, original.stream, subject)
        # whatever a handler reported about it (a violation) is handled too
        await wait_consumers_caught_up(bus, "NODE", "node.violation.any")
        return ack.seq, n

    return cluster.with_bus(go)


@pytest.mark.parametrize("what", ["tx.requested", "vote"])
def test_replayed_message_changes_nothing(
    cluster: Cluster, confirmed_spend: dict[str, Any], what: str
) -> None:
    tx_id = confirmed_spend["id"]
    assert confirmed_spend["state"] == "confirmed"
    before = _snapshot(cluster, tx_id)
    requested_before = cluster.tx_events(tx_id)["requested"]
    if what == "tx.requested":
        subject = f"tx.requested.{tx_id}"
    else:
        voter = before["vote_rows"][0][0]
        subject = f"vote.{tx_id}.{voter}"
    stream = "TX" if what == "tx.requested" else "VOTE"
    count_before = cluster.subject_counts(stream, subject)[subject]

    _seq, consumers = _replay(cluster, subject)
    assert consumers >= 2, "expected several services to consume it"

    # the replay is really in the stream (so the services did see it) ...
    assert cluster.subject_counts(stream, subject)[subject] == count_before + 1
    if what == "tx.requested":
        assert cluster.tx_events(tx_id)["requested"] == requested_before + 1
    # ... and changed nothing
    after = _snapshot(cluster, tx_id)
    for key in before:
        assert after[key] == before[key], f"{what} replay changed {key}: {before[key]!r} -> {after[key]!r}"
