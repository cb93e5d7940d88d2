"""Bad spend requests through REST: a 4xx with a reason, and nothing published or stored.

A few representative cases only (intake's integration tests cover the rest); what only the whole cluster
shows is that a refused request leaves no trace on the bus (the TX stream does not move) and no spend
request row.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import Cluster, external_address

pytestmark = pytest.mark.e2e

OK_RECIPIENT = external_address(b"bad-input")
MAINNET_ADDRESS = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"

CASES: list[tuple[str, Any, int, str]] = [
    # (case, body: bytes sent raw or a JSON-able dict, expected status, a word the reason must contain)
    ("malformed JSON", b'{"recipient": "bcrt1q', 400, "json"),
    (
        "unknown field",
        {"recipient": OK_RECIPIENT, "amount_sats": 10_000, "send_to_mars": True},
        422,
        "send_to_mars",
    ),
    ("negative amount", {"recipient": OK_RECIPIENT, "amount_sats": -5}, 422, "amount_sats"),
    ("wrong network", {"recipient": MAINNET_ADDRESS, "amount_sats": 10_000}, 400, "network"),
    (
        "insufficient funds",
        {"recipient": OK_RECIPIENT, "amount_sats": 20_000_000 * 100_000_000},
        409,
        "insufficient",
    ),
]


def _tx_stream_last_seq(cluster: Cluster) -> int:
    async def go(bus: Any) -> int:
        info = await bus.js.stream_info("TX")
        return int(info.state.last_seq)

    return cluster.with_bus(go)


@pytest.mark.parametrize(("case", "body", "status", "word"), CASES, ids=[c[0] for c in CASES])
def test_bad_spend_request_is_refused_and_nothing_is_published(
    cluster: Cluster, case: str, body: Any, status: int, word: str
) -> None:
    seq_before = _tx_stream_last_seq(cluster)
    rows_before = cluster.fetch("SELECT count(*) AS n FROM spend_requests")[0]["n"]
    with cluster.api() as api:
        if isinstance(body, bytes):
            r = api.post("/api/v1/transactions", content=body, headers={"Content-Type": "application/json"})
        else:
            r = api.post("/api/v1/transactions", json=body)
    assert r.status_code == status, (case, r.status_code, r.text)
    reply = r.json()
    reason = f"{reply.get('error', '')} {reply.get('detail', '')}".lower()
    assert reply.get("error"), reply
    assert word.lower() in reason, (case, reply)
    assert _tx_stream_last_seq(cluster) == seq_before, f"{case}: something was published"
    assert cluster.fetch("SELECT count(*) AS n FROM spend_requests")[0]["n"] == rows_before


def test_unknown_transaction_is_404(cluster: Cluster) -> None:
    with cluster.api() as api:
        r = api.get("/api/v1/transactions/no-such-spend-0123456789")
        assert r.status_code == 404, r.text
        assert r.json().get("error")
        # and an id that is not even well-formed is refused as such, not looked up
        r = api.get("/api/v1/transactions/not%20an%20id%3B%20DROP%20TABLE")
        assert r.status_code in (400, 404), r.text


def test_spend_without_api_key_is_refused(cluster: Cluster) -> None:
    seq_before = _tx_stream_last_seq(cluster)
    with cluster.api() as api:
        r = api.post(
            "/api/v1/transactions",
            json={"recipient": OK_RECIPIENT, "amount_sats": 10_000},
            headers={"X-API-Key": "mpcw_nope_nope"},
        )
    assert r.status_code in (401, 403), r.text
    assert _tx_stream_last_seq(cluster) == seq_before
