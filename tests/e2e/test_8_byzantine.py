"""A byzantine signer in a real cluster: node-2 is a real signer process with its own identity,
certificate and key share (``tests/e2e/byzantine_signer.py``, put in node-2's place by a
``DIR/services.json`` written before ``mpcw up``). It takes part in the DKG and votes honestly, but flips a
bit of every partial signature it produces and, after each approving vote, publishes a contrary vote for
the same transaction (equivocation).

This module starts its own cluster (module scope; ``mpcw down`` in a ``finally``). Each spend here is made
to depend on node-2 deterministically: consensus is frozen (SIGSTOP) while the spend is requested and
continued once all five nodes voted, so the round is approved with five approvers and the first signing
attempt is ``node-1..node-4`` (``core.signer_set.choose_signers`` rotates by attempt and starts at the first
approver). The tests check, through the real system:

1. the spend still ends ``confirmed``: the broadcaster finds node-2's partial signature invalid, blames it,
   consensus retries at once with ``node-1,3,4,5``; the transaction on the chain verifies
   (``wallet.verify.verify_transaction`` with prevouts read from the funding transactions);
2. node-2 is blamed: ``node.violation.node-2`` of kind ``invalid-partial-sig`` from the broadcaster on the
   NODE stream, and a counting ``byzantine_violations`` row written by the monitor;
3. no honest node is blamed;
4. the equivocating vote is stored on the VOTE stream but not counted (the round in KV ``rounds`` and the
   ``votes`` table hold node-2's approval only) and consensus reports an ``equivocation`` violation;
5. after five counting violations node-2 is banned (KV ``bans``, ``node_status``), and a later spend, even
   with all five nodes approving, is signed without node-2.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from schemas import envelope as E
from schemas import kv as K
from schemas.messages import TxSigned, TxSigning, Violation, Vote
from schemas.names import BUCKET_BANS, BUCKET_ROUNDS
from services.localcluster.supervisor import default_table
from services.runtime.bus import Bus
from services.runtime.signed_kv import SignedKV
from tests.e2e.byzantine_signer import CORRUPT_PSIG, EQUIVOCATE, EQUIVOCATION_REASON
from tests.e2e.conftest import (
    Cluster,
    external_address,
    frozen,
    read_stream,
    running_cluster,
    wait_for,
)
from wallet.transaction import Prevout
from wallet.verify import verify_transaction

pytestmark = pytest.mark.e2e

BYZANTINE = "node-2"
HONEST = ["node-1", "node-3", "node-4", "node-5"]
NODES = ["node-1", "node-2", "node-3", "node-4", "node-5"]
FUNDING = ("1.0", "1.0", "1.0")
SPEND_SATS = 5_000_000
# a frozen consumer may hold a pull request at the server (1 s expiry): wait for it to lapse, so that the
# continued consensus fetches all the votes at once (see test_5_restart)
SETTLE_S = 1.3


@dataclass
class Spend:
    tx_id: str
    body: dict[str, Any]
    signings: list[TxSigning]
    signed: TxSigned


# ---- the cluster --------------------------------------------------------------------------------------


def byzantine_table() -> list[dict[str, Any]]:
    """``default_table(5)`` with node-2's signer replaced by the byzantine one (same identity and args)."""
    table = default_table(5)
    entry = next(e for e in table if e["name"] == f"signer-{BYZANTINE}")
    entry["module"] = "tests.e2e.byzantine_signer"
    entry["args"] = [*entry["args"], "--byzantine", f"{CORRUPT_PSIG},{EQUIVOCATE}"]
    return table


@pytest.fixture(scope="module")
def byz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    data_dir = tmp_path_factory.mktemp("e2e-byzantine")
    with running_cluster(data_dir, list(FUNDING), services=byzantine_table()) as c:
        procs = c.processes()
        assert procs[f"signer-{BYZANTINE}"]["module"] == "tests.e2e.byzantine_signer", procs
        assert procs[f"signer-{BYZANTINE}"]["status"] == "ready", procs
        yield c


# ---- looking at it ------------------------------------------------------------------------------------


def votes_on_stream(c: Cluster, tx_id: str) -> dict[str, list[Vote]]:
    """node -> the votes stored under ``vote.<tx_id>.<node>``, in stream order (signatures checked)."""

    async def go(bus: Bus) -> dict[str, list[Vote]]:
        out: dict[str, list[Vote]] = {}
        for m in await read_stream(bus, "VOTE"):
            if m.subject.startswith(f"vote.{tx_id}."):
                env, vote = bus.open(m.data, m.subject)
                assert isinstance(vote, Vote) and env.sender == vote.node, (m.subject, env.sender)
                out.setdefault(vote.node, []).append(vote)
        return out

    return c.with_bus(go)


def tx_messages(c: Cluster, tx_id: str) -> tuple[list[TxSigning], list[TxSigned]]:
    async def go(bus: Bus) -> tuple[list[TxSigning], list[TxSigned]]:
        signings: list[TxSigning] = []
        signed: list[TxSigned] = []
        for m in await read_stream(bus, "TX"):
            if m.subject == f"tx.signing.{tx_id}":
                env, p = bus.open(m.data, m.subject)
                assert env.sender == "consensus"
                signings.append(p)
            elif m.subject == f"tx.signed.{tx_id}":
                env, p = bus.open(m.data, m.subject)
                assert env.sender == "broadcaster"
                signed.append(p)
        return signings, signed

    return c.with_bus(go)


def violations_on_stream(c: Cluster) -> list[tuple[str, Violation]]:
    """(signed sender, violation) for every ``node.violation.*`` message on the NODE stream."""

    async def go(bus: Bus) -> list[tuple[str, Violation]]:
        out: list[tuple[str, Violation]] = []
        for m in await read_stream(bus, "NODE"):
            if m.subject.startswith("node.violation."):
                env, v = bus.open(m.data, m.subject)
                if isinstance(v, Violation):
                    assert m.subject == f"node.violation.{v.offender}", (m.subject, v)
                    out.append((env.sender, v))
        return out

    return c.with_bus(go)


def evidence_of(c: Cluster, v: Violation) -> E.Envelope:
    """The envelope a violation carries as evidence, verified against the cluster's identities."""

    async def go(bus: Bus) -> E.Envelope:
        return bus.verify_envelope(v.evidence)

    return c.with_bus(go)


def violation_rows(c: Cluster) -> list[dict[str, Any]]:
    rows = c.fetch("SELECT node_id, kind, reporter, tx_id, counts FROM byzantine_violations ORDER BY id")
    return [dict(r) for r in rows]


def round_record(c: Cluster, tx_id: str) -> K.RoundRecord:
    async def go(bus: Bus) -> K.RoundRecord:
        entry = await (await bus.kv(BUCKET_ROUNDS)).get(tx_id)
        assert entry is not None, f"no round for {tx_id}"
        return entry.decode(K.RoundRecord)

    return c.with_bus(go)


def ban_record(c: Cluster, node: str) -> K.BanRecord | None:
    async def go(bus: Bus) -> K.BanRecord | None:
        with contextlib.suppress(Exception):  # no such key
            signed = await (await SignedKV.open(bus, BUCKET_BANS)).get(node, K.BanRecord)
            if signed is not None:
                return signed.value
        return None

    return c.with_bus(go)


def prevouts_from_funding(c: Cluster, txid: str) -> tuple[bytes, list[Prevout]]:
    """The confirmed transaction's bytes as the chain has them, and each input's prevout read from the
    transaction that created it."""
    with c.devchain() as chain:
        tx_json = chain.get(f"/tx/{txid}").json()
        raw = bytes.fromhex(chain.get(f"/tx/{txid}/hex").text.strip())
        assert tx_json["status"]["confirmed"] is True, tx_json
        prevouts = []
        for vin in tx_json["vin"]:
            funding = chain.get(f"/tx/{vin['txid']}").json()
            out = funding["vout"][vin["vout"]]
            prevouts.append(Prevout(int(out["value"]), bytes.fromhex(out["scriptpubkey"])))
    return raw, prevouts


# ---- driving it ---------------------------------------------------------------------------------------


def spend_with_all_approvers(c: Cluster, seed: bytes) -> Spend:
    """A spend whose round is approved by all five nodes at once (consensus frozen until every node voted;
    the byzantine node's contrary vote is on the stream too), waited until it ends."""
    with frozen(c, "consensus"):
        time.sleep(SETTLE_S)
        tx_id = c.request_spend(external_address(seed), SPEND_SATS)

        def all_voted() -> bool:
            got = c.subject_counts("VOTE", f"vote.{tx_id}.*")
            return all(got.get(f"vote.{tx_id}.{n}", 0) >= 1 for n in NODES) and (
                got[f"vote.{tx_id}.{BYZANTINE}"] >= 2
            )

        wait_for("every vote, and node-2's contrary one", all_voted, timeout=20)
    body = c.wait_terminal(tx_id, timeout=40)
    signings, signed = tx_messages(c, tx_id)
    assert body["state"] == "confirmed", json.dumps(body, indent=1)[:3000]
    assert len(signed) == 1, signed
    return Spend(tx_id, body, signings, signed[0])


@pytest.fixture(scope="module")
def blamed(byz: Cluster) -> Spend:
    return spend_with_all_approvers(byz, b"byzantine-1")


# ---- the tests ----------------------------------------------------------------------------------------


def test_spend_with_corrupt_partial_signature_is_retried_and_confirmed(byz: Cluster, blamed: Spend) -> None:
    first, *_ = blamed.signings
    assert first.attempt == 1 and first.signers == ["node-1", "node-2", "node-3", "node-4"], first
    # node-2 really answered attempt 1 with (corrupt) partial signatures, it did not refuse
    counts = byz.subject_counts("PROTO", f"proto.frost.{first.session_id}.*.*")
    assert counts.get(f"proto.frost.{first.session_id}.2.{BYZANTINE}") == 1, counts
    assert not any(".refused." in s for s in counts), counts
    # consensus moved on at once (the blame, not a 10 s timeout) to the one set without node-2
    assert [s.attempt for s in blamed.signings] == [1, 2], blamed.signings
    final = blamed.signings[-1]
    assert blamed.signed.attempt == final.attempt == 2
    assert final.signers == HONEST, final

    raw, prevouts = prevouts_from_funding(byz, blamed.body["txid"])
    assert raw == blamed.signed.signed_tx and blamed.body["txid"] == blamed.signed.txid
    verify_transaction(raw, prevouts)  # raises TransactionInvalid
    states = [x["state"] for x in blamed.body["timeline"]]
    assert states[0] == "pending" and states[-1] == "confirmed" and "failed" not in states, states


def test_byzantine_node_is_blamed_by_the_broadcaster(byz: Cluster, blamed: Spend) -> None:
    on_stream = [
        (sender, v)
        for sender, v in violations_on_stream(byz)
        if v.kind == "invalid-partial-sig" and v.tx_id == blamed.tx_id
    ]
    assert [(s, v.offender, v.reporter) for s, v in on_stream] == [("broadcaster", BYZANTINE, "broadcaster")]
    # the evidence is node-2's own signed partial signatures, which anyone can check
    evidence = evidence_of(byz, on_stream[0][1])
    assert evidence.sender == BYZANTINE and evidence.type == "PartialSignatures", evidence

    def recorded() -> list[dict[str, Any]]:
        rows = violation_rows(byz)
        return [r for r in rows if r["kind"] == "invalid-partial-sig" and r["tx_id"] == blamed.tx_id]

    wait_for("the monitor's violation row", lambda: bool(recorded()), timeout=15)
    assert [(r["node_id"], r["reporter"], r["counts"]) for r in recorded()] == [
        (BYZANTINE, "broadcaster", True)
    ]


def test_no_honest_node_is_blamed(byz: Cluster, blamed: Spend) -> None:
    blamed_nodes = {v.offender for _, v in violations_on_stream(byz)}
    assert blamed_nodes == {BYZANTINE}, violations_on_stream(byz)
    rows = violation_rows(byz)
    assert rows and {r["node_id"] for r in rows} == {BYZANTINE}, rows


def test_equivocating_vote_is_reported_and_not_counted(byz: Cluster, blamed: Spend) -> None:
    tx_id = blamed.tx_id
    stream = votes_on_stream(byz, tx_id)
    # both of node-2's votes really went out, signed by node-2; every honest node voted once
    assert [(v.approve, v.reasons) for v in stream[BYZANTINE]] == [(True, []), (False, [EQUIVOCATION_REASON])]
    assert all(len(stream[n]) == 1 and stream[n][0].approve for n in HONEST), stream
    # only the first counts: the round, the approval, the projection
    rnd = round_record(byz, tx_id)
    assert rnd.approve == dict.fromkeys(NODES, True), rnd.approve
    assert rnd.outcome == "approved" and not rnd.reasons, rnd
    rows = byz.fetch("SELECT node_id, approve FROM votes WHERE tx_id = $1 ORDER BY node_id", tx_id)
    assert [(r["node_id"], r["approve"]) for r in rows] == [(n, True) for n in NODES], rows
    # and consensus reported it
    reported = [
        (s, v.offender, v.reporter)
        for s, v in violations_on_stream(byz)
        if v.kind == "equivocation" and v.tx_id == tx_id
    ]
    assert reported == [("consensus", BYZANTINE, "consensus")], reported
    [equivocation] = [
        v for _, v in violations_on_stream(byz) if v.kind == "equivocation" and v.tx_id == tx_id
    ]
    evidence = evidence_of(byz, equivocation)  # node-2's second, contrary vote, signed by node-2
    assert evidence.sender == BYZANTINE and evidence.subject == f"vote.{tx_id}.{BYZANTINE}", evidence

    def recorded() -> bool:
        return any(
            r["kind"] == "equivocation" and r["tx_id"] == tx_id and r["node_id"] == BYZANTINE and r["counts"]
            for r in violation_rows(byz)
        )

    wait_for("the monitor's equivocation row", recorded, timeout=15)


def test_banned_after_five_violations_and_no_longer_a_signer(byz: Cluster, blamed: Spend) -> None:
    # two more spends like the first: two violations each (corrupt psig, equivocation) -> six in all
    more = [spend_with_all_approvers(byz, b"byzantine-%d" % i) for i in (2, 3)]
    for s in more:
        # node-2 is in the first attempt unless its ban already reached consensus (the monitor may
        # count the 5th violation before the last of these spends starts)
        assert s.signings[0].signers in (["node-1", "node-2", "node-3", "node-4"], HONEST), s.signings
        assert s.signings[-1].signers == HONEST and s.signed.attempt == s.signings[-1].attempt

    def banned() -> bool:
        rows = byz.fetch("SELECT status, banned_until FROM node_status WHERE node_id = $1", BYZANTINE)
        return ban_record(byz, BYZANTINE) is not None and bool(rows) and rows[0]["status"] == "banned"

    wait_for("node-2's ban", banned, timeout=20, interval=0.2)
    ban = ban_record(byz, BYZANTINE)
    assert ban is not None and ban.node == BYZANTINE and ban.violations >= 5, ban
    assert ban.until_ms > time.time() * 1000 + 23 * 3600 * 1000, ban
    counting = [r for r in violation_rows(byz) if r["node_id"] == BYZANTINE and r["counts"]]
    assert len(counting) >= 5, counting
    for node in HONEST:
        rows = byz.fetch("SELECT status FROM node_status WHERE node_id = $1", node)
        assert rows and rows[0]["status"] == "up", (node, rows)

    # consensus learned the ban (KV watch) before the next spend is requested
    log = byz.data_dir / "logs" / "consensus.log"
    wait_for(
        "consensus to see the ban",
        lambda: "node banned: not chosen as a signer" in log.read_text(errors="replace"),
        timeout=10,
    )
    after = spend_with_all_approvers(byz, b"byzantine-after-ban")
    assert round_record(byz, after.tx_id).approve == dict.fromkeys(NODES, True)
    assert [(s.attempt, s.signers) for s in after.signings] == [(1, HONEST)], after.signings
    assert not [
        v for _, v in violations_on_stream(byz) if v.kind == "invalid-partial-sig" and v.tx_id == after.tx_id
    ]
    raw, prevouts = prevouts_from_funding(byz, after.body["txid"])
    verify_transaction(raw, prevouts)
