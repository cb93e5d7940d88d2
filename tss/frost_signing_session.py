"""One participant's BIP-445 signing session as an explicit round state machine.

Theory of operation
-------------------
Every signer of the signer set runs its own :class:`SigningState` and exchanges broadcast messages with
the others (the coordinator-less variant of BIP-445: every signer sees every contribution, so every
honest signer can aggregate and assign blame on its own):

``new_session``
    checks the public parameters (:class:`SessionParams`: session id, signers context, message, tweaks)
    and the signer's secret share, and draws a fresh nonce with ``nonce_gen`` unless a precommitted one
    from a nonce pool is passed in.
``round_1(state, inbox) -> (state, outbox)``
    broadcasts the signer's pubnonce (unless it is precommitted, i.e. already in everyone's
    ``SessionParams.precommitted_pubnonces``); calling it again re-sends it, even after signing.
``round_2(state, inbox) -> (state, outbox)``
    once the pubnonces of the whole signer set are in, aggregates them, signs (``sign`` consumes the
    secret nonce) and broadcasts the partial signature.
``finalize(state, inbox) -> (state, outbox)``
    once every partial signature is in, checks each with ``partial_sig_verify`` and either aggregates the
    BIP-340 signature (phase ``DONE``) or blames every signer whose contribution failed (phase
    ``FAILED``).

Every round first absorbs its inbox, and any message may arrive in any round: early psigs are kept until
``finalize``. A round that still lacks contributions returns the state unchanged except for what it
absorbed; :func:`missing` names the signers being waited for, so a caller with a timeout knows whom to
report. Calling a round again re-emits the same outbox (retransmission) and never signs twice.

Message handling: an identical replay of a message already taken is ignored (idempotent). A message that
cannot be decoded, belongs to another session, is addressed to someone else, comes from outside the
signer set, or contradicts a contribution already taken (equivocation; the first one stands) is returned
as a :class:`Rejection` record in ``state.rejections`` and changes nothing else. A decodable but invalid
contribution (a pubnonce that is not two points, a partial signature that fails ``partial_sig_verify``)
is an *identifiable abort*: it lands in ``state.blame`` as a :class:`Blame` naming the sender and the kind
of contribution, and the session fails. Blame is only meaningful if messages are authenticated (the
services sign every envelope); this module is pure and trusts the ``sender`` field it is given.

Wire format of a payload: ``kind (1 byte) || session_id (32 bytes) || body`` with kind ``0x01`` =
pubnonce (66-byte body), ``0x02`` = partial signature (32-byte body).

Nothing here does I/O; states are immutable dataclasses except for the secret nonce, a ``bytearray``
that ``sign`` erases, so that even an old copy of a state can never sign a second time (it raises
``ValueError``). Secrets are excluded from ``repr``.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tss.frost import (
    InvalidContributionError,
    SessionContext,
    SignersContext,
    get_xonly_pk,
    nonce_agg,
    nonce_gen,
    partial_sig_agg,
    partial_sig_verify,
    sign,
    thresh_pubkey_and_tweak,
    validate_signers_ctx,
)
from tss.secp256k1 import cbytes, point_mul_base, scalar_from_bytes_nonzero_checked, schnorr_verify

KIND_PUBNONCE = 0x01
KIND_PSIG = 0x02
_BODY_LEN = {KIND_PUBNONCE: 66, KIND_PSIG: 32}
_KIND_NAME: dict[int, Literal["pubnonce", "psig"]] = {KIND_PUBNONCE: "pubnonce", KIND_PSIG: "psig"}

RejectReason = Literal[
    "malformed", "wrong-session", "wrong-recipient", "unknown-sender", "conflicting", "impersonation"
]


@dataclass(frozen=True)
class Message:
    """A protocol message: ``recipient=None`` is a broadcast."""

    sender: int
    recipient: int | None
    payload: bytes


@dataclass(frozen=True)
class Rejection:
    """A message that was not taken (see the module docstring for the reasons)."""

    sender: object
    reason: RejectReason
    message: object


@dataclass(frozen=True)
class Blame:
    """Identifiable abort: ``signer_id`` sent an invalid ``contrib``."""

    signer_id: int
    contrib: Literal["pubnonce", "psig"]


class Phase(enum.Enum):
    NONCES = "nonces"  # collecting pubnonces (round 1 / round 2)
    PSIGS = "psigs"  # signed; collecting partial signatures (finalize)
    DONE = "done"  # signature available
    FAILED = "failed"  # aborted; see blame


@dataclass(frozen=True)
class SessionParams:
    """The public inputs every signer of the session agrees on before it starts."""

    session_id: bytes  # 32 bytes, unique per session
    signers_ctx: SignersContext
    msg: bytes
    tweaks: tuple[bytes, ...] = ()
    is_xonly: tuple[bool, ...] = ()
    precommitted_pubnonces: Mapping[int, bytes] = field(default_factory=dict)  # from a nonce pool


@dataclass(frozen=True)
class SigningState:
    params: SessionParams
    my_id: int
    secshare: bytes = field(repr=False)
    secnonce: bytearray = field(repr=False)
    my_pubnonce: bytes
    phase: Phase = Phase.NONCES
    pubnonces: Mapping[int, bytes] = field(default_factory=dict)
    psigs: Mapping[int, bytes] = field(default_factory=dict)
    rejections: tuple[Rejection, ...] = ()
    blame: tuple[Blame, ...] = ()
    signature: bytes | None = None

    @property
    def ids(self) -> Sequence[int]:
        return self.params.signers_ctx.ids


# ---------------------------------------------------------------------------------------------
# encoding


def encode_payload(kind: int, session_id: bytes, body: bytes) -> bytes:
    return bytes([kind]) + session_id + body


def _broadcast(state: SigningState, kind: int, body: bytes) -> list[Message]:
    return [Message(state.my_id, None, encode_payload(kind, state.params.session_id, body))]


# ---------------------------------------------------------------------------------------------
# session start


def new_session(
    params: SessionParams,
    my_id: int,
    secshare: bytes,
    nonce: tuple[bytearray, bytes] | None = None,
) -> SigningState:
    """Start a session for participant ``my_id``; ``nonce`` is a precommitted ``(secnonce, pubnonce)``
    from a pool (it must then also be in ``params.precommitted_pubnonces``), else a fresh one is drawn.
    ``ValueError`` on any inconsistent input."""
    if not isinstance(params, SessionParams):
        raise ValueError("params must be SessionParams")
    if not isinstance(params.session_id, bytes) or len(params.session_id) != 32:
        raise ValueError("session_id must be 32 bytes")
    validate_signers_ctx(params.signers_ctx)
    _, _, ids, pubshares, thresh_pk = params.signers_ctx
    if not isinstance(params.msg, bytes):
        raise ValueError("msg must be bytes")
    tweak_ctx = thresh_pubkey_and_tweak(thresh_pk, list(params.tweaks), list(params.is_xonly))
    if not isinstance(my_id, int) or isinstance(my_id, bool) or my_id not in ids:
        raise ValueError("my_id is not in the signer set")
    if not isinstance(secshare, bytes) or len(secshare) != 32:
        raise ValueError("secshare must be 32 bytes")
    d = scalar_from_bytes_nonzero_checked(secshare)
    my_pubshare = pubshares[list(ids).index(my_id)]
    if cbytes(point_mul_base(d)) != my_pubshare:
        raise ValueError("secshare does not match my pubshare")
    pre = dict(params.precommitted_pubnonces)
    for pid, pn in pre.items():
        if pid not in ids or not isinstance(pn, bytes):
            raise ValueError("precommitted pubnonces must be bytes of signers in the set")
    if nonce is None:
        if my_id in pre:
            raise ValueError("my pubnonce is precommitted: pass the matching pool nonce")
        tweaked_pk = get_xonly_pk(tweak_ctx)
        secnonce, pubnonce = nonce_gen(secshare, my_pubshare, tweaked_pk, params.msg, params.session_id)
    else:
        secnonce, pubnonce = nonce
        if not isinstance(secnonce, bytearray) or len(secnonce) != 64 or not any(secnonce):
            raise ValueError("the pool secnonce must be an unused 64-byte bytearray")
        if pre.get(my_id) != pubnonce:
            raise ValueError("a pool nonce must be listed in params.precommitted_pubnonces under my_id")
    state = SigningState(params, my_id, secshare, secnonce, pubnonce, pubnonces={my_id: pubnonce})
    for pid, pn in sorted(pre.items()):
        state = _take(state, pid, KIND_PUBNONCE, pn)
    return state


# ---------------------------------------------------------------------------------------------
# inbox processing


def _reject(state: SigningState, sender: object, reason: RejectReason, msg: object) -> SigningState:
    return dataclasses.replace(state, rejections=(*state.rejections, Rejection(sender, reason, msg)))


def _fail(state: SigningState, blame: Iterable[Blame]) -> SigningState:
    return dataclasses.replace(state, phase=Phase.FAILED, blame=(*state.blame, *blame))


def _take(state: SigningState, sender: int, kind: int, body: bytes) -> SigningState:
    """Store one decoded contribution (first one per sender and kind stands)."""
    slots = state.pubnonces if kind == KIND_PUBNONCE else state.psigs
    if sender in slots:
        if slots[sender] == body:
            return state  # replay: idempotent
        reason: RejectReason = "impersonation" if sender == state.my_id else "conflicting"
        return _reject(state, sender, reason, body)
    if sender == state.my_id:  # our own contributions are stored when we make them
        return _reject(state, sender, "impersonation", body)
    if kind == KIND_PUBNONCE:
        try:
            nonce_agg([body])
        except InvalidContributionError:
            return _fail(dataclasses.replace(state, pubnonces={**state.pubnonces, sender: body}),
                         [Blame(sender, "pubnonce")])
        return dataclasses.replace(state, pubnonces={**state.pubnonces, sender: body})
    return dataclasses.replace(state, psigs={**state.psigs, sender: body})


def _absorb(state: SigningState, inbox: Iterable[object]) -> SigningState:
    for m in inbox:
        if not isinstance(m, Message) or not isinstance(m.payload, bytes):
            state = _reject(state, getattr(m, "sender", None), "malformed", m)
            continue
        if m.recipient is not None and m.recipient != state.my_id:
            state = _reject(state, m.sender, "wrong-recipient", m)
            continue
        if not isinstance(m.sender, int) or isinstance(m.sender, bool) or m.sender not in state.ids:
            state = _reject(state, m.sender, "unknown-sender", m)
            continue
        p = m.payload
        if len(p) < 33 or p[0] not in _BODY_LEN:
            state = _reject(state, m.sender, "malformed", m)
            continue
        if p[1:33] != state.params.session_id:
            state = _reject(state, m.sender, "wrong-session", m)
            continue
        # A body of the wrong length is still the sender's contribution: it is blamed, not just dropped.
        state = _take(state, m.sender, p[0], p[33:])
    return state


def missing(state: SigningState) -> tuple[int, ...]:
    """The signers whose contribution for the current phase has not arrived (empty when done/failed)."""
    if state.phase is Phase.NONCES:
        return tuple(i for i in state.ids if i not in state.pubnonces)
    if state.phase is Phase.PSIGS:
        return tuple(i for i in state.ids if i not in state.psigs)
    return ()


def _session_ctx(state: SigningState) -> tuple[list[bytes], SessionContext]:
    pubnonces = [state.pubnonces[i] for i in state.ids]
    p = state.params
    aggnonce = nonce_agg(pubnonces)
    return pubnonces, SessionContext(aggnonce, p.signers_ctx, list(p.tweaks), list(p.is_xonly), p.msg)


# ---------------------------------------------------------------------------------------------
# rounds


def round_1(state: SigningState, inbox: Iterable[object] = ()) -> tuple[SigningState, list[Message]]:
    """Broadcast our pubnonce (re-sent on every call, also after signing, so a signer that missed it can
    catch up; nothing if it is precommitted)."""
    state = _absorb(state, inbox)
    if state.my_id in state.params.precommitted_pubnonces:
        return state, []
    return state, _broadcast(state, KIND_PUBNONCE, state.my_pubnonce)


def round_2(state: SigningState, inbox: Iterable[object] = ()) -> tuple[SigningState, list[Message]]:
    """With every pubnonce of the signer set in: sign and broadcast the partial signature."""
    state = _absorb(state, inbox)
    if state.phase is Phase.PSIGS:
        return state, _broadcast(state, KIND_PSIG, state.psigs[state.my_id])  # retransmission
    if state.phase is not Phase.NONCES or missing(state):
        return state, []
    _, session_ctx = _session_ctx(state)
    psig = sign(state.secnonce, state.secshare, state.my_id, session_ctx)  # erases state.secnonce
    state = dataclasses.replace(state, phase=Phase.PSIGS, psigs={**state.psigs, state.my_id: psig})
    return state, _broadcast(state, KIND_PSIG, psig)


def finalize(state: SigningState, inbox: Iterable[object] = ()) -> tuple[SigningState, list[Message]]:
    """With every partial signature in: verify each (blaming the bad ones) and aggregate."""
    state = _absorb(state, inbox)
    if state.phase is not Phase.PSIGS or missing(state):
        return state, []
    p = state.params
    pubnonces, session_ctx = _session_ctx(state)
    bad = [
        Blame(pid, "psig")
        for idx, pid in enumerate(state.ids)
        if not partial_sig_verify(
            state.psigs[pid], pubnonces, p.signers_ctx, list(p.tweaks), list(p.is_xonly), p.msg, idx
        )
    ]
    if bad:
        return _fail(state, bad), []
    sig = partial_sig_agg([state.psigs[i] for i in state.ids], session_ctx)
    tweaked = get_xonly_pk(thresh_pubkey_and_tweak(p.signers_ctx.thresh_pk, list(p.tweaks), list(p.is_xonly)))
    if not schnorr_verify(p.msg, tweaked, sig):  # cannot happen when every psig verified
        return _fail(state, []), []
    return dataclasses.replace(state, phase=Phase.DONE, signature=sig), []
