"""The recorder's projection of a whole batch of one stream's messages in ONE database transaction.

Theory of operation
-------------------
:func:`record_batch` gives exactly the result of calling :func:`services.recorder.project.record` on
each message in turn (same rows, same audit entries in the same order, same outcomes), with a handful
of round trips and one commit per batch instead of ~8 round trips and a commit per message:

1. ``stream_positions``: the stream's row is created if missing and locked (``FOR UPDATE``); messages
   at or below the stored position, or repeated within the batch, are ``duplicate`` and change nothing.
   At the end the position moves to the batch's last sequence, in the same transaction.
2. every message is checked on its own (subject, payload type, ids), exactly as ``record`` does;
3. the per-transaction advisory locks of every transaction the batch touches are taken at once, in
   ascending lock-key order (the tx and vote consumers both do, so their batches cannot deadlock; the
   audit append lock is always taken after them);
4. the rows the batch depends on are read in bulk (states ``FOR UPDATE``, vote counts, earlier votes,
   spend requests); the lifecycle is then simulated in Python message by message with
   ``core.lifecycle`` (replays are no-ops, illegal transitions refused and audited, the rest
   applied), collecting the writes;
5. the writes go out table by table with ``executemany`` (each in message order; the tables do not
   depend on each other within a batch, see ``_flush``), the audit rows in ONE ordered INSERT (one
   append lock acquisition; ids, and so the hash chain, in message order).

Commit, then the caller acks every message. Any error rolls the whole transaction back (nothing
applied) and propagates: the service retries a transient one (a lost connection) with the same batch,
and records the batch the old way after any other (a constraint the simulation cannot foresee, a bug):
one message per transaction with :func:`~services.recorder.project.record`, where a message that keeps
failing is audited as ``record.failed`` and skipped, so one bad message never holds up the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from core.lifecycle import TxState
from schemas import messages as m

from .project import (
    CONSUMER,
    INSERT_TRANSITION,
    RELEASE_EVENTS,
    Message,
    Outcome,
    Refusal,
    _check_transition,
    _check_tx_event,
    _check_vote,
    _transition_row,
    _tx_columns,
    _tx_details,
    _tx_insert_row,
    _violation_details,
    _vote_conflict_details,
    _vote_details,
    _vote_row,
)

TX_LOCK_SEED = 7405310  # project._lock_tx: hashtextextended(tx_id, 7405310)


@dataclass
class _Audit:
    msg: Message
    action: str
    entity_type: str
    entity_id: str
    details: dict[str, Any]
    outcome: Outcome


@dataclass
class _Writes:
    tx_inserts: list[tuple[Any, ...]] = field(default_factory=list)
    tx_updates: dict[str, dict[str, Any]] = field(default_factory=dict)  # tx_id -> column values
    round_inserts: list[tuple[Any, ...]] = field(default_factory=list)
    round_approved: list[tuple[Any, ...]] = field(default_factory=list)
    round_rejected: list[tuple[Any, ...]] = field(default_factory=list)
    round_expired: list[tuple[Any, ...]] = field(default_factory=list)
    presig: list[tuple[Any, ...]] = field(default_factory=list)
    release: list[str] = field(default_factory=list)
    transitions: list[tuple[Any, ...]] = field(default_factory=list)
    votes: list[tuple[Any, ...]] = field(default_factory=list)
    vote_deltas: dict[str, list[int]] = field(default_factory=dict)  # tx_id -> [approvals, rejections]
    audit: list[_Audit] = field(default_factory=list)


async def record_batch(conn: asyncpg.Connection, msgs: list[Message]) -> list[Outcome]:
    """Apply ``msgs`` (one stream, stream order) in one transaction; one :class:`Outcome` per message.
    On any exception the transaction is rolled back (nothing applied) and the exception propagates."""
    if not msgs:
        return []
    stream = msgs[0].stream
    if any(x.stream != stream for x in msgs):
        raise ValueError("a batch holds the messages of one stream")
    async with conn.transaction():
        return await _record_batch(conn, stream, msgs)


async def _record_batch(conn: asyncpg.Connection, stream: str, msgs: list[Message]) -> list[Outcome]:
    await conn.execute(
        """INSERT INTO stream_positions (consumer, stream, last_seq) VALUES ($1, $2, 0)
           ON CONFLICT (consumer, stream) DO NOTHING""",
        CONSUMER,
        stream,
    )
    pos = int(
        await conn.fetchval(
            "SELECT last_seq FROM stream_positions WHERE consumer = $1 AND stream = $2 FOR UPDATE",
            CONSUMER,
            stream,
        )
    )
    outcomes: list[Outcome | None] = [None] * len(msgs)
    todo: list[int] = []
    last = pos
    for i, msg in enumerate(msgs):
        if msg.seq <= last:
            outcomes[i] = Outcome("duplicate", f"{msg.stream} seq {msg.seq} already applied")
        else:
            last = msg.seq
            todo.append(i)
    if not todo:
        return [o for o in outcomes if o is not None]

    w = _Writes()
    tx_events: list[tuple[int, str, str, TxState]] = []  # (index, event, tx_id, new state)
    votes: list[tuple[int, str, str]] = []  # (index, tx_id, node)
    for i in todo:
        msg = msgs[i]
        kind = msg.subject.split(".", 1)[0]
        if kind == "tx":
            checked = _check_tx_event(msg)
            if isinstance(checked, Refusal):
                outcomes[i] = _refuse(w, msg, checked)
            else:
                tx_events.append((i, *checked))
        elif kind == "vote":
            checked_vote = _check_vote(msg)
            if isinstance(checked_vote, Refusal):
                outcomes[i] = _refuse(w, msg, checked_vote)
            else:
                votes.append((i, *checked_vote))
        elif msg.subject.startswith("node.violation."):
            outcomes[i] = _violation(msg, w)
        else:
            outcomes[i] = Outcome("ignored", "subject not projected")

    tx_ids = {t for _, _, t, _ in tx_events} | {t for _, t, _ in votes}
    await _lock_all(conn, tx_ids)
    if tx_events:
        await _simulate_tx(conn, msgs, tx_events, outcomes, w)
    if votes:
        await _simulate_votes(conn, msgs, votes, outcomes, w)
    await _flush(conn, w)
    await conn.execute(
        """UPDATE stream_positions SET last_seq = $3, updated_at = now()
           WHERE consumer = $1 AND stream = $2 AND last_seq < $3""",
        CONSUMER,
        stream,
        last,
    )
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


# ---- checks that need no database (the same order and wording as project.record) -------------------------


def _audit(
    w: _Writes,
    msg: Message,
    action: str,
    entity_type: str,
    entity_id: str,
    details: dict[str, Any],
    outcome: Outcome,
) -> Outcome:
    w.audit.append(_Audit(msg, action, entity_type, entity_id, details, outcome))
    return outcome


def _refuse(w: _Writes, msg: Message, r: Refusal) -> Outcome:
    out = Outcome("refused", r.why, violation=r.violation(msg))
    return _audit(w, msg, "refused", "transaction", r.tx_id, r.audit_details(), out)


def _violation(msg: Message, w: _Writes) -> Outcome:
    offender, details = _violation_details(msg)
    out = Outcome("applied", f"violation by {offender}")
    return _audit(w, msg, "node.violation", "node", offender, details, out)


# ---- locks and bulk reads --------------------------------------------------------------------------------


async def _lock_all(conn: asyncpg.Connection, tx_ids: set[str]) -> None:
    """Every transaction's advisory lock (the one ``project._lock_tx`` takes), in ascending key order."""
    if not tx_ids:
        return
    keys = await conn.fetchval(
        """SELECT array_agg(DISTINCT hashtextextended(t, $2)) FROM unnest($1::text[]) AS t""",
        sorted(tx_ids),
        TX_LOCK_SEED,
    )
    # one statement; a function scan of a sorted array yields its elements in order
    await conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k", sorted(keys))


async def _tables(conn: asyncpg.Connection) -> tuple[bool, bool]:
    row = await conn.fetchrow(
        """SELECT to_regclass('spend_requests') IS NOT NULL AS s,
                  to_regclass('utxo_reservations') IS NOT NULL AS u"""
    )
    assert row is not None
    return bool(row["s"]), bool(row["u"])


# ---- tx.<event>.<tx_id> ----------------------------------------------------------------------------------


async def _simulate_tx(
    conn: asyncpg.Connection,
    msgs: list[Message],
    events: list[tuple[int, str, str, TxState]],
    outcomes: list[Outcome | None],
    w: _Writes,
) -> None:
    tx_ids = sorted({t for _, _, t, _ in events})
    state: dict[str, TxState | None] = {
        r["id"]: TxState(r["state"])
        for r in await conn.fetch(
            "SELECT id, state FROM transactions WHERE id = ANY($1::text[]) FOR UPDATE", tx_ids
        )
    }
    has_spends, has_reservations = await _tables(conn)
    requested = sorted({t for _, e, t, _ in events if e == "requested" and state.get(t) is None})
    extras: dict[str, dict[str, Any]] = {}
    if requested and has_spends:
        rows = await conn.fetch(
            "SELECT tx_id, idempotency_key, memo FROM spend_requests WHERE tx_id = ANY($1::text[])",
            requested,
        )
        extras = {r["tx_id"]: {"idempotency_key": r["idempotency_key"], "memo": r["memo"]} for r in rows}
    counts: dict[str, tuple[int, int]] = {}
    voting = sorted({t for _, e, t, _ in events if e == "voting"})
    if voting:
        rows = await conn.fetch(
            """SELECT tx_id, count(*) FILTER (WHERE approve) AS a, count(*) FILTER (WHERE NOT approve) AS r
               FROM votes WHERE tx_id = ANY($1::text[]) GROUP BY tx_id""",
            voting,
        )
        counts = {r["tx_id"]: (int(r["a"]), int(r["r"])) for r in rows}

    for i, event, tx_id, new in events:
        msg = msgs[i]
        payload: Any = msg.payload
        current = state.get(tx_id)
        verdict = _check_transition(tx_id, event, current, new, payload)
        if isinstance(verdict, Refusal):
            outcomes[i] = _refuse(w, msg, verdict)
            continue
        if verdict is not None:
            outcomes[i] = verdict
            continue
        _apply(w, msg, tx_id, current, new, event, payload, extras, counts, has_reservations)
        state[tx_id] = new
        w.transitions.append(_transition_row(msg, tx_id, current, new, event, payload))
        details = _tx_details(current, new, payload)
        out = Outcome("applied", f"{tx_id} -> {new.value}")
        outcomes[i] = _audit(w, msg, f"tx.{event}", "transaction", tx_id, details, out)


def _apply(
    w: _Writes,
    msg: Message,
    tx_id: str,
    current: TxState | None,
    new: TxState,
    event: str,
    p: Any,
    extras: dict[str, dict[str, Any]],
    counts: dict[str, tuple[int, int]],
    has_reservations: bool,
) -> None:
    """``project._apply`` as collected writes."""
    if isinstance(p, m.TxRequested):
        w.tx_inserts.append(_tx_insert_row(msg, tx_id, p, extras.get(tx_id, {})))
        return
    upd = w.tx_updates.setdefault(tx_id, {})
    upd["state"] = new.value
    upd["last_stream_seq"] = msg.seq
    upd.update(_tx_columns(p))
    if isinstance(p, m.TxVoting):
        approvals, rejections = counts.get(tx_id, (0, 0))
        w.round_inserts.append((p.round_id, tx_id, p.threshold, p.total_nodes, approvals, rejections))
    elif isinstance(p, m.TxApproved):
        w.round_approved.append((p.round_id, tx_id, list(p.certificate)))
    elif isinstance(p, m.TxRejected):
        w.round_rejected.append((tx_id, list(p.certificate) or None))
    elif isinstance(p, m.TxSigning):
        for node, refs in p.nonces.items():
            for ref in refs:
                w.presig.append((ref.nonce_id, node, tx_id, p.session_id, p.attempt))
    if event in RELEASE_EVENTS and has_reservations:
        w.release.append(tx_id)
    if new is TxState.FAILED and current is TxState.VOTING:
        w.round_expired.append((tx_id,))


# ---- vote.<tx_id>.<node> ---------------------------------------------------------------------------------


async def _simulate_votes(
    conn: asyncpg.Connection,
    msgs: list[Message],
    votes: list[tuple[int, str, str]],
    outcomes: list[Outcome | None],
    w: _Writes,
) -> None:
    tx_ids = sorted({t for _, t, _ in votes})
    first: dict[tuple[str, str], bool] = {
        (r["round_id"], r["node_id"]): bool(r["approve"])
        for r in await conn.fetch(
            "SELECT round_id, node_id, approve FROM votes WHERE round_id = ANY($1::text[])", tx_ids
        )
    }
    for i, tx_id, node in votes:
        msg = msgs[i]
        v: m.Vote = msg.payload
        round_id = tx_id
        before = first.get((round_id, node))
        if before is not None:
            if before == v.approve:
                outcomes[i] = Outcome("replay", f"vote of {node} on {tx_id} already recorded")
                continue
            details = _vote_conflict_details(node, before, v)
            out = Outcome("refused", f"{node} voted differently before on {tx_id}")
            outcomes[i] = _audit(w, msg, "vote.conflict", "transaction", tx_id, details, out)
            continue
        first[(round_id, node)] = v.approve
        w.votes.append(_vote_row(msg, tx_id, node))
        delta = w.vote_deltas.setdefault(tx_id, [0, 0])
        delta[0 if v.approve else 1] += 1
        out = Outcome("applied", f"vote {node} on {tx_id}")
        outcomes[i] = _audit(w, msg, "vote", "transaction", tx_id, _vote_details(node, v), out)


# ---- writing -----------------------------------------------------------------------------------------------

TX_UPDATE_COLUMNS = ("reasons", "attempt", "txid", "signed_tx", "block_height", "confirmations")


async def _flush(conn: asyncpg.Connection, w: _Writes) -> None:
    """The collected writes, table by table. Within a batch the order between tables does not matter:
    ``transactions`` rows are inserted before they are updated (each update carries a transaction's
    final values, as after its last event); a voting round is inserted before it is closed and closed
    at most once (approved, rejected and failed-while-voting exclude each other); presignature usage
    and votes keep message order (the first use / first vote wins); the audit rows keep message order."""
    if w.tx_inserts:
        await conn.executemany(
            """INSERT INTO transactions (id, state, key_id, scheme, network, recipient, amount, fee_rate, fee,
                   memo, requested_by, idempotency_key, unsigned_tx, last_stream_seq)
               VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
            w.tx_inserts,
        )
    if w.tx_updates:
        rows = [
            (
                tx_id,
                u["state"],
                u["last_stream_seq"],
                *(x for c in TX_UPDATE_COLUMNS for x in (c in u, u.get(c))),
            )
            for tx_id, u in w.tx_updates.items()
        ]
        await conn.executemany(
            """UPDATE transactions SET state = $2, updated_at = now(), last_stream_seq = $3,
                   reasons = CASE WHEN $4 THEN $5::text[] ELSE reasons END,
                   attempt = CASE WHEN $6 THEN $7::integer ELSE attempt END,
                   txid = CASE WHEN $8 THEN $9::text ELSE txid END,
                   signed_tx = CASE WHEN $10 THEN $11::bytea ELSE signed_tx END,
                   block_height = CASE WHEN $12 THEN $13::integer ELSE block_height END,
                   confirmations = CASE WHEN $14 THEN $15::integer ELSE confirmations END
               WHERE id = $1""",
            rows,
        )
    if w.round_inserts:
        await conn.executemany(
            """INSERT INTO voting_rounds (round_id, tx_id, threshold, total_nodes, approvals, rejections)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (round_id) DO NOTHING""",
            w.round_inserts,
        )
    if w.round_approved:
        await conn.executemany(
            """UPDATE voting_rounds SET state = 'approved', closed_at = now(), certificate = $3
               WHERE round_id = $1 AND tx_id = $2""",
            w.round_approved,
        )
    if w.round_rejected:
        await conn.executemany(
            """UPDATE voting_rounds SET state = 'rejected', closed_at = now(),
                   certificate = coalesce($2, certificate)
               WHERE tx_id = $1 AND state = 'open'""",
            w.round_rejected,
        )
    if w.round_expired:
        await conn.executemany(
            """UPDATE voting_rounds SET state = 'expired', closed_at = now()
               WHERE tx_id = $1 AND state = 'open'""",
            w.round_expired,
        )
    if w.presig:
        await conn.executemany(
            """INSERT INTO presignature_usage (presig_id, scheme, node_id, tx_id, session_id, attempt)
               VALUES ($1, 'frost', $2, $3, $4, $5) ON CONFLICT (presig_id) DO NOTHING""",
            w.presig,
        )
    if w.release:
        await conn.execute(
            "DELETE FROM utxo_reservations WHERE tx_id = ANY($1::text[])", sorted(set(w.release))
        )
    if w.transitions:
        await conn.executemany(INSERT_TRANSITION, w.transitions)
    if w.votes:
        await conn.executemany(
            """INSERT INTO votes (round_id, tx_id, node_id, approve, reasons, envelope, stream_seq)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (round_id, node_id) DO NOTHING""",
            w.votes,
        )
    if w.vote_deltas:
        await conn.executemany(
            """UPDATE voting_rounds SET approvals = approvals + $2, rejections = rejections + $3
               WHERE tx_id = $1""",
            [(tx_id, a, r) for tx_id, (a, r) in sorted(w.vote_deltas.items())],
        )
    if w.audit:
        # checks without the database audit first: put every row back in message (= stream) order
        await _append_audit(conn, sorted(w.audit, key=lambda e: e.msg.seq))


async def _append_audit(conn: asyncpg.Connection, entries: list[_Audit]) -> None:
    """One INSERT for every audit row of the batch, in order (the chain trigger runs per row, in the
    order the ordered SELECT yields them: ids and hashes follow message order)."""
    cols: list[list[Any]] = [[] for _ in range(7)]
    for e in entries:
        details = {**e.details, "subject": e.msg.subject, "msg_id": e.msg.msg_id}
        row = (
            e.msg.sender,
            e.action,
            e.entity_type,
            e.entity_id,
            json.dumps(details, sort_keys=True, default=str),
            e.msg.stream,
            e.msg.seq,
        )
        for col, value in zip(cols, row, strict=True):
            col.append(value)
    rows = await conn.fetch(
        """INSERT INTO audit_log (actor, action, entity_type, entity_id, details, stream, stream_seq)
           SELECT a, b, c, d, e::jsonb, f, g
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
                WITH ORDINALITY AS x(a, b, c, d, e, f, g, ord)
           ORDER BY ord
           RETURNING id, hash""",
        *cols,
    )
    written = sorted((int(r["id"]), bytes(r["hash"])) for r in rows)
    if len(written) != len(entries):
        raise RuntimeError(f"audit append wrote {len(written)} rows for {len(entries)} entries")
    for e, (audit_id, audit_hash) in zip(entries, written, strict=True):
        e.outcome.audit_id = audit_id
        e.outcome.audit_hash = audit_hash
