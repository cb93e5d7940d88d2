"""The participant side of ChillDKG over the bus, for one signer node.

The protocol is :mod:`tss.chilldkg_session`'s participant machine, one per session, fed the
coordinator's messages and its outbox published (:mod:`services.runtime.chilldkg_wire` maps machine
messages to ``proto.chilldkg.<session>.<round>.<from>[.<to>]``): the coordinator (``consensus``) sends
:class:`DkgStart` in round 0, then the machine's rounds follow (1 ``pmsg1``, 2 ``cmsg1``, 3 ``pmsg2``, 4
the certificate; 5/6 an investigation when this node cannot decrypt or verify its share; 7 this node's
recovery acknowledgment, 8 everybody's), and the node announces the outcome in round 9: ok once every
node acknowledged the recovery data, else the reason and whom the machine blames (that party is also
reported). A session that makes no progress for :data:`RETRANSMIT_S` sends its last messages again. The
machines live in memory: a node restarted in the middle of a DKG drops out of that session and the DKG
is run again (nothing is stored until the certificate verifies).

The coordinator is untrusted and cannot choose the key: before its first message the node checks the
session against what it knows itself (:func:`check_session`): the participants are the cluster's nodes in
order, the threshold is the configured ``t``, and every host key is the one its node published, signed
by that node, in KV ``keys`` ``hostpubkey.<node>``. A start that fails a check is refused: the node
sends nothing for that session (so it never holds a share of it), reports the coordinator with the
signed start as evidence, and announces the refusal in round 9.

The secret share is written, encrypted, only after the machine accepted the certificate, and never over
another key's; then the node signs its statement of the result
(:class:`~schemas.kv.KeyResultStatement`, KV ``keys`` ``<scheme>.<key_id>.result.<node>``): readers
believe the coordinator's key record only when all ``n`` statements agree with it
(``services.runtime.key_proof``); only then does its recovery acknowledgment leave. A node that
stopped between storing its share and its statement states it when it starts again
(:meth:`DkgParticipant.restate_results`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from schemas import kv as K
from schemas.kinds import RejectionKind
from schemas.messages import DkgMessage, DkgResult, DkgStart
from schemas.names import BUCKET_KEYS, proto_subject
from services.runtime.bus import Bus, Received
from services.runtime.chilldkg_wire import COORDINATOR_IDENTITY, RESULT_ROUND, DkgParties, parse_subject
from services.runtime.config import ServiceConfig
from services.runtime.key_proof import dkg_key_record
from services.runtime.signed_kv import NoVerifiedValue, SignedKV
from services.signer.keystore import Keystore, ShareRecord
from tss import chilldkg
from tss.chilldkg_session import (
    ParticipantSession,
    Phase,
    participant_init,
    participant_retransmit,
    participant_round,
)
from wallet.threshold_account import dkg_chain_code

RETRANSMIT_S: Final = 10.0  # a session without progress this long sends its last messages again
MAX_RETRANSMITS: Final = 6  # ... this many times; then the node gives the session up


@dataclass(slots=True)
class DkgRun:
    """One session this node takes part in: its machine and when it last moved."""

    peers: DkgParties
    machine: ParticipantSession
    progressed: float  # time.monotonic()
    retransmits: int = 0


class DkgRefused(Exception):
    """This node will not take part in a session. ``kind``: the violation kind when the coordinator is to
    blame (it sent a start that contradicts what the node knows), else ""."""

    def __init__(self, kind: RejectionKind | Literal[""], detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def check_session(
    start: DkgStart,
    nodes: Sequence[str],
    t: int,
    published: Sequence[bytes | None],
) -> None:
    """Raise :class:`DkgRefused` unless ``start`` runs ChillDKG among exactly ``nodes`` (in order) with
    threshold ``t`` and the host keys ``published`` (node order; None: that node's is not known)."""
    if list(start.nodes) != list(nodes):
        raise DkgRefused(
            "dkg-bad-participants", f"participants {start.nodes} are not this cluster's {list(nodes)}"
        )
    if start.threshold != t:
        raise DkgRefused("dkg-bad-threshold", f"threshold {start.threshold} is not this cluster's {t}")
    if len(start.hostpubkeys) != len(nodes):
        raise DkgRefused("dkg-bad-hostpubkey", f"{len(start.hostpubkeys)} host keys for {len(nodes)} nodes")
    unknown = [node for node, pub in zip(nodes, published, strict=True) if pub is None]
    if unknown:
        raise DkgRefused("", f"no verified host key published by {', '.join(unknown)}")
    wrong = [node for node, got, pub in zip(nodes, start.hostpubkeys, published, strict=True) if got != pub]
    if wrong:
        raise DkgRefused(
            "dkg-bad-hostpubkey", f"host keys of {', '.join(wrong)} are not the ones they published"
        )


def _start_of(record: K.KeyRecord) -> DkgStart:
    """The start of the session that produced ``record``, as the record tells it."""
    return DkgStart(
        session_id=record.session_id,
        scheme=record.scheme,
        nodes=list(record.nodes),
        threshold=record.t,
        hostpubkeys=list(record.hostpubkeys),
        key_id=record.key_id,
    )


class DkgParticipant:
    def __init__(
        self, cfg: ServiceConfig, bus: Bus, keystore: Keystore, on_share_saved: Callable[[], None]
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.node = cfg.identity
        self.keystore = keystore
        self.log = bus.log
        self.on_share_saved = on_share_saved
        self.sessions: dict[str, DkgRun] = {}
        self.ended: set[str] = set()  # sessions this process finished or gave up: their replays are ignored
        self._keys: SignedKV | None = None

    def hostseckey(self) -> bytes:
        return self.keystore.host_seckey()

    def hostpubkey(self) -> bytes:
        return chilldkg.hostpubkey_gen(self.hostseckey())

    async def keys(self) -> SignedKV:
        if self._keys is None:
            self._keys = await SignedKV.open(self.bus, BUCKET_KEYS)
        return self._keys

    # ---- at start ------------------------------------------------------------------------------------
    async def publish_hostpubkey(self) -> None:
        """Publish this node's host key (signed): what every node checks a DKG's host keys against."""
        keys = await self.keys()
        mine = K.HostPubkey(node=self.node, hostpubkey=self.hostpubkey())
        try:
            held = await keys.get(K.hostpubkey_key(self.node), K.HostPubkey)
        except NoVerifiedValue:
            held = None  # reported; written again below
        if held is None or held.value != mine:
            await keys.put(K.hostpubkey_key(self.node), mine)

    async def restate_results(self) -> None:
        """For every key record in KV of which this node holds a share but no statement (it stopped in
        between, or its share predates statements): state the result, after checking the record against
        its own share and the nodes' published host keys. For a record of its nodes of which it holds no
        share (it stopped before storing it, or lost it): recover the share from the record's recovery
        data (:meth:`_recover`). Never stops the node: what fails is logged."""
        try:
            keys = await self.keys()
            for name in await keys.kv.keys():
                parts = name.split(".")
                if len(parts) != 2 or parts[0] == "hostpubkey":
                    continue
                if self.keystore.has_share(parts[1]):
                    await self._restate(keys, parts[0], parts[1])
                else:
                    await self._recover(keys, parts[0], parts[1])
        except Exception as exc:
            self.log.error("could not restate dkg results", error=repr(exc)[:300])

    async def _recover(self, keys: SignedKV, scheme: str, key_id: str) -> None:
        """ChillDKG recovery: the share of ``<scheme>.<key_id>`` from the record's recovery data and this
        node's host key (``participant_recover``: the data is certified by every participant, and the
        share must match this node's public share in it). Stored and stated only if the session is the
        cluster's (:meth:`_check_start`) and the result equals the record field for field."""
        try:
            got = await keys.get(K.key_record_key(scheme, key_id), K.KeyRecord)
        except NoVerifiedValue:
            return
        if got is None or self.node not in got.value.nodes:
            return
        record = got.value
        start = _start_of(record)
        try:
            await self._check_start(start)
            output, params = chilldkg.participant_recover(self.hostseckey(), record.recovery_data)
            if params != chilldkg.SessionParams(list(record.hostpubkeys), record.t):
                raise DkgRefused("", "the recovery data is of another session")
            if dkg_key_record(start, output, record.recovery_data).statement() != record.statement():
                raise DkgRefused("", "the record differs from the result its recovery data gives")
        except (DkgRefused, chilldkg.ProtocolError, ValueError) as exc:
            detail = exc.detail if isinstance(exc, DkgRefused) else type(exc).__name__
            self.log.error("dkg share not recovered", key_id=key_id, detail=detail[:300])
            return
        await self._store(start, output, record.recovery_data)
        self.log.info("dkg share recovered", scheme=scheme, key_id=key_id)

    async def _restate(self, keys: SignedKV, scheme: str, key_id: str) -> None:
        mine = K.key_result_key(scheme, key_id, self.node)
        try:
            if await keys.get(mine, K.KeyResultStatement) is not None:
                return
        except NoVerifiedValue:
            pass  # not ours (reported): ours goes over it
        try:
            record = await keys.get(K.key_record_key(scheme, key_id), K.KeyRecord)
        except NoVerifiedValue:
            return
        if record is None:
            return
        try:
            statement = await self._statement_from_share(record.value)
        except DkgRefused as exc:
            self.log.error(
                "key record contradicts this node's share; no statement",
                key_id=key_id,
                detail=exc.detail[:300],
            )
            return
        await keys.put(mine, statement)
        self.log.info("dkg result stated", scheme=scheme, key_id=key_id)

    async def _statement_from_share(self, record: K.KeyRecord) -> K.KeyResultStatement:
        share = self.keystore.load_share(record.key_id)
        await self._check_start(_start_of(record))
        params = chilldkg.SessionParams(list(record.hostpubkeys), record.t)
        statement = record.statement()
        if (
            share.scheme != record.scheme
            or share.threshold_pubkey != record.threshold_pubkey
            or list(share.pubshares) != list(record.pubshares)
            or share.t != record.t
            or share.n != record.n
            or share.chain_code != record.chain_code
            or share.chain_code != dkg_chain_code(chilldkg.params_hash(params), share.threshold_pubkey)
            or K.recovery_hash(share.recovery_data) != statement.recovery_hash
        ):
            raise DkgRefused("", "the record differs from the result this node holds")
        return statement

    # ---- the session ---------------------------------------------------------------------------------
    async def on_message(self, rec: Received) -> None:
        if rec.sender != COORDINATOR_IDENTITY:
            return
        payload = rec.payload
        session = getattr(payload, "session_id", "?")
        try:
            if isinstance(payload, DkgStart):
                await self._start(payload)
            elif isinstance(payload, DkgMessage):
                await self._advance(rec, payload)
        except DkgRefused as exc:
            self._end(session)
            self.log.warning("dkg refused", session=session, kind=exc.kind, detail=exc.detail[:300])
            if exc.kind:
                await self.bus.report(
                    rec.sender, exc.kind, exc.detail, rec.subject, rec.stream, rec.seq, rec.envelope_raw
                )
            await self._announce_failure(session, f"refused: {exc.detail[:200]}")
        except (chilldkg.ProtocolError, ValueError) as exc:
            self._end(session)
            blame = type(exc).__name__
            self.log.warning("dkg failed", session=session, error=blame, detail=str(exc)[:200])
            await self._announce_failure(session, f"{blame}: {str(exc)[:200]}")

    async def _check_start(self, start: DkgStart) -> None:
        """:func:`check_session` against the configuration and the host keys the nodes published."""
        if len(self.cfg.nodes) != self.cfg.n:
            raise DkgRefused("", f"configuration lists {len(self.cfg.nodes)} nodes for n = {self.cfg.n}")
        keys = await self.keys()
        published: list[bytes | None] = []
        for node in self.cfg.nodes:
            if node == self.node:
                published.append(self.hostpubkey())
                continue
            try:
                got = await keys.get(K.hostpubkey_key(node), K.HostPubkey)
            except NoVerifiedValue:
                got = None
            published.append(got.value.hostpubkey if got is not None and got.value.node == node else None)
        check_session(start, self.cfg.nodes, self.cfg.t, published)

    async def _start(self, start: DkgStart) -> None:
        if (
            self.node not in start.nodes
            or start.session_id in self.sessions
            or start.session_id in self.ended
        ):
            return
        await self._check_start(start)
        if self.keystore.has_share(start.key_id):
            raise ValueError(
                f"this node already holds a share of key {start.key_id!r}; refusing to replace it"
            )
        peers = DkgParties(start)
        params = chilldkg.SessionParams(list(start.hostpubkeys), start.threshold)
        machine, outbox = participant_round(participant_init(self.hostseckey(), params, peers.session_id))
        run = DkgRun(peers, machine, time.monotonic())
        self.sessions[start.session_id] = run
        await self._send(run, outbox)

    async def _advance(self, rec: Received, message: DkgMessage) -> None:
        """One coordinator message into this node's machine; act on where it got."""
        parts = parse_subject(rec.subject)
        run = self.sessions.get(parts.session) if parts is not None else None
        if parts is None or run is None:
            return  # not a session this node takes part in (any more)
        raw = run.peers.to_machine(parts, message)
        if raw is None:
            await self.bus.report(
                rec.sender,
                "dkg-invalid-message",
                "not a ChillDKG message of this session",
                rec.subject,
                rec.stream,
                rec.seq,
                rec.envelope_raw,
            )
            return
        before = len(run.machine.rejected)
        machine, outbox = participant_round(run.machine, [raw])
        for rej in machine.rejected[before:]:
            self.log.warning("dkg message refused", session=parts.session, reason=rej.reason)
            await self.bus.report(
                rec.sender,
                "dkg-invalid-message",
                rej.reason,
                rec.subject,
                rec.stream,
                rec.seq,
                rec.envelope_raw,
            )
        if machine.output is not None and run.machine.output is None:
            # the share and the statement before the acknowledgment
            await self._store(run.peers.start, machine.output, machine.recovery_data)
        if outbox:
            run.progressed = time.monotonic()
        run.machine = machine
        await self._send(run, outbox)
        if machine.phase == Phase.CONFIRMED:
            self._end(parts.session)
            await self._announce_success(run.peers.start, machine)
        elif machine.phase == Phase.FAILED:
            self._end(parts.session)
            await self._announce_blame(rec, run.peers, machine)

    def _end(self, session: str) -> None:
        self.sessions.pop(session, None)
        self.ended.add(session)

    async def _store(
        self, start: DkgStart, output: chilldkg.DKGOutput | None, recovery: bytes | None
    ) -> None:
        """Keep the share (encrypted) and sign the statement of the result (``ValueError`` if this node
        holds another share of the key)."""
        if output is None or recovery is None or output.secshare is None:
            raise ValueError("the finalized session holds no secret share")
        result = dkg_key_record(start, output, recovery)
        record = ShareRecord(
            key_id=start.key_id,
            scheme=start.scheme,
            index=start.nodes.index(self.node),
            secshare=output.secshare,
            threshold_pubkey=result.threshold_pubkey,
            pubshares=list(result.pubshares),
            chain_code=result.chain_code,
            n=result.n,
            t=result.t,
            recovery_data=result.recovery_data,
        )
        if self.keystore.has_share(start.key_id):
            held = self.keystore.load_share(start.key_id)
            if held.recovery_data != record.recovery_data:  # another session finished first
                raise ValueError(
                    f"this node already holds a share of key {start.key_id!r}; refusing to replace it"
                )
        else:
            self.keystore.save_share(record)
            self.on_share_saved()
        keys = await self.keys()
        await keys.put(K.key_result_key(start.scheme, start.key_id, self.node), result.statement())
        self.log.info("dkg share stored", session=start.session_id, key_id=start.key_id)

    async def retransmit_stalled(self, after_s: float = RETRANSMIT_S) -> None:
        """Send again the last messages of every session that made no progress for ``after_s`` seconds
        (a publish that was lost; the coordinator answers what it owes; receivers ignore what they have).
        After :data:`MAX_RETRANSMITS` the session is given up: announced failed if this node holds no
        share of it, else only left (its share and statement stand; the key is proven by the statements)."""
        now = time.monotonic()
        for session, run in list(self.sessions.items()):
            if now - run.progressed < after_s:
                continue
            run.progressed = now
            if run.retransmits >= MAX_RETRANSMITS:
                self._end(session)
                self.log.warning("dkg session given up", session=session, phase=run.machine.phase.name)
                if run.machine.output is None:
                    await self._announce_failure(session, "no progress: the session was given up")
                continue
            run.retransmits += 1
            await self._send(run, participant_retransmit(run.machine), f".r{run.retransmits}")

    async def run_retransmits(self) -> None:
        """:meth:`retransmit_stalled`, for the life of the node."""
        while not self.bus.stopping.is_set():
            await asyncio.sleep(RETRANSMIT_S / 4)
            try:
                await self.retransmit_stalled()
            except Exception as exc:
                self.log.error("dkg retransmit failed", error=repr(exc)[:200])

    # ---- publishing ----------------------------------------------------------------------------------
    async def _send(self, run: DkgRun, outbox: list[bytes], retry: str = "") -> None:
        for raw in outbox:
            out = run.peers.to_bus(raw)
            await self.bus.publish(out.subject, out.message, out.msg_id + retry)

    async def _announce_success(self, start: DkgStart, machine: ParticipantSession) -> None:
        assert machine.output is not None
        self.log.info("dkg complete", session=start.session_id, key_id=start.key_id)
        await self._publish_result(
            DkgResult(
                session_id=start.session_id,
                node=self.node,
                threshold_pubkey=machine.output.thresh_pk,
                pubshares=list(machine.output.pubshares),
            )
        )

    async def _announce_blame(self, rec: Received, peers: DkgParties, machine: ParticipantSession) -> None:
        """The session failed: say whom the machine blames, and report that party."""
        blamed = machine.blamed
        culprit = peers.identity(blamed) if blamed is not None else "unknown"
        error = type(machine.error).__name__
        self.log.warning("dkg failed", session=peers.start.session_id, blamed=culprit, error=error)
        if blamed is not None:
            await self.bus.report(
                culprit,
                "dkg-blamed",
                f"{error}: blamed by {self.node}",
                rec.subject,
                rec.stream,
                rec.seq,
                rec.envelope_raw,
            )
        await self._announce_failure(peers.start.session_id, f"{error}: blames {culprit}")

    async def _announce_failure(self, session_id: str, reason: str) -> None:
        await self._publish_result(
            DkgResult(
                session_id=session_id,
                node=self.node,
                threshold_pubkey=b"",
                pubshares=[],
                ok=False,
                reason=reason,
            )
        )

    async def _publish_result(self, result: DkgResult) -> None:
        await self.bus.publish(
            proto_subject("chilldkg", result.session_id, RESULT_ROUND, self.node),
            result,
            f"dkg.{result.session_id}.{RESULT_ROUND}.{self.node}",
        )
