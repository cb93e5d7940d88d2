"""The recorder's projection: one bus message -> one PostgreSQL transaction, exactly once.

Theory of operation
-------------------
:func:`record` runs, inside ONE database transaction:

1. ``stream_positions``: move the stream's position to the message's stream sequence. When the
   sequence is not beyond the stored position the message was already applied (a redelivery after a
   crash between commit and ack): nothing else happens, the transaction changes nothing.
2. the projection of the message (see below);
3. one ``audit_log`` row (the database trigger chains it: ``prev_hash`` + SHA-256 of the content,
   appends serialized by an advisory lock).

Commit, then the caller acks. Messages of one stream must therefore be applied in stream order (the
service runs each durable consumer with ``max_ack_pending = 1`` and never fails a message; see
``services.recorder.service``).

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

Never stored: protocol payloads, shares, nonces; the audit rows hold summaries (amounts, ids, reasons),
not transaction bytes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from core.lifecycle import STATE_FOR_EVENT, TxState, can_transition, is_replay
from schemas import messages as m
from schemas.envelope import BusRejection
from schemas.kinds import ViolationKind
from services.runtime.db import advance_stream_position, audit_append

CONSUMER = "recorder"
# The recorder's commits wait for the WAL flush (PostgreSQL's default, synchronous_commit = on): what it
# committed survives a PostgreSQL crash. With asynchronous commits a crash of PostgreSQL alone (the
# recorder running on) loses the last commits, and neither side notices: the consumer acked those
# messages, the next commit moves the stream position past the gap (so no resume replays it), and the
# audit rows lost were already anchored on the AUDIT stream, which then fails every verification.

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
    """What :func:`record` did. ``status``: applied | replay | refused | duplicate | ignored."""

    status: str
    detail: str = ""
    violation: m.Violation | None = None
    audit_id: int | None = None
    audit_hash: bytes | None = None  # the chain hash of that audit row, as committed
    extra: dict[str, Any] = field(default_factory=dict)


async def record(conn: asyncpg.Connection, msg: Message) -> Outcome:
    """Apply ``msg`` exactly once (see the module docstring). The caller commits nothing: this opens
    and commits its own transaction."""
    async with conn.transaction():
        if not await advance_stream_position(conn, msg.stream, msg.seq, CONSUMER):
            return Outcome("duplicate", f"{msg.stream} seq {msg.seq} already applied")
        kind = msg.subject.split(".", 1)[0]
        if kind == "tx":
            out = await _tx_event(conn, msg)
        elif kind == "vote":
            out = await _vote(conn, msg)
        elif msg.subject.startswith("node.violation."):
            out = await _violation(conn, msg)
        else:
            out = Outcome("ignored", "subject not projected")
        return out


# ---- helpers ---------------------------------------------------------------------------------------------


async def _audit(
    conn: asyncpg.Connection,
    msg: Message,
    action: str,
    entity_type: str,
    entity_id: str,
    details: dict[str, Any],
) -> tuple[int, bytes]:
    """Append the message's audit row: its ``(id, hash)``."""
    return await audit_append(
        conn,
        actor=msg.sender,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        details={**details, "subject": msg.subject, "msg_id": msg.msg_id},
        stream=msg.stream,
        stream_seq=msg.seq,
    )


async def _refuse(conn: asyncpg.Connection, msg: Message, r: Refusal) -> Outcome:
    audit_id, audit_hash = await _audit(conn, msg, "refused", "transaction", r.tx_id, r.audit_details())
    return Outcome("refused", r.why, violation=r.violation(msg), audit_id=audit_id, audit_hash=audit_hash)


# ---- checks and rows that need no database (shared with services.recorder.batch) --------------------------


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


# ---- tx.<event>.<tx_id> ----------------------------------------------------------------------------------


async def _tx_event(conn: asyncpg.Connection, msg: Message) -> Outcome:
    checked = _check_tx_event(msg)
    if isinstance(checked, Refusal):
        return await _refuse(conn, msg, checked)
    event, tx_id, new = checked
    payload = msg.payload

    await _lock_tx(conn, tx_id)
    row = await conn.fetchrow("SELECT state FROM transactions WHERE id = $1 FOR UPDATE", tx_id)
    current = TxState(row["state"]) if row is not None else None
    verdict = _check_transition(tx_id, event, current, new, payload)
    if isinstance(verdict, Refusal):
        return await _refuse(conn, msg, verdict)
    if verdict is not None:
        return verdict

    await _apply(conn, msg, tx_id, current, new, event, payload)
    await conn.execute(INSERT_TRANSITION, *_transition_row(msg, tx_id, current, new, event, payload))
    details = _tx_details(current, new, payload)
    audit_id, audit_hash = await _audit(conn, msg, f"tx.{event}", "transaction", tx_id, details)
    return Outcome("applied", f"{tx_id} -> {new.value}", audit_id=audit_id, audit_hash=audit_hash)


async def _apply(
    conn: asyncpg.Connection,
    msg: Message,
    tx_id: str,
    current: TxState | None,
    new: TxState,
    event: str,
    p: Any,
) -> None:
    if isinstance(p, m.TxRequested):
        # the intake stored the idempotency key and memo before publishing (its own table)
        extra = await _spend_request(conn, tx_id)
        await conn.execute(
            """INSERT INTO transactions (id, state, key_id, scheme, network, recipient, amount, fee_rate, fee,
                   memo, requested_by, idempotency_key, unsigned_tx, last_stream_seq)
               VALUES ($1, 'pending', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)""",
            *_tx_insert_row(msg, tx_id, p, extra),
        )
        return

    sets = ["state = $2", "updated_at = now()", "last_stream_seq = $3"]
    args: list[Any] = [tx_id, new.value, msg.seq]
    for column, value in _tx_columns(p).items():
        args.append(value)
        sets.append(f"{column} = ${len(args)}")
    if isinstance(p, m.TxVoting):
        approvals, rejections = await _vote_counts(conn, tx_id)
        await conn.execute(
            """INSERT INTO voting_rounds (round_id, tx_id, threshold, total_nodes, approvals, rejections)
               VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (round_id) DO NOTHING""",
            p.round_id,
            tx_id,
            p.threshold,
            p.total_nodes,
            approvals,
            rejections,
        )
    elif isinstance(p, m.TxApproved):
        await conn.execute(
            """UPDATE voting_rounds SET state = 'approved', closed_at = now(), certificate = $3
               WHERE round_id = $1 AND tx_id = $2""",
            p.round_id,
            tx_id,
            list(p.certificate),
        )
    elif isinstance(p, m.TxRejected):
        await conn.execute(
            """UPDATE voting_rounds SET state = 'rejected', closed_at = now(),
                   certificate = coalesce($2, certificate)
               WHERE tx_id = $1 AND state = 'open'""",
            tx_id,
            list(p.certificate) or None,
        )
    elif isinstance(p, m.TxSigning):
        await _presig_usage(conn, tx_id, p)
    await conn.execute(f"UPDATE transactions SET {', '.join(sets)} WHERE id = $1", *args)
    if event in RELEASE_EVENTS:
        await release_reservations(conn, tx_id)
    if new is TxState.FAILED and current is TxState.VOTING:
        await conn.execute(
            """UPDATE voting_rounds SET state = 'expired', closed_at = now()
               WHERE tx_id = $1 AND state = 'open'""",
            tx_id,
        )


async def _lock_tx(conn: asyncpg.Connection, tx_id: str) -> None:
    """Serialize the tx and vote consumers on one transaction (their streams are not ordered with
    each other): vote counts and rounds then always see each other's committed rows."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7405310))", tx_id)


async def _table_exists(conn: asyncpg.Connection, name: str) -> bool:
    return bool(await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name))


async def _spend_request(conn: asyncpg.Connection, tx_id: str) -> dict[str, Any]:
    if not await _table_exists(conn, "spend_requests"):
        return {}
    row = await conn.fetchrow("SELECT idempotency_key, memo FROM spend_requests WHERE tx_id = $1", tx_id)
    return dict(row) if row is not None else {}


async def release_reservations(conn: asyncpg.Connection, tx_id: str) -> int:
    """Free the outpoints a spend reserved (the intake's ``utxo_reservations``)."""
    if not await _table_exists(conn, "utxo_reservations"):
        return 0
    status = await conn.execute("DELETE FROM utxo_reservations WHERE tx_id = $1", tx_id)
    return int(status.split()[-1])


async def _vote_counts(conn: asyncpg.Connection, tx_id: str) -> tuple[int, int]:
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE approve) AS a, count(*) FILTER (WHERE NOT approve) AS r
           FROM votes WHERE tx_id = $1""",
        tx_id,
    )
    assert row is not None
    return int(row["a"]), int(row["r"])


async def _presig_usage(conn: asyncpg.Connection, tx_id: str, p: m.TxSigning) -> None:
    """One ``presignature_usage`` row per claimed nonce. A nonce already used by another transaction
    or attempt stays recorded with its first use (the primary key refuses a second); the auditor sees
    the reuse in the ``tx.signing`` audit entry's nonce ids."""
    for node, refs in p.nonces.items():
        for ref in refs:
            await conn.execute(
                """INSERT INTO presignature_usage (presig_id, scheme, node_id, tx_id, session_id, attempt)
                   VALUES ($1, 'frost', $2, $3, $4, $5) ON CONFLICT (presig_id) DO NOTHING""",
                ref.nonce_id,
                node,
                tx_id,
                p.session_id,
                p.attempt,
            )


# ---- vote.<tx_id>.<node> ---------------------------------------------------------------------------------


async def _vote(conn: asyncpg.Connection, msg: Message) -> Outcome:
    checked = _check_vote(msg)
    if isinstance(checked, Refusal):
        return await _refuse(conn, msg, checked)
    tx_id, node = checked
    v: m.Vote = msg.payload
    round_id = tx_id
    await _lock_tx(conn, tx_id)
    inserted = await conn.fetchval(
        """INSERT INTO votes (round_id, tx_id, node_id, approve, reasons, envelope, stream_seq)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (round_id, node_id) DO NOTHING RETURNING id""",
        *_vote_row(msg, tx_id, node),
    )
    if inserted is None:
        first = await conn.fetchval(
            "SELECT approve FROM votes WHERE round_id = $1 AND node_id = $2", round_id, node
        )
        if first == v.approve:
            return Outcome("replay", f"vote of {node} on {tx_id} already recorded")
        details = _vote_conflict_details(node, first, v)
        audit_id, audit_hash = await _audit(conn, msg, "vote.conflict", "transaction", tx_id, details)
        why = f"{node} voted differently before on {tx_id}"
        return Outcome("refused", why, audit_id=audit_id, audit_hash=audit_hash)
    column = "approvals" if v.approve else "rejections"
    await conn.execute(f"UPDATE voting_rounds SET {column} = {column} + 1 WHERE tx_id = $1", tx_id)
    audit_id, audit_hash = await _audit(conn, msg, "vote", "transaction", tx_id, _vote_details(node, v))
    return Outcome("applied", f"vote {node} on {tx_id}", audit_id=audit_id, audit_hash=audit_hash)


# ---- node.violation.<offender> ---------------------------------------------------------------------------


async def _violation(conn: asyncpg.Connection, msg: Message) -> Outcome:
    offender, details = _violation_details(msg)
    audit_id, audit_hash = await _audit(conn, msg, "node.violation", "node", offender, details)
    return Outcome("applied", f"violation by {offender}", audit_id=audit_id, audit_hash=audit_hash)


# ---- reading the audit trail -----------------------------------------------------------------------------


async def verify_chain(conn: asyncpg.Connection | asyncpg.Pool) -> tuple[bool, int | None]:
    """``(ok, first_bad_id)`` of the hash-chained audit log (``services.runtime.db.verify_audit_chain``:
    recomputed in Python and cross-checked with SQL ``audit_verify()``)."""
    from services.runtime.db import verify_audit_chain

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


def utc_ms(ts: dt.datetime | None) -> int:
    return int(ts.timestamp() * 1000) if ts is not None else 0
