"""Consensus as the (untrusted) ChillDKG coordinator: :mod:`tss.chilldkg_session`'s coordinator machine
driven from the stream.

Theory of operation
-------------------
A ``dkg.<session>`` request in KV ``config`` (signed by admin: ``mpcw dkg start``) for the cluster's nodes
and threshold makes this service publish the :class:`DkgStart` (``proto.chilldkg.<session>.0.consensus``)
with the host keys the nodes signed (KV ``keys`` ``hostpubkey.<node>``). A request for other nodes or
another threshold is refused here already: every node would refuse it too, and report this service.

The coordinator keeps no state of its own: the stream is its state. Each participant message (rounds 1,
3, 5, 7; any instance of consensus may get it) rebuilds the session: a fresh coordinator machine is fed
the newest message of every participant for every round, read back verified from the stream
(``services.runtime.lookup``), stage by stage as the machine gets there. The machine is deterministic, so
the rebuild emits exactly the messages the coordinator owes; each one not yet in the stream is published
(a lost publish is made good when a participant retransmits; JetStream drops a repeat by message id).
So a restart, a second instance, a replayed, reordered or retransmitted message all end in the same
transcript.

Before the certificate (round 4) leaves, the public result goes to KV ``keys`` ``<scheme>.<key_id>``
(create-only, signed; readers believe it only with all nodes' statements, ``services.runtime.key_proof``).
If another session created that key first, this one is not finished: its nodes would hold shares of a
key nobody uses.

Blame: a participant message the machine refuses (a bad proof of possession, certificate signature or
recovery acknowledgment: the draft's ``FaultyParticipantError``) is reported against its sender
(``node.violation.<node>``, once per message delivered); a session the machine ends is reported against
the party it blames.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Final

from schemas import kv as K
from schemas.kinds import ViolationKind
from schemas.messages import DkgMessage, DkgStart, Violation
from schemas.names import BUCKET_CONFIG, BUCKET_KEYS, proto_subject, violation_subject
from services.runtime.bus import Bus, CasConflict, Received
from services.runtime.chilldkg_wire import (
    COORDINATOR_IDENTITY,
    KIND_OF_ROUND,
    PARTICIPANT_ROUNDS,
    START_ROUND,
    BusMessage,
    DkgParties,
    parse_subject,
)
from services.runtime.config import ServiceConfig
from services.runtime.key_proof import dkg_key_record
from services.runtime.logging import Logger
from services.runtime.lookup import last_message
from services.runtime.signed_kv import Signed, SignedKV
from tss import chilldkg
from tss.chilldkg_session import (
    COORDINATOR,
    CoordinatorSession,
    Kind,
    Phase,
    coordinator_init,
    coordinator_round,
)

History = Callable[[str], Awaitable[Received | None]]
"""The newest verified message on a subject (``services.runtime.lookup.last_message``)."""

# the rounds read back at each stage, and the phases in which the machine can use them
_STAGES: Final = (
    ((1,), frozenset(Phase)),
    ((3, 5), frozenset({Phase.AWAIT_PMSG2, Phase.FINALIZED, Phase.CONFIRMED})),
    ((7,), frozenset({Phase.FINALIZED, Phase.CONFIRMED})),
)
_VIOLATION_OF: Final[dict[Kind, ViolationKind]] = {
    Kind.PMSG1: "dkg-invalid-message",
    Kind.PMSG2: "dkg-invalid-signature",
    Kind.INV_REQ: "dkg-invalid-message",
    Kind.RACK: "dkg-invalid-ack",
}


def now_ms() -> int:
    return int(time.time() * 1000)


class DkgCoordinator:
    def __init__(self, cfg: ServiceConfig, bus: Bus, log: Logger, history: History | None = None) -> None:
        self.cfg = cfg
        self.bus = bus
        self.log = log
        self.history: History = history if history is not None else self._last_message
        self._keys: SignedKV | None = None

    async def _last_message(self, subject: str) -> Received | None:
        return await last_message(self.bus, subject)

    async def keys(self) -> SignedKV:
        """KV ``keys`` as signed values: the nodes' host keys in, the key record out."""
        if self._keys is None:
            self._keys = await SignedKV.open(self.bus, BUCKET_KEYS)
        return self._keys

    # ---- requests ------------------------------------------------------------------------------------
    async def watch_requests(self) -> None:
        """DKG requests signed by admin (``dkg.<session>`` in KV ``config``)."""
        config = await SignedKV.open(self.bus, BUCKET_CONFIG)
        async for item in config.watch("dkg.>", K.DkgRequest):
            if not isinstance(item, Signed):
                continue
            try:
                if item.key != f"dkg.{item.value.session_id}":
                    raise ValueError(f"request for session {item.value.session_id!r} stored elsewhere")
                await self.start(item.value)
            except Exception as exc:
                self.log.error("dkg request failed", kv_entry=item.key, error=repr(exc)[:300])

    async def start(self, req: K.DkgRequest) -> None:
        """Publish the start of the requested session (nothing for a request that is not this cluster's,
        or for a key that exists)."""
        nodes = list(self.cfg.nodes)
        if list(req.nodes) != nodes or req.threshold != self.cfg.t or len(req.nodes) != self.cfg.n:
            # every node would refuse it (and report this coordinator): it is not this cluster's DKG
            self.log.error(
                "dkg request refused: not this cluster's nodes and threshold",
                session=req.session_id,
                nodes=list(req.nodes)[:16],
                threshold=req.threshold,
            )
            return
        keys = await self.keys()
        if await keys.kv.get(K.key_record_key(req.scheme, req.key_id)) is not None:
            self.log.info("key exists; dkg request ignored", key_id=req.key_id)
            return
        hostpubkeys = []
        for node in req.nodes:
            e = await keys.get(K.hostpubkey_key(node), K.HostPubkey)
            if e is None or e.value.node != node:
                raise RuntimeError(f"{node} has not published its host public key yet")
            hostpubkeys.append(e.value.hostpubkey)
        start = DkgStart(
            session_id=req.session_id,
            scheme=req.scheme,
            nodes=list(req.nodes),
            threshold=req.threshold,
            hostpubkeys=hostpubkeys,
            key_id=req.key_id,
        )
        await self.bus.publish(
            proto_subject("chilldkg", req.session_id, START_ROUND, COORDINATOR_IDENTITY),
            start,
            f"dkg.{req.session_id}.{START_ROUND}",
        )

    # ---- the session ---------------------------------------------------------------------------------
    async def on_message(self, rec: Received) -> None:
        """A participant's message: rebuild the session from the stream and publish what is owed."""
        parts = parse_subject(rec.subject)
        if parts is None or parts.round not in PARTICIPANT_ROUNDS or not isinstance(rec.payload, DkgMessage):
            return  # the coordinator's own messages and the nodes' results come by too
        start = await self._start_of(parts.session)
        if start is None:
            return
        peers = DkgParties(start)
        if peers.party(rec.sender) in (None, COORDINATOR) or parts.sender != rec.sender:
            return
        state, outbox = await self.rebuild(peers)
        await self._report_rejections(peers, state, rec)
        if state.phase == Phase.FAILED:
            await self._report_failure(peers, state)
            return
        await self._publish_owed(peers, state, outbox)

    async def _start_of(self, session: str) -> DkgStart | None:
        got = await self.history(proto_subject("chilldkg", session, START_ROUND, COORDINATOR_IDENTITY))
        if got is None or got.sender != COORDINATOR_IDENTITY or not isinstance(got.payload, DkgStart):
            return None
        return got.payload if got.payload.session_id == session else None

    async def rebuild(self, peers: DkgParties) -> tuple[CoordinatorSession, list[bytes]]:
        """The coordinator machine fed every participant's newest message of every round it reaches, and
        everything it sent on the way."""
        start = peers.start
        params = chilldkg.SessionParams(list(start.hostpubkeys), start.threshold)
        state = coordinator_init(params, peers.session_id)
        outbox: list[bytes] = []
        for rounds, usable in _STAGES:
            if state.phase not in usable:
                break
            inbox = [raw for r in rounds for node in start.nodes if (raw := await self._read(peers, r, node))]
            state, out = coordinator_round(state, inbox)
            outbox.extend(out)
        return state, outbox

    async def _read(self, peers: DkgParties, round_: int, node: str) -> bytes | None:
        subject = proto_subject("chilldkg", peers.start.session_id, round_, node)
        got = await self.history(subject)
        if got is None or got.sender != node or not isinstance(got.payload, DkgMessage):
            return None
        parts = parse_subject(subject)
        assert parts is not None
        return peers.to_machine(parts, got.payload)

    async def _publish_owed(self, peers: DkgParties, state: CoordinatorSession, outbox: list[bytes]) -> None:
        for raw in outbox:
            out = peers.to_bus(raw)
            if await self.history(out.subject) is not None:
                continue  # published already
            if out.message.round == 4 and not await self._store_record(peers, state):
                return
            await self._publish(out)

    async def _publish(self, out: BusMessage) -> None:
        await self.bus.publish(out.subject, out.message, out.msg_id, out.to)

    async def _store_record(self, peers: DkgParties, state: CoordinatorSession) -> bool:
        """Write the public result (create-only); False if another session's result is there."""
        assert state.output is not None and state.recovery_data is not None
        start = peers.start
        record = dkg_key_record(start, state.output, state.recovery_data, now_ms())
        keys = await self.keys()
        try:
            await keys.create(K.key_record_key(start.scheme, start.key_id), record)
        except CasConflict:
            stored = await keys.get(K.key_record_key(start.scheme, start.key_id), K.KeyRecord)
            if stored is None or stored.value.session_id != start.session_id:
                self.log.error(
                    "dkg session lost the race for the key; not finished", session=start.session_id
                )
                return False
        return True

    # ---- blame ---------------------------------------------------------------------------------------
    async def _report_rejections(self, peers: DkgParties, state: CoordinatorSession, rec: Received) -> None:
        """Report the sender of ``rec`` if the machine refused that message of its."""
        parts = parse_subject(rec.subject)
        assert parts is not None
        kind = KIND_OF_ROUND[parts.round]
        sender = peers.party(rec.sender)
        for rej in state.rejected:
            if (
                rej.sender == sender
                and rej.kind == kind
                and isinstance(rej.error, chilldkg.FaultyParticipantError)
            ):
                self.log.warning(
                    "dkg message refused", session=parts.session, node=rec.sender, reason=rej.reason
                )
                await self._violation(rec.sender, _VIOLATION_OF[kind], rej.reason, rec.msg_id)

    async def _report_failure(self, peers: DkgParties, state: CoordinatorSession) -> None:
        blamed = state.blamed
        culprit = peers.identity(blamed) if blamed is not None and blamed != COORDINATOR else None
        detail = f"{type(state.error).__name__}: {state.error}"[:200]
        self.log.error("dkg session failed", session=peers.start.session_id, blamed=culprit, error=detail)
        if culprit is not None:
            await self._violation(culprit, "dkg-blamed", detail, f"dkg.{peers.start.session_id}.failed")

    async def _violation(self, offender: str, kind: ViolationKind, detail: str, about: str) -> None:
        v = Violation(offender=offender, kind=kind, detail=detail, reporter=self.cfg.identity)
        await self.bus.publish(violation_subject(offender), v, f"viol.{kind}.{offender}.{about}")
