"""The invariants every fault suite ends with, checked against the chain, the streams and PostgreSQL.

Given a cluster's data directory and the spends its clients saw accepted (intake answered 200/202 with an
id), :func:`check_invariants` reads, as an auditor would:

- the ``TX`` stream (as ``admin``, every envelope's signature checked): each spend's lifecycle, folded with
  the lifecycle table in stream order exactly as the recorder folds it, its reasons, every ``tx.signing``
  (signer set and nonces) and every ``tx.signed`` (the signed transaction);
- the ``PROTO`` stream's partial signatures ``proto.frost.<session>.2.<node>``: which nonce each signer
  actually signed with (the nonces its session named for it);
- the chain (Esplora API of the devchain): every block's transactions and the mempool;
- PostgreSQL: the ``transactions`` projection, and the audit chain checked against its signed anchors
  (``services.recorder.anchor.verify_anchored``, what ``mpcw audit verify`` runs).

and returns a :class:`Report`: one row per invariant, with the offending spends named.

Invariants (each must count zero, or verify):

- **lost**: accepted, but the ``TX`` stream never heard of it (no ``tx.requested``);
- **stuck**: on the stream, but not ``confirmed``/``rejected``/``failed`` when checked;
- **over the bound**: terminal, but later than ``bound_s`` after its acceptance (or its ``tx.requested``,
  when that came first);
- **ended without a reason**: ``rejected`` or ``failed`` with no reason;
- **signed twice (streams)**: two ``tx.signed.<id>`` with different signed transactions;
- **signed twice (chain)**: the chain holds a transaction for the spend other than the one announced;
- **on chain but not confirmed**: a spend that ended ``rejected``/``failed`` whose transaction is on the
  chain (confirmed or in the mempool): the wallet says failed, the coins are gone;
- **confirmed but not on chain**: ``tx.confirmed`` without the transaction in a block;
- **coin spent twice (chain)**: an outpoint spent by two different transactions on the chain;
- **coin in two signed spends**: two spends with a signed transaction share an input (two valid,
  conflicting transactions exist);
- **aggregate nonce reused**: two different BIP-340 signatures (chain and ``tx.signed``) share their R;
- **nonce signed twice**: a signer published partial signatures with one nonce in two sessions or for
  two inputs;
- **audit chain verifies** (with anchors);
- **projection equals streams**: each accepted spend's ``transactions.state`` (and ``txid``) equals the
  state the ``TX`` stream folds to.

Observations (counted, not violations): spends refused at intake, the same nonce named in two
``tx.signing`` messages (a signer must refuse the second: what counts is the signature), messages on the
streams that do not verify.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from nats.js import JetStreamContext

from core.lifecycle import STATE_FOR_EVENT, TERMINAL, TxState, can_transition
from schemas.messages import (
    REGISTRY,
    PartialSignatures,
    TxFailed,
    TxRejected,
    TxRequested,
    TxSigned,
    TxSigning,
)
from services.runtime.bus import Bus, StoredMessage, read_stored
from services.runtime.config import load_config, read_cluster
from services.runtime.seal import EnvelopeError
from wallet.transaction import input_witness, outpoints_of, parse_transaction, txid

FETCH_BATCH = 1000


# ---- reading -----------------------------------------------------------------------------------------------


StoredMsg = StoredMessage


async def read_subjects(
    js: JetStreamContext, stream: str, subjects: str, timeout: float = 10.0
) -> list[StoredMsg]:
    """Every message stored in ``stream`` under ``subjects``, in stream order."""
    return await read_stored(js, stream, subjects, timeout, FETCH_BATCH)


@dataclass
class SpendTrace:
    """One spend as the ``TX`` stream tells it."""

    tx_id: str
    state: TxState | None = None  # folded in stream order with the lifecycle table (as the recorder does)
    reasons: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # event names in stream order
    requested: TxRequested | None = None
    signings: list[TxSigning] = field(default_factory=list)
    signed: list[TxSigned] = field(default_factory=list)
    first_ms: int | None = None
    terminal_ms: int | None = None


@dataclass
class StreamView:
    spends: dict[str, SpendTrace] = field(default_factory=dict)
    sessions: dict[str, TxSigning] = field(default_factory=dict)
    psigs: list[PartialSignatures] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)  # "subject: reason"


def fold_tx_stream(bus: Bus, msgs: list[StoredMsg], view: StreamView) -> None:
    for m in msgs:
        try:
            env, payload = bus.open(m.data, m.subject)
        except EnvelopeError as exc:
            view.unverified.append(f"{m.subject}: {exc}")
            continue
        event, tx_id = m.subject.split(".", 2)[1:]
        t = view.spends.setdefault(tx_id, SpendTrace(tx_id))
        t.events.append(event)
        if t.first_ms is None:
            t.first_ms = env.ts_ms
        new = STATE_FOR_EVENT.get(event)
        if new is not None and can_transition(t.state, new):
            t.state = new
            if new in TERMINAL:
                t.terminal_ms = env.ts_ms
                if isinstance(payload, TxRejected):
                    t.reasons = [r for r in payload.reasons if r]
                elif isinstance(payload, TxFailed):
                    t.reasons = [payload.reason] if payload.reason else []
        if isinstance(payload, TxRequested):
            t.requested = payload
        elif isinstance(payload, TxSigning):
            t.signings.append(payload)
            view.sessions[payload.session_id] = payload
        elif isinstance(payload, TxSigned):
            t.signed.append(payload)


async def read_streams(bus: Bus) -> StreamView:
    view = StreamView()
    fold_tx_stream(bus, await read_subjects(bus.js, "TX", "tx.>"), view)
    for m in await read_subjects(bus.js, "PROTO", "proto.frost.*.2.*"):
        try:
            _env, payload = bus.open(m.data, m.subject)
        except EnvelopeError as exc:
            view.unverified.append(f"{m.subject}: {exc}")
            continue
        if isinstance(payload, PartialSignatures):
            view.psigs.append(payload)
    return view


@dataclass
class ChainView:
    raw: dict[str, bytes] = field(default_factory=dict)  # txid -> transaction with witnesses
    confirmed: set[str] = field(default_factory=set)
    mempool: set[str] = field(default_factory=set)


async def read_chain(url: str, concurrency: int = 16) -> ChainView:
    """Every transaction in every block and in the mempool, through the Esplora API."""
    view = ChainView()
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=30.0) as http:

        async def get(path: str) -> httpx.Response:
            async with sem:
                r = await http.get(path)
            r.raise_for_status()
            return r

        tip = int((await get("/blocks/tip/height")).text)

        async def block_txids(height: int) -> list[str]:
            block_hash = (await get(f"/block-height/{height}")).text.strip()
            ids: list[str] = (await get(f"/block/{block_hash}/txids")).json()
            return ids

        for ids in await asyncio.gather(*(block_txids(h) for h in range(tip + 1))):
            view.confirmed.update(ids)
        view.mempool = set((await get("/mempool/txids")).json()) - view.confirmed

        async def fetch(tid: str) -> None:
            view.raw[tid] = bytes.fromhex((await get(f"/tx/{tid}/hex")).text.strip())

        await asyncio.gather(*(fetch(t) for t in view.confirmed | view.mempool))
    return view


async def wait_recorder_caught_up(bus: Bus, timeout: float) -> list[str]:
    """Wait until the recorder's durable consumers have nothing pending and nothing unacknowledged; the
    names of those still behind when ``timeout`` ran out (empty: caught up)."""
    deadline = time.monotonic() + timeout
    behind: list[str] = []
    while True:
        behind = []
        for stream in ("TX", "VOTE", "NODE"):
            for c in await bus.js.consumers_info(stream):
                name = c.config.durable_name or ""
                if name.startswith("recorder") and ((c.num_pending or 0) > 0 or (c.num_ack_pending or 0) > 0):
                    behind.append(name)
        if not behind or time.monotonic() > deadline:
            return behind
        await asyncio.sleep(0.2)


# ---- the report --------------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    value: str
    holds: bool | None  # None: an observation, not an invariant
    detail: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(r.holds is not False for r in self.rows)

    def violations(self) -> list[Row]:
        return [r for r in self.rows if r.holds is False]

    def row(self, name: str) -> Row:
        return next(r for r in self.rows if r.name == name)

    def markdown(self) -> str:
        lines = ["| invariant | value | holds | detail |", "|---|---:|:---:|---|"]
        for r in self.rows:
            mark = "—" if r.holds is None else ("yes" if r.holds else "**NO**")
            lines.append(f"| {r.name} | {r.value} | {mark} | {r.detail.replace('|', '/')[:300]} |")
        return "\n".join(lines)


def _count(rows: list[Row], name: str, items: list[str] | dict[str, Any], invariant: bool = True) -> None:
    shown = list(items)[:5]
    detail = ", ".join(str(x) for x in shown) + (" ..." if len(items) > len(shown) else "")
    rows.append(Row(name, str(len(items)), (len(items) == 0) if invariant else None, detail))


def schnorr_signatures(raw: bytes) -> list[tuple[int, bytes]]:
    """``(input index, 64-byte BIP-340 signature)`` of every key-path Taproot input of a transaction."""
    tx = parse_transaction(raw)
    out = []
    for i in range(len(tx.vin)):
        w = input_witness(tx, i)
        if len(w) == 1 and len(w[0]) in (64, 65):
            out.append((i, w[0][:64]))
    return out


def analyse(
    accepted: Mapping[str, float],
    streams: StreamView,
    chain: ChainView,
    db_rows: Mapping[str, asyncpg.Record | dict[str, Any]],
    bound_s: float,
) -> Report:
    """The invariant rows from what was read (pure: no I/O)."""
    rows: list[Row] = []
    traces = {i: streams.spends.get(i) for i in accepted}
    lost = [i for i, t in traces.items() if t is None or t.requested is None]
    known = {i: t for i, t in traces.items() if t is not None and t.requested is not None}
    by_state: dict[TxState | None, list[str]] = defaultdict(list)
    for i, t in known.items():
        by_state[t.state].append(i)
    stuck = {i: (t.state.value if t.state else "?") for i, t in known.items() if t.state not in TERMINAL}
    rows.append(Row("accepted", str(len(accepted)), None))
    for s in (TxState.CONFIRMED, TxState.REJECTED, TxState.FAILED):
        reasons: dict[str, int] = defaultdict(int)
        for i in by_state[s]:
            for r in known[i].reasons or ["(none)"]:
                reasons[r[:80]] += 1
        detail = "; ".join(f"{r} x{n}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:4])
        rows.append(Row(s.value, str(len(by_state[s])), None, "" if s is TxState.CONFIRMED else detail))
    _count(rows, "lost (accepted, never on the stream)", lost)
    _count(rows, "stuck (not terminal)", [f"{i}:{s}" for i, s in stuck.items()])
    # from the earlier of the client's acceptance and the request's publication (the client may read
    # its 202 late on a loaded machine) to the terminal event's publication
    latencies = {
        i: (t.terminal_ms - min(accepted[i] * 1000, t.first_ms or t.terminal_ms)) / 1000
        for i, t in known.items()
        if t.terminal_ms is not None
    }
    over = [f"{i}:{v:.0f}s" for i, v in latencies.items() if v > bound_s]
    _count(rows, f"over the bound ({bound_s:.0f} s to a terminal state)", over)
    if latencies:
        v = sorted(latencies.values())
        rows[-1].detail = (rows[-1].detail + " " if rows[-1].detail else "") + (
            f"(accepted -> terminal: p50 {statistics.median(v):.1f} s, max {v[-1]:.1f} s)"
        )
    no_reason = [i for i in by_state[TxState.REJECTED] + by_state[TxState.FAILED] if not known[i].reasons]
    _count(rows, "rejected/failed without a reason", no_reason)

    # signed transactions, per spend: what the stream announced, and what the chain holds
    signed_twice = [i for i, t in known.items() if len({s.signed_tx for s in t.signed}) > 1]
    _count(rows, "signed twice (streams)", signed_twice)
    spend_txid = {i: txid(t.requested.unsigned_tx) for i, t in known.items() if t.requested is not None}
    chain_other = []
    for i, t in known.items():
        got = chain.raw.get(spend_txid[i])
        if got is not None and t.signed and got not in {s.signed_tx for s in t.signed}:
            chain_other.append(i)
        elif got is not None and not t.signed:
            chain_other.append(f"{i}(never announced)")
    _count(rows, "signed twice (chain: another signature landed)", chain_other)
    failed_on_chain = [
        f"{i}:{t.state.value if t.state else '?'}"
        for i, t in known.items()
        if t.state in (TxState.REJECTED, TxState.FAILED) and spend_txid[i] in chain.raw
    ]
    _count(rows, "ended rejected/failed but on chain", failed_on_chain)
    confirmed_missing = [i for i in by_state[TxState.CONFIRMED] if spend_txid[i] not in chain.confirmed]
    _count(rows, "confirmed but not in a block", confirmed_missing)

    # coins
    spenders: dict[tuple[str, int], set[str]] = defaultdict(set)
    for tid, raw in chain.raw.items():
        tx = parse_transaction(raw)
        if tx.is_coinbase():
            continue
        for op in outpoints_of(tx):
            spenders[(op.txid, op.vout)].add(tid)
    twice = [f"{o[0][:12]}:{o[1]}" for o, s in spenders.items() if len(s) > 1]
    _count(rows, "coin spent twice (chain)", twice)
    signed_coins: dict[tuple[str, int], set[str]] = defaultdict(set)
    for t in streams.spends.values():
        if t.signed and t.requested is not None:
            for inp in t.requested.inputs:
                signed_coins[(inp.txid, inp.vout)].add(t.tx_id)
    shared = [f"{o[0][:12]}:{o[1]}<-{','.join(sorted(s))}" for o, s in signed_coins.items() if len(s) > 1]
    _count(rows, "coin in two signed spends", shared)

    # nonces: the aggregate R of every signature, and each signer's own nonces
    by_r: dict[bytes, set[tuple[str, int, bytes]]] = defaultdict(set)
    raws = list(chain.raw.items()) + [
        (s.txid, s.signed_tx) for t in streams.spends.values() for s in t.signed
    ]
    for tid, raw in raws:
        for vin, sig in schnorr_signatures(raw):
            by_r[sig[:32]].add((tid, vin, sig))
    reused_r = [
        f"R={r.hex()[:16]} in {sorted({(x[0][:12], x[1]) for x in uses})}"
        for r, uses in by_r.items()
        if len(uses) > 1
    ]
    _count(rows, "aggregate nonce R reused (chain + tx.signed)", reused_r)
    used: dict[tuple[str, bytes], set[tuple[str, int]]] = defaultdict(set)
    orphan_psigs = []
    for p in streams.psigs:
        sess = streams.sessions.get(p.session_id)
        if sess is None or p.node not in sess.nonces:
            orphan_psigs.append(f"{p.node}@{p.session_id}")
            continue
        for k, ref in enumerate(sess.nonces[p.node][: len(p.psigs)]):
            used[(p.node, ref.pubnonce)].add((p.session_id, k))
    nonce_twice = [f"{n} nonce {pn.hex()[:16]} in {sorted(u)}" for (n, pn), u in used.items() if len(u) > 1]
    _count(rows, "nonce signed twice (a signer's partial signatures)", nonce_twice)
    named: dict[tuple[str, bytes], set[str]] = defaultdict(set)
    for signing in streams.sessions.values():
        for node, refs in signing.nonces.items():
            for ref in refs:
                named[(node, ref.pubnonce)].add(signing.session_id)
    _count(
        rows,
        "nonce named in two tx.signing (observation)",
        [f"{n}:{pn.hex()[:12]}" for (n, pn), ids in named.items() if len(ids) > 1],
        invariant=False,
    )
    _count(rows, "partial signatures without their session (observation)", orphan_psigs, invariant=False)
    _count(rows, "stream messages that do not verify (observation)", streams.unverified, invariant=False)

    # the projection
    mismatch = []
    for tx_id in accepted:
        trace = known.get(tx_id)
        want = trace.state.value if trace is not None and trace.state is not None else None
        row = db_rows.get(tx_id)
        got = row["state"] if row is not None else None
        want_txid = trace.signed[0].txid if trace is not None and trace.signed else None
        got_txid = row["txid"] if row is not None else None
        if want != got:
            mismatch.append(f"{tx_id}: stream {want}, db {got}")
        elif want_txid is not None and want in ("signed", "broadcast", "confirmed") and got_txid != want_txid:
            mismatch.append(f"{tx_id}: txid stream {want_txid[:12]}, db {got_txid}")
    _count(rows, "projection differs from the streams", mismatch)
    return Report(rows, {"latencies": latencies})


async def check_invariants(
    data_dir: Path,
    accepted: Mapping[str, float],
    *,
    bound_s: float = 120.0,
    catch_up_s: float = 60.0,
) -> Report:
    """Read the cluster in ``data_dir`` (as ``admin``) and check every invariant for the ``accepted``
    spends (tx id -> the epoch time the client saw it accepted)."""
    cluster = read_cluster(data_dir)
    cfg = load_config(
        "admin",
        data_dir,
        service="invariants",
        nats_url=cluster["nats_url"],
        database_url=cluster["database_url"],
    )
    bus = await Bus.connect(cfg, registry=REGISTRY, ensure=False, timeout=30.0)
    try:
        behind = await wait_recorder_caught_up(bus, catch_up_s)
        streams = await read_streams(bus)
        chain = await read_chain(cluster.get("esplora_url") or cluster["devchain_url"])
        conn = await asyncpg.connect(cluster["database_url"])
        try:
            records = await conn.fetch(
                "SELECT id, state, txid, reasons FROM transactions WHERE id = ANY($1::text[])", list(accepted)
            )
            from services.recorder.anchor import verify_anchored

            audit = await verify_anchored(conn, bus)
        finally:
            await conn.close()
    finally:
        await bus.close()
    report = analyse(accepted, streams, chain, {r["id"]: r for r in records}, bound_s)
    detail = f"{audit.rows} rows, anchored to #{audit.anchored_to} by {len(audit.anchors)} anchors"
    if not audit.ok:
        problems = [f"#{p.id}: {p.reason}" for p in audit.chain_problems] + [
            f"#{a.first_bad}..#{a.seq}: {a.reason}" for a in audit.anchor_problems
        ]
        detail = f"BROKEN at #{audit.first_bad}: " + "; ".join(problems[:3])
    report.rows.append(
        Row("audit chain verifies (with anchors)", "yes" if audit.ok else "no", audit.ok, detail)
    )
    if behind:
        report.rows.append(Row("recorder caught up", "no", False, ", ".join(behind)))
    return report


async def wait_terminal(data_dir: Path, ids: set[str], timeout: float) -> set[str]:
    """Wait until every spend of ``ids`` has a terminal event on the ``TX`` stream (reconnecting as the
    cluster's NATS comes and goes); returns those still open when ``timeout`` ran out."""
    deadline = time.monotonic() + timeout
    open_ids = set(ids)
    while open_ids and time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            cluster = read_cluster(data_dir)
            cfg = load_config("admin", data_dir, service="invariants", nats_url=cluster["nats_url"])
            bus = await Bus.connect(cfg, registry=REGISTRY, ensure=False, timeout=10.0)
            try:
                while open_ids and time.monotonic() < deadline:
                    done: set[str] = set()
                    for event in ("confirmed", "rejected", "failed"):
                        info = await bus.js.stream_info("TX", subjects_filter=f"tx.{event}.*")
                        done |= {s.split(".", 2)[2] for s in (info.state.subjects or {})}
                    open_ids -= done
                    if open_ids:
                        await asyncio.sleep(1.0)
            finally:
                await bus.close()
        if open_ids:
            await asyncio.sleep(1.0)
    return open_ids
