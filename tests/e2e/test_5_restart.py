"""Kill one service in the middle of a spend: the supervisor restarts it and the spend still ends
``confirmed``, exactly once.

"In the middle" is made deterministic rather than left to timing: the victim is frozen (SIGSTOP) before
the spend is requested, the spend is let run up to the point where it cannot go on without the victim
(the test waits for that point on the bus), and only then is the victim killed (SIGKILL works on a
stopped process). So the spend provably depended on the restarted process, and whatever the victim had
been handed but not finished is exactly what a restart must pick up.

- consensus: killed after the votes are in, before it opened the round (no ``tx.voting`` yet); once with
  SIGKILL and once with SIGTERM (a graceful stop must hand back what it was given);
- signer-node-2: node-5 is kept frozen so node-2's share is needed (t = 4 of the 4 others); node-2 is
  frozen after it voted, consensus publishes ``tx.signing`` with node-2 in the set, then node-2 dies;
- broadcaster: killed after ``tx.signed``, before anything was broadcast;
- recorder: frozen through the whole spend (confirmed on the bus), killed before it projected a thing;
- presig: killed after the spend claimed its nonces (the pool must refill after the restart);
- intake: killed right after it accepted the spend (the API must come back and show it confirmed);
- monitor: frozen through the spend, killed after ``tx.signed``;
- devchain: frozen while the broadcaster is sending to it, killed, restarted from its data dir.

Exactly once: one transaction row, every lifecycle event once in the TX stream (``tx.signing`` may repeat
only as a retry with another attempt number), no duplicated transition, one vote per node, one
transaction on the chain spending the inputs, no pooled nonce ever claimed twice.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from schemas.messages import TxSigning
from services.runtime.bus import Bus
from tests.e2e.conftest import (
    LIFECYCLE,
    Cluster,
    ClusterError,
    external_address,
    frozen,
    read_stream,
    wait_for,
)

pytestmark = pytest.mark.e2e

Scenario = Callable[[Cluster, "Spend"], None]


@dataclass
class Spend:
    recipient: str
    sats: int
    tx_id: str = ""
    killed_pid: int = 0


def _events(c: Cluster, s: Spend) -> dict[str, int]:
    return c.tx_events(s.tx_id)


def _votes(c: Cluster, s: Spend) -> set[str]:
    return {subj.split(".")[2] for subj in c.subject_counts("VOTE", f"vote.{s.tx_id}.*")}


def _kill(c: Cluster, service: str, s: Spend, sig: signal.Signals = signal.SIGKILL) -> None:
    s.killed_pid = c.pid(service)
    os.kill(s.killed_pid, sig)
    if sig != signal.SIGKILL:
        os.kill(s.killed_pid, signal.SIGCONT)  # a stopped process acts on SIGTERM once continued


# A frozen service may still have a pull request outstanding at the server (consumers fetch with a 1 s
# expiry): a message delivered into it is redelivered only after ack_wait (30 s) once the process died.
# Scenarios that wait SETTLE_S after freezing let that request expire, so the restarted process finds
# the work still in the stream; the consensus scenario deliberately does not (the ack_wait path).
SETTLE_S = 1.3


def scenario_consensus(c: Cluster, s: Spend) -> None:
    with frozen(c, "consensus"):
        s.tx_id = c.request_spend(s.recipient, s.sats)
        wait_for("the votes", lambda: len(_votes(c, s)) >= c.info["t"])
        assert "voting" not in _events(c, s)
        _kill(c, "consensus", s)


def scenario_consensus_term(c: Cluster, s: Spend) -> None:
    """Graceful stop with the work already delivered: it must be handed back (nak), not lost."""
    with frozen(c, "consensus"):
        s.tx_id = c.request_spend(s.recipient, s.sats)
        wait_for("the votes", lambda: len(_votes(c, s)) >= c.info["t"])
        assert "voting" not in _events(c, s)
        _kill(c, "consensus", s, signal.SIGTERM)


def scenario_signer(c: Cluster, s: Spend) -> None:
    with frozen(c, "signer-node-5"), frozen(c, "consensus"):
        s.tx_id = c.request_spend(s.recipient, s.sats)
        wait_for("4 votes", lambda: _votes(c, s) >= {"node-1", "node-2", "node-3", "node-4"})
        with frozen(c, "signer-node-2"):
            time.sleep(SETTLE_S)
            os.kill(c.pid("consensus"), signal.SIGCONT)  # consensus approves and starts signing now
            wait_for("tx.signing", lambda: "signing" in _events(c, s))
            signing = _signing_messages(c, s.tx_id)
            assert signing and "node-2" in signing[0].signers, signing
            assert "signed" not in _events(c, s)
            _kill(c, "signer-node-2", s)


def _psigs(c: Cluster, s: Spend) -> int:
    return len(c.subject_counts("PROTO", f"proto.frost.{s.tx_id}-a1.2.*"))


def _frozen_until(service: str, event: str, settle: float = SETTLE_S) -> Scenario:
    """Freeze ``service``, request the spend, kill ``service`` once ``tx.<event>`` is out."""

    def run(c: Cluster, s: Spend) -> None:
        with frozen(c, service):
            time.sleep(settle)
            s.tx_id = c.request_spend(s.recipient, s.sats)
            wait_for(f"tx.{event}", lambda: event in _events(c, s), timeout=30)
            _kill(c, service, s)

    return run


def scenario_broadcaster(c: Cluster, s: Spend) -> None:
    with frozen(c, "broadcaster"):
        time.sleep(SETTLE_S)
        s.tx_id = c.request_spend(s.recipient, s.sats)
        wait_for("the partial signatures", lambda: _psigs(c, s) >= c.info["t"])
        assert "signed" not in _events(c, s)
        _kill(c, "broadcaster", s)


def scenario_recorder(c: Cluster, s: Spend) -> None:
    with frozen(c, "recorder"):
        time.sleep(SETTLE_S)
        s.tx_id = c.request_spend(s.recipient, s.sats)
        wait_for("tx.confirmed", lambda: "confirmed" in _events(c, s), timeout=30)
        rows = c.fetch("SELECT state FROM transactions WHERE id = $1", s.tx_id)
        assert [r["state"] for r in rows] in ([], ["pending"]), rows  # nothing projected yet
        _kill(c, "recorder", s)


def scenario_intake(c: Cluster, s: Spend) -> None:
    s.tx_id = c.request_spend(s.recipient, s.sats)
    _kill(c, "intake", s)


def scenario_devchain(c: Cluster, s: Spend) -> None:
    # intake needs the chain to build the spend: freeze the chain only once the broadcaster is about to
    # send (the broadcaster is held until then), then let it send into the frozen chain and kill that
    with frozen(c, "broadcaster"):
        s.tx_id = c.request_spend(s.recipient, s.sats)
        wait_for("the partial signatures", lambda: _psigs(c, s) >= c.info["t"])
        with frozen(c, "devchain"):
            os.kill(c.pid("broadcaster"), signal.SIGCONT)
            wait_for("tx.signed", lambda: "signed" in _events(c, s))
            time.sleep(0.3)  # the broadcaster is now waiting on the frozen chain
            assert "broadcast" not in _events(c, s)
            _kill(c, "devchain", s)


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "consensus": ("consensus", scenario_consensus),
    "consensus-TERM": ("consensus", scenario_consensus_term),
    "signer-node-2": ("signer-node-2", scenario_signer),
    "broadcaster": ("broadcaster", scenario_broadcaster),
    "recorder": ("recorder", scenario_recorder),
    "presig": ("presig", _frozen_until("presig", "signing")),
    "intake": ("intake", scenario_intake),
    "monitor": ("monitor", _frozen_until("monitor", "signed")),
    "devchain": ("devchain", scenario_devchain),
}


def _signing_messages(c: Cluster, tx_id: str) -> list[TxSigning]:
    async def go(bus: Bus) -> list[TxSigning]:
        out = []
        for m in await read_stream(bus, "TX"):
            if m.subject.startswith("tx.signing."):
                _env, payload = bus.open(m.data, m.subject)
                if tx_id in ("", payload.tx_id):
                    out.append(payload)
        return out

    return c.with_bus(go)


def assert_exactly_once(c: Cluster, tx_id: str, t: dict[str, Any]) -> None:
    assert t["state"] == "confirmed", t
    # the timeline: every state once and in order; only a signing retry may repeat, as a new attempt
    states = [x["state"] for x in t["timeline"]]
    assert [x for i, x in enumerate(states) if i == 0 or x != states[i - 1] or x != "signing"] == LIFECYCLE, (
        states
    )
    details = [(x["state"], x["detail"]) for x in t["timeline"]]
    assert len(set(details)) == len(details), f"duplicated transition: {details}"

    # the TX stream: one of each event (signing: one per attempt)
    events = c.tx_events(tx_id)
    signing = _signing_messages(c, tx_id)
    assert {k: v for k, v in events.items() if k != "signing"} == {
        e: 1 for e in ("requested", "voting", "approved", "signed", "broadcast", "confirmed")
    }, events
    assert events["signing"] == len(signing) == len({m.attempt for m in signing}) == states.count("signing")

    # the database: one row, confirmed; transitions once each; one vote per node
    rows = c.fetch("SELECT state, txid FROM transactions WHERE id = $1", tx_id)
    assert [(r["state"], r["txid"]) for r in rows] == [("confirmed", t["txid"])]
    trans = c.fetch(
        "SELECT from_state, to_state, detail FROM transaction_transitions WHERE tx_id = $1 ORDER BY id", tx_id
    )
    assert [r["to_state"] for r in trans] == states
    assert len({tuple(r) for r in trans}) == len(trans)
    voters = [r["node_id"] for r in c.fetch("SELECT node_id FROM votes WHERE tx_id = $1", tx_id)]
    assert len(voters) == len(set(voters)) >= c.info["t"], voters

    # the chain: this transaction, confirmed, is the one spending each of its inputs
    with c.devchain() as chain:
        tx_json = chain.get(f"/tx/{t['txid']}").json()
        assert tx_json["status"]["confirmed"] is True
        assert chain.get(f"/tx/{t['txid']}/hex").text.strip() == t["signed_tx_hex"]
        for vin in tx_json["vin"]:
            spent = chain.get(f"/tx/{vin['txid']}/outspend/{vin['vout']}").json()
            assert spent["spent"] is True and spent["txid"] == t["txid"], spent


def assert_no_nonce_claimed_twice(c: Cluster) -> None:
    uses = Counter(
        (node, ref.nonce_id)
        for m in _signing_messages(c, "")
        for node, refs in m.nonces.items()
        for ref in refs
    )
    assert uses and max(uses.values()) == 1, [u for u, n in uses.items() if n > 1]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_restart_mid_spend_still_confirms_exactly_once(cluster: Cluster, name: str) -> None:
    service, scenario = SCENARIOS[name]
    c = cluster
    c.wait_ready(service)
    restarts_before = c.processes()[service]["restarts"]
    s = Spend(recipient=external_address(f"restart-{name}".encode()), sats=1_000_000 + len(name))
    try:
        scenario(c, s)
    except ClusterError:
        if s.tx_id:
            raise ClusterError(f"{name}: spend {s.tx_id} is {c.get_tx(s.tx_id)['state']}") from None
        raise
    assert s.killed_pid, "the scenario killed nothing"
    new_pid = c.wait_ready(service, not_pid=s.killed_pid)
    assert new_pid != s.killed_pid
    assert c.processes()[service]["restarts"] == restarts_before + 1
    t = c.wait_terminal(s.tx_id, timeout=60)
    assert_exactly_once(c, s.tx_id, t)
    assert_no_nonce_claimed_twice(c)
    if service == "presig":
        levels = lambda: c.mpcw("presig", "pool-status").stdout  # noqa: E731
        wait_for("the nonce pool to refill", lambda: " 0 free" not in levels(), timeout=30, interval=0.5)
