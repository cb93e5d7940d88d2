"""The round machinery shared by every CGGMP24 protocol here (keygen, key refresh, presigning, signing).

Theory of operation
-------------------
A protocol run is one party's immutable state advanced by ``<protocol>_round(state, inbox) -> (state,
outbox)``. Messages are :class:`Message` values (sender, recipient or ``None`` for a broadcast, payload
bytes); the caller's transport moves, authenticates and (for point-to-point messages) encrypts them.
Nothing here does I/O, so tests can drop, replay, reorder, corrupt or misaddress any message.

Each protocol declares its message *slots* (:class:`Slot`): one per kind of message a round sends, with its
delivery (broadcast or point to point). A payload is

    b"CG24" | protocol (1 byte) | slot (1 byte) | session_id (32 bytes) | body

:func:`absorb` files every incoming message in the :class:`RoundCore` store under ``(slot, sender)``,
whatever round the machine is in, so early messages simply wait there (reordering costs nothing). A
message is refused, recorded as a :class:`Rejection` and otherwise ignored when it cannot be decoded, is
for another protocol or session, is addressed to someone else or sent by the wrong delivery, comes from
outside the party set or claims our own index, or differs from a message already filed for the same slot
and sender (equivocation: the first one stands). An exact replay is ignored (idempotent).

The protocol's handler for a round runs once every slot of that round is filled (:func:`missing` names
the parties still awaited, so a caller with a timeout knows whom to report). A filed body that fails a
check of the protocol (it does not decode, a proof fails, a commitment does not open...) is blamed on its
sender: :class:`~tss.cggmp24.errors.InvalidContributionError` records in ``state.blame`` and the run
fails. Blame is only as good as the transport's authentication of ``sender``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Final, Generic, Literal, NamedTuple, Protocol, TypeVar

from tss.cggmp24.errors import BadInputError, CggmpError, InvalidContributionError
from tss.cggmp24.transcript import Transcript

MAGIC: Final = b"CG24"
HEADER_LEN: Final = len(MAGIC) + 1 + 1 + 32

PROTOCOL_KEYGEN: Final = 1
PROTOCOL_KEY_REFRESH: Final = 2
PROTOCOL_PRESIGNING: Final = 3
PROTOCOL_SIGNING: Final = 4
PROTOCOL_AUX_INFO: Final = 5

RejectReason = Literal[
    "malformed",
    "wrong-protocol",
    "wrong-session",
    "wrong-recipient",
    "unknown-sender",
    "impersonation",
    "conflicting",
]


@dataclass(frozen=True)
class Message:
    """One protocol message; ``recipient=None`` is a broadcast."""

    sender: int
    recipient: int | None
    payload: bytes


class Rejection(NamedTuple):
    """A message that was refused without changing the run (the claimed sender, the slot if known)."""

    sender: object
    slot: int | None
    reason: RejectReason


@dataclass(frozen=True)
class Slot:
    code: int
    name: str
    broadcast: bool


@dataclass(frozen=True)
class RoundCore:
    """What every protocol run keeps about its messages (no secrets: bodies are public or addressed to
    us, and point-to-point secrets are excluded from ``repr``)."""

    protocol: int
    session_id: bytes
    me: int
    parties: tuple[int, ...]
    slots: Mapping[int, Slot] = field(repr=False)
    store: Mapping[tuple[int, int], bytes] = field(default_factory=dict, repr=False)
    sent: tuple[Message, ...] = field(default=(), repr=False)
    rejections: tuple[Rejection, ...] = ()


def new_core(
    protocol: int, session_id: bytes, me: int, parties: Sequence[int], slots: Sequence[Slot]
) -> RoundCore:
    if not isinstance(session_id, bytes) or len(session_id) != 32:
        raise BadInputError("session id must be 32 bytes")
    ps = tuple(parties)
    if len(set(ps)) != len(ps) or any(not isinstance(p, int) or isinstance(p, bool) or p < 0 for p in ps):
        raise BadInputError("parties must be distinct non-negative indices")
    if me not in ps:
        raise BadInputError("our index is not among the parties")
    return RoundCore(protocol, session_id, me, ps, {s.code: s for s in slots})


def fresh_session_id() -> bytes:
    return secrets.token_bytes(32)


def encode(core: RoundCore, slot: int, body: bytes) -> bytes:
    return MAGIC + bytes([core.protocol, slot]) + core.session_id + body


def _reject(core: RoundCore, sender: object, slot: int | None, reason: RejectReason) -> RoundCore:
    return replace(core, rejections=(*core.rejections, Rejection(sender, slot, reason)))


def _absorb_one(core: RoundCore, m: object) -> RoundCore:
    if not isinstance(m, Message) or not isinstance(m.payload, bytes):
        return _reject(core, getattr(m, "sender", None), None, "malformed")
    sender, p = m.sender, m.payload
    if not isinstance(sender, int) or isinstance(sender, bool) or sender not in core.parties:
        return _reject(core, sender, None, "unknown-sender")
    if len(p) < HEADER_LEN or p[:4] != MAGIC:
        return _reject(core, sender, None, "malformed")
    if p[4] != core.protocol:
        return _reject(core, sender, None, "wrong-protocol")
    slot = core.slots.get(p[5])
    if slot is None:
        return _reject(core, sender, p[5], "malformed")
    if p[6:38] != core.session_id:
        return _reject(core, sender, slot.code, "wrong-session")
    if (m.recipient is None) != slot.broadcast or (m.recipient is not None and m.recipient != core.me):
        return _reject(core, sender, slot.code, "wrong-recipient")
    body = p[38:]
    key = (slot.code, sender)
    prev = core.store.get(key)
    if sender == core.me:
        # our own broadcast delivered back to us is a replay; anything else claims our identity
        return core if prev == body else _reject(core, sender, slot.code, "impersonation")
    if prev is not None:
        return core if prev == body else _reject(core, sender, slot.code, "conflicting")
    return replace(core, store={**core.store, key: body})


def absorb(core: RoundCore, inbox: Iterable[object]) -> RoundCore:
    for m in inbox:
        core = _absorb_one(core, m)
    return core


def expected(core: RoundCore, slot: int) -> tuple[int, ...]:
    """The senders a slot waits for: everyone for a broadcast (our own copy is filed when we send it),
    every other party for a point-to-point slot."""
    if core.slots[slot].broadcast:
        return core.parties
    return tuple(p for p in core.parties if p != core.me)


def missing(core: RoundCore, slots: Iterable[int]) -> tuple[int, ...]:
    """Parties whose message for any of ``slots`` has not arrived, in index order."""
    out = {p for s in slots for p in expected(core, s) if (s, p) not in core.store}
    return tuple(sorted(out))


def body(core: RoundCore, slot: int, sender: int) -> bytes:
    return core.store[(slot, sender)]


def send(core: RoundCore, slot: int, payloads: Mapping[int | None, bytes]) -> tuple[RoundCore, list[Message]]:
    """Emit ``slot`` bodies: key ``None`` is the broadcast, an index a point-to-point message. A broadcast
    body is filed under our own index too (the echo round and the output need it)."""
    msgs = [Message(core.me, rcpt, encode(core, slot, b)) for rcpt, b in payloads.items()]
    store = dict(core.store)
    if None in payloads:
        store[(slot, core.me)] = payloads[None]
    return replace(core, store=store, sent=(*core.sent, *msgs)), msgs


# ---------------------------------------------------------------------------------------------
# the echo (reliability) round


def echo_hash(core: RoundCore, slot: int, tag: str, context: bytes = b"") -> bytes:
    """``H(Encode[echo](sid, V_0, ..., V_{n-1}))`` over the broadcast bodies of ``slot`` in party order,
    with the party set and ``context`` (session parameters every party must agree on, e.g. presigning's
    derivation shift and child key) bound in too."""
    t = Transcript(f"{tag}/echo", core.session_id, 0)
    t.append_ints("parties", list(core.parties))
    t.append_bytes("context", context)
    for p in core.parties:
        t.append_bytes(f"V[{p}]", body(core, slot, p))
    return hash_out(t)


def check_echo(core: RoundCore, slot: int, echo_slot: int, tag: str, context: bytes = b"") -> None:
    """Every party's echo must equal ours; raises naming every party whose echo differs (that party lied
    about what it received, a round-1 sender equivocated, or the parties disagree on the session's
    parameters: the echo cannot tell which)."""
    mine = echo_hash(core, slot, tag, context)
    check_each(
        [p for p in core.parties if p != core.me],
        lambda p: _require(body(core, echo_slot, p) == mine, p, f"{tag}: echo of round-1 broadcasts differs"),
    )


# ---------------------------------------------------------------------------------------------
# helpers for handlers


class Blames(Exception):
    """Several parties failed checks in the same round (raised by :func:`check_each`)."""

    def __init__(self, errors: Sequence[InvalidContributionError]) -> None:
        self.errors = tuple(errors)
        super().__init__("; ".join(str(e) for e in errors))


def check_each(parties: Iterable[int], check: Callable[[int], None]) -> None:
    """Run ``check(j)`` for every party; collect every :class:`InvalidContributionError` and raise them
    together, so that each honest party names every culprit, not only the first."""
    errs: list[InvalidContributionError] = []
    for j in parties:
        try:
            check(j)
        except InvalidContributionError as e:
            errs.append(e)
    if errs:
        raise Blames(errs)


def _require(cond: bool, party: int, check: str) -> None:
    if not cond:
        raise InvalidContributionError(party, check)


require = _require


def hash_out(t: Transcript) -> bytes:
    """A 32-byte hash of everything appended to ``t`` (the transcript's encoding is injective)."""
    return t.challenge_int("hash", 1 << 256).to_bytes(32, "big")


class Reader:
    """Strict parsing of one message body; every failure is blamed on ``party`` with check ``what``."""

    def __init__(self, data: bytes, party: int, what: str) -> None:
        self.data, self.pos, self.party, self.what = data, 0, party, what

    def fail(self, detail: str) -> InvalidContributionError:
        return InvalidContributionError(self.party, f"{self.what}: {detail}")

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail("message too short")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def take_var(self) -> bytes:
        """A 4-byte length prefix, then that many bytes."""
        n = int.from_bytes(self.take(4), "big")
        return self.take(n)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise self.fail("trailing bytes")


def var(b: bytes) -> bytes:
    return len(b).to_bytes(4, "big") + b


class SecretScalar:
    """A secret scalar held in a mutable buffer that :meth:`zeroize` overwrites; never in ``repr``."""

    __slots__ = ("_buf",)

    def __init__(self, x: int) -> None:
        self._buf = bytearray(int(x).to_bytes(32, "big"))

    def value(self) -> int:
        if not any(self._buf):
            raise BadInputError("secret was zeroized")
        return int.from_bytes(self._buf, "big")

    def zeroize(self) -> None:
        self._buf[:] = bytes(32)

    def is_zeroized(self) -> bool:
        return not any(self._buf)

    def __repr__(self) -> str:
        return "SecretScalar(<redacted>)"

    def __eq__(self, other: object) -> bool:
        return other is self

    def __hash__(self) -> int:
        return id(self)


# ---------------------------------------------------------------------------------------------
# the driver


class Run(Protocol):
    """What :func:`drive` needs of a protocol state."""

    @property
    def core(self) -> RoundCore: ...

    @property
    def phase(self) -> str: ...


S = TypeVar("S", bound=Run)
Handler = Callable[[S], tuple[S, list[Message]]]


@dataclass(frozen=True)
class Step(Generic[S]):
    """In phase ``phase``, once ``slots`` are complete, ``handler`` runs (and sets the next phase)."""

    slots: tuple[int, ...]
    handler: Handler[S]


def drive(
    state: S,
    inbox: Iterable[object],
    steps: Mapping[str, Step[S]],
    with_core: Callable[[S, RoundCore], S],
    fail: Callable[[S, Sequence[InvalidContributionError], Exception | None], S],
) -> tuple[S, list[Message]]:
    """File ``inbox``, then run every step whose messages are complete (several in a row if they are).
    A handler's :class:`Blames` / ``InvalidContributionError`` ends the run with those parties blamed;
    any other :class:`~tss.cggmp24.errors.CggmpError` (an unattributable abort) ends it unblamed."""
    state = with_core(state, absorb(state.core, inbox))
    out: list[Message] = []
    while (step := steps.get(state.phase)) is not None and not missing(state.core, step.slots):
        try:
            state, msgs = step.handler(state)
        except Blames as b:
            return fail(state, b.errors, None), out
        except InvalidContributionError as e:
            return fail(state, (e,), None), out
        except CggmpError as e:
            return fail(state, (), e), out
        out.extend(msgs)
    return state, out


def waiting_for(state: Run, steps: Mapping[str, Step[S]]) -> tuple[int, ...]:
    """The parties whose messages the current round still needs (empty when the run has ended)."""
    step = steps.get(state.phase)
    return missing(state.core, step.slots) if step is not None else ()


def retransmit(state: Run) -> list[Message]:
    """Everything this party has sent so far (receivers ignore what they already have)."""
    return list(state.core.sent)
