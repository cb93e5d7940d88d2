"""Round state machines around ChillDKG (:mod:`tss.chilldkg`) for one participant and for the coordinator.

Theory of operation
-------------------
Each party is a pure value (a frozen dataclass) advanced by ``participant_round(state, inbox)`` /
``coordinator_round(state, inbox)`` ``-> (state, outbox)``; inbox and outbox are wire messages (bytes).
No I/O happens here: a service moves the bytes over the message bus (inside its signed, encrypted
envelopes), and tests can drop, reorder, replay or corrupt any of them.

Wire format of one message (:class:`Message`)::

    b"CDKG" | version (1) | kind (1) | session_id (32) | sender (4) | recipient (4) | payload

``sender`` / ``recipient`` are participant indices (the order of ``SessionParams.hostpubkeys``),
:data:`COORDINATOR` or, as recipient, :data:`BROADCAST`. The machines trust ``sender`` as far as the
transport authenticates it (the services' envelope signatures); everything else is checked here.

Flow (kinds)::

    participant                               coordinator
    PMSG1 (step1)                 ------>     all n PMSG1: coordinator_step1
                                  <------     CMSG1 (broadcast)
    participant_step2: PMSG2      ------>     all n PMSG2: coordinator_finalize
                                  <------     CMSG2 (broadcast: the certificate)
    participant_finalize: RACK    ------>     all n RACK verified
                                  <------     RACKS (broadcast: every acknowledgment)
    participant_recovery_acks_verify: CONFIRMED

If ``participant_step2`` raises ``UnknownFaultyParticipantOrCoordinatorError`` the participant sends
INV_REQ; the coordinator answers CINV (``coordinator_investigate``) and ``participant_investigate``
names the suspect.

Rules, the same for both machines:

* A message that cannot be decoded, belongs to another session, is not addressed to us, comes from a
  party that may not send that kind, or conflicts with an already accepted message of the same kind
  from the same sender (equivocation) is **rejected**: appended to ``state.rejected`` as a
  :class:`Rejection` naming the (claimed) sender; the state does not otherwise change.
* An exact replay of an accepted message is ignored (no state change, no output).
* A message for a later round is buffered and processed when the machine gets there (reordering).
* The coordinator checks every participant message on arrival as far as it can alone (PMSG1: encoding
  and proof of possession for the claimed sender; PMSG2: the CertEq signature; RACK: the
  acknowledgment). A bad one is rejected, its :class:`Rejection` carrying the draft's
  ``FaultyParticipantError``, and the coordinator keeps waiting for a good copy. (The draft's
  ``coordinator_step1`` does not check proofs of possession; doing it here binds a first message to
  its sender.)
* A message whose payload fails a check that needs the whole session ends the session: ``phase``
  becomes ``FAILED``,
  ``error`` holds the draft's error type and ``blamed`` the party it names (a participant index, or
  :data:`COORDINATOR`). ``FaultyParticipantOrCoordinatorError(i)`` is recorded as ``blamed = i``;
  its meaning stays "participant i, or the coordinator framing i".
* Nothing raises on bad input from the network; a dropped message is recovered by the sender's
  ``*_retransmit(state)`` (the last outbox again), which the receiver handles idempotently.

Secrets: the participant state holds the host secret key and, after round 2, the secret share; they
are excluded from ``repr`` and never appear in a rejection or error message.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final, NamedTuple

from tss import chilldkg
from tss.chilldkg import (
    DKGOutput,
    FaultyCoordinatorError,
    FaultyParticipantError,
    FaultyParticipantOrCoordinatorError,
    InvalidRecoveryAckError,
    ProtocolError,
    RecoveryData,
    SessionParams,
    UnknownFaultyParticipantOrCoordinatorError,
)
from tss.chilldkg.certeq import certeq_message, recovery_ack_verify
from tss.chilldkg.simplpedpop import pop_verify
from tss.secp256k1 import schnorr_verify

COORDINATOR: Final = 0xFFFFFFFF
"""Party id of the coordinator."""
BROADCAST: Final = 0xFFFFFFFE
"""Recipient id of a message for every participant."""

MAGIC: Final = b"CDKG"
VERSION: Final = 1
HEADER_LEN: Final = len(MAGIC) + 1 + 1 + 32 + 4 + 4


class Kind(IntEnum):
    PMSG1 = 1
    CMSG1 = 2
    PMSG2 = 3
    CMSG2 = 4
    INV_REQ = 5
    CINV = 6
    RACK = 7
    RACKS = 8


PARTICIPANT_KINDS: Final = frozenset({Kind.PMSG1, Kind.PMSG2, Kind.INV_REQ, Kind.RACK})
COORDINATOR_KINDS: Final = frozenset({Kind.CMSG1, Kind.CMSG2, Kind.CINV, Kind.RACKS})


class Message(NamedTuple):
    session_id: bytes
    kind: Kind
    sender: int
    recipient: int
    payload: bytes

    def to_bytes(self) -> bytes:
        return (
            MAGIC
            + bytes([VERSION, self.kind])
            + self.session_id
            + self.sender.to_bytes(4, "big")
            + self.recipient.to_bytes(4, "big")
            + self.payload
        )

    @staticmethod
    def from_bytes(b: bytes) -> Message:
        """``ValueError`` on anything that is not a well-formed message of this version."""
        if not isinstance(b, bytes | bytearray) or len(b) < HEADER_LEN:
            raise ValueError("message too short")
        b = bytes(b)
        if b[:4] != MAGIC or b[4] != VERSION:
            raise ValueError("not a ChillDKG message of this version")
        try:
            kind = Kind(b[5])
        except ValueError:
            raise ValueError("unknown message kind") from None
        return Message(
            session_id=b[6:38],
            kind=kind,
            sender=int.from_bytes(b[38:42], "big"),
            recipient=int.from_bytes(b[42:46], "big"),
            payload=b[46:],
        )


class Rejection(NamedTuple):
    """A message that was refused without changing the session: who claimed to send it and why."""

    sender: int | None  # None when the header itself could not be decoded
    kind: int | None
    reason: str
    error: Exception | None = None  # the draft's error type, where one applies


class Phase(IntEnum):
    INIT = 0
    AWAIT_CMSG1 = 1  # participant
    AWAIT_CMSG2 = 2  # participant
    INVESTIGATING = 3  # participant
    AWAIT_PMSG1 = 4  # coordinator
    AWAIT_PMSG2 = 5  # coordinator
    FINALIZED = 6  # both: DKG output known, waiting for the recovery acknowledgments
    CONFIRMED = 7  # both: every participant acknowledged the recovery data
    FAILED = 8


def blamed_party(error: Exception) -> int | None:
    """The party an error of the draft names: a participant index, :data:`COORDINATOR`, or ``None``."""
    if isinstance(error, FaultyParticipantError | FaultyParticipantOrCoordinatorError):
        return int(error.participant_id)
    if isinstance(error, FaultyCoordinatorError):
        return COORDINATOR
    return None


def _accept_check(seen: Mapping[tuple[int, Kind], bytes], msg: Message) -> tuple[bool, Rejection | None]:
    """(is new, rejection): replays are (False, None), equivocations (False, Rejection)."""
    prev = seen.get((msg.sender, msg.kind))
    if prev is None:
        return True, None
    if prev == msg.payload:
        return False, None
    return False, Rejection(msg.sender, msg.kind, "conflicting message (equivocation)")


def _claimed_sender(raw: bytes) -> int | None:
    """The sender field of a message whose header is long enough and of our format, else None."""
    if isinstance(raw, bytes | bytearray) and len(raw) >= HEADER_LEN and raw[:5] == MAGIC + bytes([VERSION]):
        return int.from_bytes(raw[38:42], "big")
    return None


def _decode(raw: bytes, session_id: bytes, me: int, n: int) -> tuple[Message | None, Rejection | None]:
    try:
        msg = Message.from_bytes(raw)
    except ValueError as e:
        return None, Rejection(_claimed_sender(raw), None, f"undecodable message: {e}")
    if msg.session_id != session_id:
        return None, Rejection(msg.sender, msg.kind, "wrong session")
    if msg.recipient != me and not (msg.recipient == BROADCAST and me != COORDINATOR):
        return None, Rejection(msg.sender, msg.kind, "not addressed to us")
    if me == COORDINATOR:
        if not msg.sender < n or msg.kind not in PARTICIPANT_KINDS:
            return None, Rejection(msg.sender, msg.kind, "sender may not send this kind")
    elif msg.sender != COORDINATOR or msg.kind not in COORDINATOR_KINDS:
        return None, Rejection(msg.sender, msg.kind, "sender may not send this kind")
    return msg, None


# ---------------------------------------------------------------------------------------------
# participant


@dataclass(frozen=True)
class ParticipantSession:
    """One participant's view of one ChillDKG session."""

    session_id: bytes
    params: SessionParams
    participant_id: int
    hostseckey: bytes = field(repr=False)
    random: bytes = field(repr=False)
    aux_rand: bytes = field(repr=False)
    phase: Phase = Phase.INIT
    state1: chilldkg.ParticipantState1 | None = field(default=None, repr=False)
    state2: chilldkg.ParticipantState2 | None = field(default=None, repr=False)
    investigation: UnknownFaultyParticipantOrCoordinatorError | None = field(default=None, repr=False)
    output: DKGOutput | None = field(default=None, repr=False)
    recovery_data: RecoveryData | None = None
    seen: Mapping[tuple[int, Kind], bytes] = field(default_factory=dict, repr=False)
    pending: tuple[Message, ...] = field(default=(), repr=False)
    last_outbox: tuple[bytes, ...] = field(default=(), repr=False)
    error: Exception | None = None
    blamed: int | None = None
    rejected: tuple[Rejection, ...] = ()


def participant_init(
    hostseckey: bytes,
    params: SessionParams,
    session_id: bytes | None = None,
    random: bytes | None = None,
    aux_rand: bytes | None = None,
) -> ParticipantSession:
    """A fresh participant session; ``session_id`` defaults to ``params_hash(params)`` (use a fresh
    id for each run with the same parameters). ``ValueError`` (or the draft's subclasses) on bad input."""
    sid = chilldkg.params_hash(params) if session_id is None else session_id
    if len(sid) != 32:
        raise ValueError("session id must be 32 bytes")
    hostpubkey = chilldkg.hostpubkey_gen(hostseckey)
    if hostpubkey not in params.hostpubkeys:
        raise chilldkg.HostSeckeyError("Host secret key does not match any host public key")
    rnd = secrets.token_bytes(32) if random is None else random
    aux = secrets.token_bytes(32) if aux_rand is None else aux_rand
    if len(rnd) != 32 or len(aux) != 32:
        raise ValueError("random and aux_rand must be 32 bytes")
    return ParticipantSession(
        session_id=sid,
        params=SessionParams(list(params.hostpubkeys), params.t),
        participant_id=list(params.hostpubkeys).index(hostpubkey),
        hostseckey=hostseckey,
        random=rnd,
        aux_rand=aux,
    )


def _p_msg(state: ParticipantSession, kind: Kind, payload: bytes) -> bytes:
    return Message(state.session_id, kind, state.participant_id, COORDINATOR, payload).to_bytes()


def _p_fail(state: ParticipantSession, error: Exception, blamed: int | None) -> ParticipantSession:
    return replace(state, phase=Phase.FAILED, error=error, blamed=blamed, pending=())


# the round a coordinator message belongs to
_P_PHASE_OF: Final = {
    Kind.CMSG1: Phase.AWAIT_CMSG1,
    Kind.CMSG2: Phase.AWAIT_CMSG2,
    Kind.CINV: Phase.INVESTIGATING,
    Kind.RACKS: Phase.FINALIZED,
}


def _p_handle(state: ParticipantSession, msg: Message) -> tuple[ParticipantSession, list[bytes]]:
    """Process one accepted coordinator message in its own phase."""
    state = replace(state, seen={**state.seen, (msg.sender, msg.kind): msg.payload})
    if msg.kind == Kind.CMSG1:
        assert state.state1 is not None
        try:
            state2, pmsg2 = chilldkg.participant_step2(
                state.hostseckey, state.state1, msg.payload, state.aux_rand
            )
        except UnknownFaultyParticipantOrCoordinatorError as e:
            return replace(state, phase=Phase.INVESTIGATING, investigation=e, error=e), [
                _p_msg(state, Kind.INV_REQ, b"")
            ]
        except (ProtocolError, ValueError) as e:
            return _p_fail(state, e, blamed_party(e) if isinstance(e, ProtocolError) else COORDINATOR), []
        return replace(state, phase=Phase.AWAIT_CMSG2, state2=state2), [_p_msg(state, Kind.PMSG2, pmsg2)]
    if msg.kind == Kind.CMSG2:
        assert state.state2 is not None
        try:
            output, rec = chilldkg.participant_finalize(state.state2, msg.payload)
            ack = chilldkg.participant_recovery_ack_sign(state.hostseckey, rec, state.params, state.aux_rand)
        except (ProtocolError, ValueError) as e:
            # Not necessarily a failed session for the others: keep the host key, accept recovery data.
            return _p_fail(state, e, COORDINATOR), []
        state = replace(state, phase=Phase.FINALIZED, output=output, recovery_data=rec)
        return state, [_p_msg(state, Kind.RACK, ack)]
    if msg.kind == Kind.CINV:
        assert state.investigation is not None
        try:
            chilldkg.participant_investigate(state.investigation, msg.payload)
        except (ProtocolError, ValueError) as e:
            return _p_fail(state, e, blamed_party(e) if isinstance(e, ProtocolError) else COORDINATOR), []
        raise AssertionError("unreachable: participant_investigate always raises")  # pragma: no cover
    # RACKS: a bad copy is refused (not remembered), so that a good copy can still come
    assert state.recovery_data is not None
    n = len(state.params.hostpubkeys)
    payload = msg.payload
    unseen = {k: v for k, v in state.seen.items() if k != (msg.sender, msg.kind)}
    err: Exception
    if len(payload) != 64 * n:
        err = FaultyCoordinatorError("acknowledgments have the wrong length")
        return replace(state, seen=unseen, rejected=(*state.rejected, _refusal(msg, err))), []
    sigs = [payload[64 * i : 64 * i + 64] for i in range(n)]
    try:
        chilldkg.participant_recovery_acks_verify(state.recovery_data, state.params, sigs)
    except InvalidRecoveryAckError as e:
        return replace(state, seen=unseen, rejected=(*state.rejected, _refusal(msg, e))), []
    return replace(state, phase=Phase.CONFIRMED), []


def _p_receive(state: ParticipantSession, msg: Message) -> tuple[ParticipantSession, list[bytes]]:
    is_new, rej = _accept_check(state.seen, msg)
    if rej is not None:
        return replace(state, rejected=(*state.rejected, rej)), []
    if not is_new:
        return state, []  # replay
    clash = next((m for m in state.pending if m.kind == msg.kind), None)
    if clash is not None:
        if clash.payload != msg.payload:
            return replace(state, rejected=(*state.rejected, _equivocation(msg))), []
        return state, []  # replay of a buffered message
    state = replace(state, pending=(*state.pending, msg))
    outbox: list[bytes] = []
    while state.phase != Phase.FAILED:
        due = next((m for m in state.pending if _P_PHASE_OF[m.kind] == state.phase), None)
        if due is None:
            break
        state = replace(state, pending=tuple(m for m in state.pending if m is not due))
        state, out = _p_handle(state, due)
        outbox.extend(out)
    return state, outbox


def participant_round(
    state: ParticipantSession, inbox: Iterable[bytes] = ()
) -> tuple[ParticipantSession, list[bytes]]:
    """Advance the participant with the messages in ``inbox`` (any order, any number of rounds).

    In phase ``INIT`` this runs ``participant_step1`` and emits PMSG1. Never raises on network input."""
    outbox: list[bytes] = []
    if state.phase == Phase.INIT:
        state1, pmsg1 = chilldkg.participant_step1(state.hostseckey, state.params, state.random)
        state = replace(state, phase=Phase.AWAIT_CMSG1, state1=state1)
        outbox.append(_p_msg(state, Kind.PMSG1, pmsg1))
    n = len(state.params.hostpubkeys)
    for raw in inbox:
        msg, rej = _decode(raw, state.session_id, state.participant_id, n)
        if rej is not None:
            state = replace(state, rejected=(*state.rejected, rej))
        elif msg is not None and state.phase != Phase.FAILED:
            state, out = _p_receive(state, msg)
            outbox.extend(out)
    if outbox:
        state = replace(state, last_outbox=tuple(outbox))
    return state, outbox


def participant_retransmit(state: ParticipantSession) -> list[bytes]:
    """The last outbox again (after a timeout: the coordinator ignores what it already has)."""
    return list(state.last_outbox)


def _refusal(msg: Message, err: Exception) -> Rejection:
    return Rejection(msg.sender, msg.kind, str(err.args[-1]) if err.args else type(err).__name__, err)


def _equivocation(msg: Message) -> Rejection:
    return Rejection(msg.sender, msg.kind, "conflicting message (equivocation)")


# ---------------------------------------------------------------------------------------------
# coordinator


@dataclass(frozen=True)
class CoordinatorSession:
    """The coordinator's view of one ChillDKG session (no secrets)."""

    session_id: bytes
    params: SessionParams
    phase: Phase = Phase.AWAIT_PMSG1
    pmsgs1: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    pmsgs2: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    acks: Mapping[int, bytes] = field(default_factory=dict, repr=False)
    state: chilldkg.CoordinatorState | None = field(default=None, repr=False)
    cinvs: tuple[bytes, ...] = field(default=(), repr=False)
    output: DKGOutput | None = field(default=None, repr=False)
    recovery_data: RecoveryData | None = field(default=None, repr=False)
    seen: Mapping[tuple[int, Kind], bytes] = field(default_factory=dict, repr=False)
    pending: tuple[Message, ...] = field(default=(), repr=False)
    last_outbox: tuple[bytes, ...] = field(default=(), repr=False)
    investigated: frozenset[int] = frozenset()
    error: Exception | None = None
    blamed: int | None = None
    rejected: tuple[Rejection, ...] = ()


def coordinator_init(params: SessionParams, session_id: bytes | None = None) -> CoordinatorSession:
    """A fresh coordinator session (``SessionParamsError`` / ``ValueError`` on bad parameters)."""
    sid = chilldkg.params_hash(params) if session_id is None else session_id
    if len(sid) != 32:
        raise ValueError("session id must be 32 bytes")
    chilldkg.params_hash(params)  # validates
    return CoordinatorSession(session_id=sid, params=SessionParams(list(params.hostpubkeys), params.t))


def _c_msg(state: CoordinatorSession, kind: Kind, recipient: int, payload: bytes) -> bytes:
    return Message(state.session_id, kind, COORDINATOR, recipient, payload).to_bytes()


def _c_fail(state: CoordinatorSession, error: Exception) -> CoordinatorSession:
    return replace(state, phase=Phase.FAILED, error=error, blamed=blamed_party(error))


def _c_try_advance(state: CoordinatorSession) -> tuple[CoordinatorSession, list[bytes]]:
    """Run the coordinator's step whose inputs are complete (possibly several in a row)."""
    n = len(state.params.hostpubkeys)
    out: list[bytes] = []
    if state.phase == Phase.AWAIT_PMSG1 and len(state.pmsgs1) == n:
        pmsgs1 = [state.pmsgs1[i] for i in range(n)]
        try:
            cstate, cmsg1 = chilldkg.coordinator_step1(pmsgs1, state.params)
        except (ProtocolError, ValueError) as e:
            return _c_fail(state, e), out
        state = replace(state, phase=Phase.AWAIT_PMSG2, state=cstate)
        out.append(_c_msg(state, Kind.CMSG1, BROADCAST, cmsg1))
    if state.phase == Phase.AWAIT_PMSG2 and len(state.pmsgs2) == n:
        assert state.state is not None
        try:
            cmsg2, output, rec = chilldkg.coordinator_finalize(
                state.state, [state.pmsgs2[i] for i in range(n)]
            )
        except (ProtocolError, ValueError) as e:
            return _c_fail(state, e), out
        state = replace(state, phase=Phase.FINALIZED, output=output, recovery_data=rec)
        out.append(_c_msg(state, Kind.CMSG2, BROADCAST, cmsg2))
    if state.phase == Phase.FINALIZED and len(state.acks) == n:
        assert state.recovery_data is not None
        sigs = [state.acks[i] for i in range(n)]
        try:  # each was checked on arrival; this is the draft's all-at-once check
            chilldkg.participant_recovery_acks_verify(state.recovery_data, state.params, sigs)
        except (ProtocolError, ValueError) as e:
            return _c_fail(state, e), out
        state = replace(state, phase=Phase.CONFIRMED)
        out.append(_c_msg(state, Kind.RACKS, BROADCAST, b"".join(sigs)))
    return state, out


def _c_refuse(state: CoordinatorSession, msg: Message, reason: str) -> CoordinatorSession:
    err = FaultyParticipantError(msg.sender, reason)
    return replace(state, rejected=(*state.rejected, Rejection(msg.sender, msg.kind, reason, err)))


def _c_accept(state: CoordinatorSession, msg: Message) -> tuple[CoordinatorSession, list[bytes]]:
    """Check one new participant message as far as it can be checked alone; store it, or refuse it
    (recorded, not stored, so that a good copy can still come)."""
    i, n, t = msg.sender, len(state.params.hostpubkeys), state.params.t
    if msg.kind == Kind.PMSG1:
        try:
            simpl = chilldkg.ParticipantMsg1.from_bytes(msg.payload, t, n).enc_pmsg.simpl_pmsg
        except ValueError:
            return _c_refuse(state, msg, "Participant sent a malformed first message"), []
        com0 = simpl.com.commitment_to_secret()
        if com0 is None or not pop_verify(simpl.pop, com0, i):
            return _c_refuse(state, msg, "Participant sent invalid proof-of-knowledge"), []
        stored = replace(state, pmsgs1={**state.pmsgs1, i: msg.payload})
    elif msg.kind == Kind.PMSG2:
        assert state.state is not None
        eq_input = state.state.eq_input
        if len(msg.payload) != 64 or not schnorr_verify(
            certeq_message(eq_input, i), state.params.hostpubkeys[i][1:33], msg.payload
        ):
            return _c_refuse(
                state, msg, "Participant has provided an invalid signature for the certificate"
            ), []
        stored = replace(state, pmsgs2={**state.pmsgs2, i: msg.payload})
    elif msg.kind == Kind.INV_REQ:
        if msg.payload:
            return _c_refuse(state, msg, "investigation request must be empty"), []
        cinvs = state.cinvs
        if not cinvs:
            cinvs = tuple(chilldkg.coordinator_investigate([state.pmsgs1[j] for j in range(n)], state.params))
        state = replace(state, cinvs=cinvs, investigated=state.investigated | {i})
        state = replace(state, seen={**state.seen, (i, msg.kind): msg.payload})
        return state, [_c_msg(state, Kind.CINV, i, cinvs[i])]
    else:  # RACK
        assert state.recovery_data is not None
        if len(msg.payload) != 64 or not recovery_ack_verify(
            state.params.hostpubkeys[i], i, state.recovery_data, msg.payload
        ):
            return _c_refuse(state, msg, "invalid recovery acknowledgment"), []
        stored = replace(state, acks={**state.acks, i: msg.payload})
    return replace(stored, seen={**stored.seen, (i, msg.kind): msg.payload}), []


# phases in which a participant message can be used; before the first of them it is buffered
_C_READY: Final = {
    Kind.PMSG1: (Phase.AWAIT_PMSG1,),
    Kind.PMSG2: (Phase.AWAIT_PMSG2,),
    Kind.INV_REQ: (Phase.AWAIT_PMSG2, Phase.FINALIZED, Phase.CONFIRMED),
    Kind.RACK: (Phase.FINALIZED,),
}
_C_ORDER: Final = (Phase.AWAIT_PMSG1, Phase.AWAIT_PMSG2, Phase.FINALIZED, Phase.CONFIRMED)


def _c_is_early(kind: Kind, phase: Phase) -> bool:
    return phase in _C_ORDER and _C_ORDER.index(phase) < _C_ORDER.index(_C_READY[kind][0])


def _c_process(state: CoordinatorSession, msg: Message) -> tuple[CoordinatorSession, list[bytes]]:
    if state.phase not in _C_READY[msg.kind]:
        return replace(state, rejected=(*state.rejected, Rejection(msg.sender, msg.kind, "too late"))), []
    state, outbox = _c_accept(state, msg)
    if state.phase != Phase.FAILED:
        state, out = _c_try_advance(state)
        outbox.extend(out)
    return state, outbox


def _c_receive(state: CoordinatorSession, msg: Message) -> tuple[CoordinatorSession, list[bytes]]:
    is_new, rej = _accept_check(state.seen, msg)
    if rej is not None:
        return replace(state, rejected=(*state.rejected, rej)), []
    if not is_new:
        return state, []  # replay
    clash = next((m for m in state.pending if (m.sender, m.kind) == (msg.sender, msg.kind)), None)
    if clash is not None:
        if clash.payload != msg.payload:
            return replace(state, rejected=(*state.rejected, _equivocation(msg))), []
        return state, []  # replay of a buffered message
    if _c_is_early(msg.kind, state.phase):
        return replace(state, pending=(*state.pending, msg)), []
    state, outbox = _c_process(state, msg)
    while state.phase != Phase.FAILED:
        due = next((m for m in state.pending if not _c_is_early(m.kind, state.phase)), None)
        if due is None:
            break
        state = replace(state, pending=tuple(m for m in state.pending if m is not due))
        state, out = _c_process(state, due)
        outbox.extend(out)
    if state.phase == Phase.FAILED:
        state = replace(state, pending=())
    return state, outbox


def coordinator_round(
    state: CoordinatorSession, inbox: Iterable[bytes] = ()
) -> tuple[CoordinatorSession, list[bytes]]:
    """Advance the coordinator with the messages in ``inbox``. Never raises on network input."""
    n = len(state.params.hostpubkeys)
    outbox: list[bytes] = []
    for raw in inbox:
        msg, rej = _decode(raw, state.session_id, COORDINATOR, n)
        if rej is not None:
            state = replace(state, rejected=(*state.rejected, rej))
        elif msg is not None and state.phase != Phase.FAILED:
            state, out = _c_receive(state, msg)
            outbox.extend(out)
    if outbox:
        state = replace(state, last_outbox=tuple(outbox))
    return state, outbox


def coordinator_retransmit(state: CoordinatorSession) -> list[bytes]:
    """The last outbox again (broadcasts are handled idempotently by the participants)."""
    return list(state.last_outbox)
