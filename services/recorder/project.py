"""The recorder's projection: bus messages -> PostgreSQL, exactly once. One engine: :func:`record`
applies a list of messages of one stream (a whole fetched batch; a single event is a batch of one) in
ONE database transaction.

Theory of operation
-------------------
Inside that transaction:

1. ``stream_positions``: the stream's row is created if missing and locked, and moved to the batch's
   last sequence (``ADVANCE_POSITION``; the transaction commits or rolls back as one). Messages at or
   below the stored position, or repeated within the batch, are ``duplicate`` and change nothing (a
   redelivery after a crash between commit and ack).
2. every message is checked on its own (subject, payload type, ids);
3. the per-transaction advisory locks of every transaction the batch touches are taken at once, in
   ascending lock-key order (the tx and vote consumers both do, so their batches cannot deadlock, and
   vote counts and rounds always see each other's committed rows; the audit append lock is always
   taken after them);
4. the rows the batch depends on are read in bulk (states ``FOR UPDATE``, vote counts, earlier votes,
   spend requests); the lifecycle is then run in Python message by message with ``core.lifecycle``
   (replays are no-ops, illegal transitions refused and audited, the rest applied), collecting the
   writes;
5. the writes go out table by table with ``executemany`` (each in message order; the tables do not
   depend on each other within a batch, see ``_flush``), the audit rows in ONE ordered INSERT (one
   append lock acquisition; ids, and so the hash chain, in message order: the database trigger chains
   each row to the one before, ``prev_hash`` + SHA-256 of the content).

Commit, then the caller acks every message. Messages of one stream must therefore be applied in stream
order (the service resets its consumers to the stored position and never fails a batch; see
``services.recorder.service``). Any error rolls the whole transaction back (nothing applied) and
propagates: the service retries a transient one (a lost connection) with the same batch, and after any
other (a constraint the checks cannot foresee, a bug) records the batch one message per transaction,
where a message that keeps failing is audited as ``record.failed`` and skipped.

Projection, per subject:

- ``tx.<event>.<tx_id>``: the event names the new state (``core.lifecycle.STATE_FOR_EVENT``). A
  replay (``is_replay``: the transaction already reached that state) is a no-op. An illegal transition
  (``check_transition``), a payload of the wrong type or naming another transaction, is *refused*:
  nothing is applied, an audit entry ``refused`` records why, and the caller reports the sender as a
  violation. Otherwise the ``transactions`` row is inserted/updated, a ``transaction_transitions`` row is
  added, and voting rounds, presignature usage and UTXO reservations follow the event.
- ``vote.<tx_id>.<node>``: one ``votes`` row per (round, node), the round being the transaction (one
  voting round per transaction: ``Vote`` carries no round id); a replayed vote is a no-op, a conflicting
  second vote is audited as ``vote.conflict`` and not counted.
- ``node.violation.<offender>``: an audit entry (the monitor keeps ``byzantine_violations``).
- ``node.unban.<node>``: an audit entry ``node.unban`` (the operator lifted a ban; the monitor applies it).

Never stored: protocol payloads, shares, nonces; the audit rows hold summaries (amounts, ids, reasons),
not transaction bytes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from core.lifecycle import STATE_FOR_EVENT, TxState, can_transition, is_replay
from schemas import messages as m
from schemas.envelope import BusRejection
from schemas.kinds import ViolationKind
from services.runtime.db import verify_audit_chain

CONSUMER = "recorder"
# The recorder's commits wait for the WAL flush (PostgreSQL's default, synchronous_commit = on): what it
# committed survives a PostgreSQL crash. With asynchronous commits a crash of PostgreSQL alone (the
# recorder running on) loses the last commits, and neither side notices: the consumer acked those
# messages, the next commit moves the stream position past the gap (so no resume replays it), and the
# audit rows lost were already anchored on the AUDIT stream, which then fails every verification
# (found by loadtest/chaos.py).
#
# The position of a recording in one round trip: when the whole batch lies beyond the stored position
# (the usual case), ADVANCE_POSITION creates or moves it to the batch's last sequence and answers;
# otherwise (a redelivery) it changes nothing and answers nothing, and LOCK_POSITION reads it for the
# message by message comparison. Both lock the row until the commit and look up whether the intake's
# tables exist.
_ALSO = """to_regclass('spend_requests') IS NOT NULL AS has_spends,
        to_regclass('utxo_reservations') IS NOT NULL AS has_reservations"""
ADVANCE_POSITION = f"""INSERT INTO stream_positions (consumer, stream, last_seq) VALUES ($1, $2, $3)
    ON CONFLICT (consumer, stream) DO UPDATE SET last_seq = EXCLUDED.last_seq, updated_at = now()
        WHERE stream_positions.last_seq < $4
    RETURNING {_ALSO}"""
LOCK_POSITION = f"""SELECT last_seq, {_ALSO}
    FROM stream_positions WHERE consumer = $1 AND stream = $2 FOR UPDATE"""

EVENT_TYPES: dict[str, type[msgspec.Struct]] = {
    "requested": m.TxRequested,
    "voting": m.TxVoting,
    "approved": m.TxApproved,
    "rejected": m.TxRejected,
    "signing": m.TxSigning,
    "signed": m.TxSigned,
    "broadcast": m.TxBroadcast,
    "confirmed": m.TxConfirmed,
    "failed": m.TxFailed,
}
# events after which the inputs of a spend are no longer reserved by it. Not "confirmed": those inputs
# are spent for good, and keeping their reservation lets intake work from a UTXO list a moment old
# (intake prunes them later, see services.intake.store.prune_reservations).
RELEASE_EVENTS = frozenset({"rejected", "failed"})


@dataclass(frozen=True)
class Message:
    """What the recorder needs of one verified bus message."""

    stream: str
    seq: int
    subject: str
    sender: str
    payload: Any
    msg_id: str = ""
    envelope_raw: bytes = b""
    ts_ms: int = 0


@dataclass
class Outcome:
    """What :func:`record` did with one message. ``status``: applied | replay | refused | duplicate |
    ignored."""

    status: str
    detail: str = ""
    violation: m.Violation | None = None
    audit_id: int | None = None
    audit_hash: bytes | None = None  # the chain hash of that audit row, as committed
    extra: dict[str, Any] = field(default_factory=dict)


# ---- checks and rows that need no database -----------------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Why a message is refused: audited as ``refused`` and reported as a violation by its sender."""

    tx_id: str
    why: str
    kind: ViolationKind
    details: dict[str, Any] = field(default_factory=dict)

    def audit_details(self) -> dict[str, Any]:
        return {"reason": self.why, **self.details}

    def violation(self, msg: Message) -> m.Violation:
        return m.Violation(
            offender=msg.sender,
            kind=self.kind,
            detail=self.why[:500],
            reporter=CONSUMER,
            subject=msg.subject,
            tx_id=self.tx_id,
        )


def _check_tx_event(msg: Message) -> Refusal | tuple[str, str, TxState]:
    """``(event, tx_id, new state)`` of a ``tx.<event>.<tx_id>`` message, or why it is refused."""
    parts = msg.subject.split(".")
    event = parts[1] if len(parts) == 3 else ""
    tx_id = parts[2] if len(parts) == 3 else ""
    new = STATE_FOR_EVENT.get(event)
    if new is None:
        return Refusal(tx_id, f"unknown lifecycle event {event!r}", "bad-event")
    expected = EVENT_TYPES[event]
    payload = msg.payload
    if not isinstance(payload, expected):
        got = type(payload).__name__
        return Refusal(tx_id, f"{event} carries {got}, not {expected.__name__}", "bad-event")
    named = str(getattr(payload, "tx_id", ""))  # every lifecycle payload names its transaction
    if named != tx_id:
        why = f"payload names transaction {named[:80]!r}, subject {tx_id!r}"
        return Refusal(tx_id, why, "bad-event")
    return event, tx_id, new


def _check_transition(
    tx_id: str, event: str, current: TxState | None, new: TxState, payload: Any
) -> Outcome | Refusal | None:
    """The ``replay`` outcome, why the event is refused in state ``current``, or None: it applies."""
    if is_replay(current, new):
        return Outcome("replay", f"{tx_id} already {current.value if current else '-'}")
    if not can_transition(current, new):
        where = current.value if current is not None else "(none)"
        why = f"illegal transition {where} -> {new.value} by {event}"
        return Refusal(tx_id, why, "illegal-transition", {"from_state": where, "to_state": new.value})
    if isinstance(payload, m.TxVoting) and not (
        1 <= payload.threshold <= payload.total_nodes and 2 * payload.threshold > payload.total_nodes
    ):
        why = f"threshold {payload.threshold} of {payload.total_nodes} is not a majority"
        return Refusal(tx_id, why, "bad-event")
    return None


def _tx_insert_row(msg: Message, tx_id: str, p: m.TxRequested, extra: dict[str, Any]) -> tuple[Any, ...]:
    """The values of a new ``transactions`` row ($1..$13 of the INSERT); ``extra``: its spend request."""
    return (
        tx_id,
        p.key_id,
        p.scheme,
        p.network,
        p.recipient,
        p.amount,
        p.fee_rate,
        p.fee,
        extra.get("memo", ""),
        p.requested_by or msg.sender,
        extra.get("idempotency_key"),
        p.unsigned_tx,
        msg.seq,
    )


def _tx_columns(p: Any) -> dict[str, Any]:
    """The ``transactions`` columns an event sets besides its state and position."""
    if isinstance(p, m.TxRejected):
        return {"reasons": list(p.reasons)}
    if isinstance(p, m.TxSigning):
        return {"attempt": p.attempt}
    if isinstance(p, m.TxSigned):
        return {"txid": p.txid, "signed_tx": p.signed_tx, "attempt": p.attempt}
    if isinstance(p, m.TxBroadcast):
        return {"txid": p.txid}
    if isinstance(p, m.TxConfirmed):
        return {"txid": p.txid, "block_height": p.block_height, "confirmations": p.confirmations}
    if isinstance(p, m.TxFailed):
        return {"reasons": [p.reason]}
    return {}


INSERT_TRANSITION = """INSERT INTO transaction_transitions
       (tx_id, from_state, to_state, event, detail, stream, stream_seq, at)
   VALUES ($1, $2, $3, $4, $5, $6, $7, COALESCE(to_timestamp($8::bigint / 1000.0), now()))
   ON CONFLICT (stream, stream_seq) DO NOTHING"""


def _transition_row(
    msg: Message, tx_id: str, current: TxState | None, new: TxState, event: str, payload: Any
) -> tuple[Any, ...]:
    """A ``transaction_transitions`` row for :data:`INSERT_TRANSITION`. ``at`` is when the event happened
    (the signed envelope's time), not when the recorder got to it, so the timeline shows the spend's
    own pace even when the recorder lags."""
    from_state = current.value if current is not None else None
    at_ms = msg.ts_ms or None
    return (tx_id, from_state, new.value, event, _detail(payload)[:1000], msg.stream, msg.seq, at_ms)


def _tx_details(current: TxState | None, new: TxState, payload: Any) -> dict[str, Any]:
    """The audit details of an applied lifecycle event."""
    return {
        "from_state": current.value if current is not None else None,
        "to_state": new.value,
        **_summary(payload),
    }


def _check_vote(msg: Message) -> Refusal | tuple[str, str]:
    """``(tx_id, node)`` of a ``vote.<tx_id>.<node>`` message, or why it is refused."""
    parts = msg.subject.split(".")
    tx_id = parts[1] if len(parts) == 3 else ""
    node = parts[2] if len(parts) == 3 else ""
    v = msg.payload
    if not isinstance(v, m.Vote) or v.tx_id != tx_id or v.node != node or node != msg.sender:
        return Refusal(tx_id, "vote payload does not match its subject/sender", "bad-vote")
    return tx_id, node


def _vote_row(msg: Message, tx_id: str, node: str) -> tuple[Any, ...]:
    """A ``votes`` row (the round is the transaction)."""
    v: m.Vote = msg.payload
    return (tx_id, tx_id, node, v.approve, list(v.reasons), msg.envelope_raw, msg.seq)


def _vote_details(node: str, v: m.Vote) -> dict[str, Any]:
    return {
        "node": node,
        "approve": v.approve,
        "reasons": list(v.reasons),
        "policy_version": v.policy_version,
    }


def _vote_conflict_details(node: str, first: bool, v: m.Vote) -> dict[str, Any]:
    return {"node": node, "first_approve": first, "approve": v.approve, "reasons": list(v.reasons)}


def _violation_details(msg: Message) -> tuple[str, dict[str, Any]]:
    """The offender named by a ``node.violation.<offender>`` subject and the audit details."""
    p = msg.payload
    offender = msg.subject.split(".", 2)[2] if msg.subject.count(".") >= 2 else ""
    if isinstance(p, m.Violation | BusRejection):
        details: dict[str, Any] = {
            "kind": p.kind,
            "detail": p.detail[:500],
            "reporter": p.reporter,
            "offender": p.offender,
            "about_subject": p.subject,
        }
        if isinstance(p, m.Violation):
            details["tx_id"] = p.tx_id
        else:
            details["about_stream"] = p.stream
            details["about_seq"] = p.stream_seq
    else:
        details = {"type": type(p).__name__}
    return offender, details


def _summary(payload: Any) -> dict[str, Any]:
    """Audit details of a lifecycle payload: ids, amounts, reasons, counts; never transaction bytes,
    certificates or nonces (their ids only)."""
    out: dict[str, Any] = {}
    for name, value in msgspec.structs.asdict(payload).items():
        if name == "tx_id" or isinstance(value, bytes):
            continue
        if name == "inputs":
            out[name] = [f"{i.txid}:{i.vout}" for i in value]
        elif name == "certificate":
            out["certificate_votes"] = len(value)
        elif name == "nonces":
            out["nonce_ids"] = sorted(r.nonce_id for refs in value.values() for r in refs)
        else:
            out[name] = value
    return out


def _detail(payload: Any) -> str:
    """The one-line timeline detail of a transition."""
    if isinstance(payload, m.TxRejected | m.TxFailed):
        return "; ".join(payload.reasons) if isinstance(payload, m.TxRejected) else payload.reason
    if isinstance(payload, m.TxVoting):
        return f"round {payload.round_id}: {payload.threshold} of {payload.total_nodes}"
    if isinstance(payload, m.TxApproved):
        return f"round {payload.round_id}: {len(payload.certificate)} approving votes"
    if isinstance(payload, m.TxSigning):
        return f"attempt {payload.attempt}: {', '.join(payload.signers)}"
    if isinstance(payload, m.TxSigned | m.TxBroadcast):
        return f"txid {payload.txid}"
    if isinstance(payload, m.TxConfirmed):
        return f"block {payload.block_height}, {payload.confirmations} confirmations"
    return ""


TX_LOCK_SEED = 7405310  # a transaction's advisory lock: hashtextextended(tx_id, 7405310)


@dataclass(frozen=True)
class _Tables:
    """Which of the intake's tables exist (a recorder may run against a database without them)."""

    spend_requests: bool
    utxo_reservations: bool


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


async def record(conn: asyncpg.Connection, msgs: Sequence[Message]) -> list[Outcome]:
    """Apply ``msgs`` (one stream, stream order) exactly once, in one transaction of its own; one
    :class:`Outcome` per message. On any exception the transaction is rolled back (nothing applied) and
    the exception propagates."""
    if not msgs:
        return []
    stream = msgs[0].stream
    if any(x.stream != stream for x in msgs):
        raise ValueError("a batch holds the messages of one stream")
    async with conn.transaction():
        return await _record(conn, stream, msgs)


async def _record(conn: asyncpg.Connection, stream: str, msgs: Sequence[Message]) -> list[Outcome]:
    first, newest = min(x.seq for x in msgs), max(x.seq for x in msgs)
    opened = await conn.fetchrow(ADVANCE_POSITION, CONSUMER, stream, newest, first)
    advanced = opened is not None
    if opened is None:
        opened = await conn.fetchrow(LOCK_POSITION, CONSUMER, stream)
        assert opened is not None  # ADVANCE_POSITION found it
        pos = int(opened["last_seq"])
    else:
        pos = first - 1  # the stored one is before the batch, and is now its last sequence
    tables = _Tables(bool(opened["has_spends"]), bool(opened["has_reservations"]))
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
        elif msg.subject.startswith("node.unban."):
            outcomes[i] = _unban(msg, w)
        else:
            outcomes[i] = Outcome("ignored", "subject not projected")

    tx_ids = {t for _, _, t, _ in tx_events} | {t for _, t, _ in votes}
    await _lock_all(conn, tx_ids)
    if tx_events:
        await _simulate_tx(conn, msgs, tx_events, outcomes, w, tables)
    if votes:
        await _simulate_votes(conn, msgs, votes, outcomes, w)
    await _flush(conn, w)
    if not advanced:
        await conn.execute(
            """UPDATE stream_positions SET last_seq = $3, updated_at = now()
               WHERE consumer = $1 AND stream = $2 AND last_seq < $3""",
            CONSUMER,
            stream,
            last,
        )
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


# ---- collected audit entries -------------------------------------------------------------------------------


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


def _unban(msg: Message, w: _Writes) -> Outcome:
    p = msg.payload
    if not isinstance(p, m.NodeUnban) or msg.sender != "admin":
        return Outcome("ignored", "not an operator's unban")
    out = Outcome("applied", f"ban of {p.node} lifted")
    return _audit(w, msg, "node.unban", "node", p.node, {"node": p.node, "reason": p.reason[:500]}, out)


# ---- locks and bulk reads ----------------------------------------------------------------------------------


async def _lock_all(conn: asyncpg.Connection, tx_ids: set[str]) -> None:
    """Every transaction's advisory lock, in ascending key order."""
    if not tx_ids:
        return
    if len(tx_ids) == 1:
        (tx_id,) = tx_ids
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", tx_id, TX_LOCK_SEED)
        return
    keys = await conn.fetchval(
        """SELECT array_agg(DISTINCT hashtextextended(t, $2)) FROM unnest($1::text[]) AS t""",
        sorted(tx_ids),
        TX_LOCK_SEED,
    )
    # one statement; a function scan of a sorted array yields its elements in order
    await conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k", sorted(keys))


# ---- tx.<event>.<tx_id> ------------------------------------------------------------------------------------


async def _simulate_tx(
    conn: asyncpg.Connection,
    msgs: Sequence[Message],
    events: list[tuple[int, str, str, TxState]],
    outcomes: list[Outcome | None],
    w: _Writes,
    tables: _Tables,
) -> None:
    tx_ids = sorted({t for _, _, t, _ in events})
    state: dict[str, TxState | None] = {
        r["id"]: TxState(r["state"])
        for r in await conn.fetch(
            "SELECT id, state FROM transactions WHERE id = ANY($1::text[]) FOR UPDATE", tx_ids
        )
    }
    requested = sorted({t for _, e, t, _ in events if e == "requested" and state.get(t) is None})
    extras: dict[str, dict[str, Any]] = {}
    if requested and tables.spend_requests:
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
        _apply(w, msg, tx_id, current, new, event, payload, extras, counts, tables.utxo_reservations)
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
    """The writes an applied lifecycle event makes, collected."""
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


# ---- vote.<tx_id>.<node> -----------------------------------------------------------------------------------


async def _simulate_votes(
    conn: asyncpg.Connection,
    msgs: Sequence[Message],
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


async def _write_rows(conn: asyncpg.Connection, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    """``sql`` once per row, in order: ``executemany`` for several, a plain execute for one (a batch of
    one costs no more than a message recorded on its own)."""
    if len(rows) == 1:
        await conn.execute(sql, *rows[0])
    else:
        await conn.executemany(sql, rows)


async def _flush(conn: asyncpg.Connection, w: _Writes) -> None:
    """The collected writes, table by table. Within a batch the order between tables does not matter:
    ``transactions`` rows are inserted before they are updated (each update carries a transaction's
    final values, as after its last event); a voting round is inserted before it is closed and closed
    at most once (approved, rejected and failed-while-voting exclude each other); presignature usage
    and votes keep message order (the first use / first vote wins); the audit rows keep message order."""
    if w.tx_inserts:
        await _write_rows(
            conn,
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
        await _write_rows(
            conn,
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
        await _write_rows(
            conn,
            """INSERT INTO voting_rounds (round_id, tx_id, threshold, total_nodes, approvals, rejections)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (round_id) DO NOTHING""",
            w.round_inserts,
        )
    if w.round_approved:
        await _write_rows(
            conn,
            """UPDATE voting_rounds SET state = 'approved', closed_at = now(), certificate = $3
               WHERE round_id = $1 AND tx_id = $2""",
            w.round_approved,
        )
    if w.round_rejected:
        await _write_rows(
            conn,
            """UPDATE voting_rounds SET state = 'rejected', closed_at = now(),
                   certificate = coalesce($2, certificate)
               WHERE tx_id = $1 AND state = 'open'""",
            w.round_rejected,
        )
    if w.round_expired:
        await _write_rows(
            conn,
            """UPDATE voting_rounds SET state = 'expired', closed_at = now()
               WHERE tx_id = $1 AND state = 'open'""",
            w.round_expired,
        )
    if w.presig:
        await _write_rows(
            conn,
            """INSERT INTO presignature_usage (presig_id, scheme, node_id, tx_id, session_id, attempt)
               VALUES ($1, 'frost', $2, $3, $4, $5) ON CONFLICT (presig_id) DO NOTHING""",
            w.presig,
        )
    if w.release:
        await conn.execute(
            "DELETE FROM utxo_reservations WHERE tx_id = ANY($1::text[])", sorted(set(w.release))
        )
    if w.transitions:
        await _write_rows(conn, INSERT_TRANSITION, w.transitions)
    if w.votes:
        await _write_rows(
            conn,
            """INSERT INTO votes (round_id, tx_id, node_id, approve, reasons, envelope, stream_seq)
               VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (round_id, node_id) DO NOTHING""",
            w.votes,
        )
    if w.vote_deltas:
        await _write_rows(
            conn,
            """UPDATE voting_rounds SET approvals = approvals + $2, rejections = rejections + $3
               WHERE tx_id = $1""",
            [(tx_id, a, r) for tx_id, (a, r) in sorted(w.vote_deltas.items())],
        )
    if w.audit:
        # checks without the database audit first: put every row back in message (= stream) order
        await _append_audit(conn, sorted(w.audit, key=lambda e: e.msg.seq))


AUDIT_MANY = """INSERT INTO audit_log (actor, action, entity_type, entity_id, details, stream, stream_seq)
    SELECT a, b, c, d, e::jsonb, f, g
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[])
         WITH ORDINALITY AS x(a, b, c, d, e, f, g, ord)
    ORDER BY ord
    RETURNING id, hash"""
AUDIT_ONE = """INSERT INTO audit_log (actor, action, entity_type, entity_id, details, stream, stream_seq)
    VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7) RETURNING id, hash"""


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
    if len(entries) == 1:  # the same row, without the arrays
        rows = await conn.fetch(AUDIT_ONE, *(col[0] for col in cols))
    else:
        rows = await conn.fetch(AUDIT_MANY, *cols)
    written = sorted((int(r["id"]), bytes(r["hash"])) for r in rows)
    if len(written) != len(entries):
        raise RuntimeError(f"audit append wrote {len(written)} rows for {len(entries)} entries")
    for e, (audit_id, audit_hash) in zip(entries, written, strict=True):
        e.outcome.audit_id = audit_id
        e.outcome.audit_hash = audit_hash


# ---- reading the audit trail -------------------------------------------------------------------------------


async def verify_chain(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[bool, int | None]:
    """``(ok, first_bad_id)`` of the hash-chained audit log (``services.runtime.db.verify_audit_chain``:
    recomputed in Python and cross-checked with SQL ``audit_verify()``)."""
    problems = await verify_audit_chain(conn)
    if not problems:
        return True, None
    ids = [p.id for p in problems if p.id]
    return False, (min(ids) if ids else 0)


async def verify_audit(database_url: str) -> tuple[bool, int | None]:
    """For ``mpcw``: connect, :func:`verify_chain`, disconnect."""
    conn = await asyncpg.connect(database_url)
    try:
        return await verify_chain(conn)
    finally:
        await conn.close()
