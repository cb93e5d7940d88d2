"""ChillDKG's round machines (:mod:`tss.chilldkg_session`) on the bus: one table between the two framings.

A machine message names its kind, its 32-byte session id, its sender and its recipient in its own header
(``b"CDKG" | version | kind | session | sender | recipient | payload``). On the bus the subject says the
same (``proto.chilldkg.<session>.<round>.<from>[.<to>]``), the envelope signature proves the sender, and
a :class:`~schemas.messages.DkgMessage` carries only the draft's payload. So the header is rebuilt from
the subject on the way in and dropped on the way out: the machines stay the one place that decides what
a message may do, and the bus format of rounds 1-4 is the one the services used before the machines drove
them.

=====  =========  ===========  ====================================================================
round  kind       from -> to   subject
=====  =========  ===========  ====================================================================
0      (start)    coordinator  ``proto.chilldkg.<s>.0.consensus``: :class:`DkgStart` (not a machine message)
1      PMSG1      node         ``proto.chilldkg.<s>.1.<node>``
2      CMSG1      coordinator  ``proto.chilldkg.<s>.2.consensus`` (to every node)
3      PMSG2      node         ``proto.chilldkg.<s>.3.<node>``
4      CMSG2      coordinator  ``proto.chilldkg.<s>.4.consensus``: the certificate
5      INV_REQ    node         ``proto.chilldkg.<s>.5.<node>``: "investigate": empty
6      CINV       coordinator  ``proto.chilldkg.<s>.6.consensus.<node>``: that node's investigation data
7      RACK       node         ``proto.chilldkg.<s>.7.<node>``: its recovery acknowledgment
8      RACKS      coordinator  ``proto.chilldkg.<s>.8.consensus``: every acknowledgment
9      (result)   node         ``proto.chilldkg.<s>.9.<node>``: :class:`DkgResult` (not a machine message)
=====  =========  ===========  ====================================================================
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

from schemas.messages import DkgMessage, DkgStart
from schemas.names import proto_subject
from tss.chilldkg_session import BROADCAST, COORDINATOR, PARTICIPANT_KINDS, Kind, Message

COORDINATOR_IDENTITY: Final = "consensus"
START_ROUND: Final = 0
RESULT_ROUND: Final = 9
ROUND_OF_KIND: Final[dict[Kind, int]] = {
    Kind.PMSG1: 1,
    Kind.CMSG1: 2,
    Kind.PMSG2: 3,
    Kind.CMSG2: 4,
    Kind.INV_REQ: 5,
    Kind.CINV: 6,
    Kind.RACK: 7,
    Kind.RACKS: 8,
}
KIND_OF_ROUND: Final[dict[int, Kind]] = {r: k for k, r in ROUND_OF_KIND.items()}
PARTICIPANT_ROUNDS: Final = tuple(sorted(ROUND_OF_KIND[k] for k in PARTICIPANT_KINDS))


def machine_session_id(session: str) -> bytes:
    """The machines' 32-byte session id of the bus session ``session`` (framing only: the draft binds
    the session cryptographically through its parameters and the participants' randomness)."""
    return hashlib.sha256(b"mpcw/chilldkg/session/" + session.encode()).digest()


@dataclass(frozen=True, slots=True)
class BusMessage:
    """A machine message as the bus carries it."""

    subject: str
    message: DkgMessage
    msg_id: str
    to: str | None  # the recipient of a point-to-point message (the envelope is encrypted to it)


@dataclass(frozen=True, slots=True)
class SubjectParts:
    session: str
    round: int
    sender: str
    to: str | None


def parse_subject(subject: str) -> SubjectParts | None:
    """The tokens of ``proto.chilldkg.<session>.<round>.<from>[.<to>]``; None for anything else."""
    tokens = subject.split(".")
    if len(tokens) not in (5, 6) or tokens[:2] != ["proto", "chilldkg"] or not tokens[3].isdigit():
        return None
    return SubjectParts(tokens[2], int(tokens[3]), tokens[4], tokens[5] if len(tokens) == 6 else None)


class DkgParties:
    """The parties of one session: participant ``i`` is ``start.nodes[i]``, the coordinator is
    :data:`COORDINATOR_IDENTITY`."""

    def __init__(self, start: DkgStart) -> None:
        self.start = start
        self.session_id = machine_session_id(start.session_id)

    def party(self, identity: str) -> int | None:
        if identity == COORDINATOR_IDENTITY:
            return COORDINATOR
        return self.start.nodes.index(identity) if identity in self.start.nodes else None

    def identity(self, party: int) -> str:
        return COORDINATOR_IDENTITY if party == COORDINATOR else self.start.nodes[party]

    def to_machine(self, parts: SubjectParts, message: DkgMessage) -> bytes | None:
        """The machine's bytes of ``message`` received on a subject with ``parts`` (sender verified by
        the envelope); None when it is no machine message of this session (the caller reports it)."""
        kind = KIND_OF_ROUND.get(parts.round)
        sender = self.party(parts.sender)
        if (
            kind is None
            or sender is None
            or parts.session != self.start.session_id
            or message.session_id != parts.session
            or message.round != parts.round
        ):
            return None
        if parts.to is None:
            recipient = COORDINATOR if sender != COORDINATOR else BROADCAST
        else:
            to = self.party(parts.to)
            if to is None or to == COORDINATOR:
                return None
            recipient = to
        return Message(self.session_id, kind, sender, recipient, message.data).to_bytes()

    def to_bus(self, raw: bytes) -> BusMessage:
        """What to publish for one message of a machine's outbox (``ValueError`` if it is not one)."""
        msg = Message.from_bytes(raw)
        round_ = ROUND_OF_KIND[msg.kind]
        sender = self.identity(msg.sender)
        to = None if msg.recipient in (BROADCAST, COORDINATOR) else self.identity(msg.recipient)
        session = self.start.session_id
        subject = proto_subject("chilldkg", session, round_, sender, to)
        if sender == COORDINATOR_IDENTITY:
            msg_id = f"dkg.{session}.{round_}" + (f".{to}" if to else "")
        else:
            msg_id = f"dkg.{session}.{round_}.{sender}"
        return BusMessage(subject, DkgMessage(session_id=session, round=round_, data=msg.payload), msg_id, to)
