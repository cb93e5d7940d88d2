"""CGGMP24 signing (the spec's "Signing"): one round from a presignature to an ECDSA signature.

A :class:`Presignature` is the output of presigning (:mod:`tss.cggmp24.presigning`) for one party of one
exact signer set: the secret ``(k~_i, chi~_i)`` and the public ``Gamma`` and ``(Delta~_j, S~_j)`` of every
signer. It is **single use**: :func:`issue_partial_signature` zeroes its secret buffer before computing
anything, so a second call (on the same object or on any copy of a state holding it) raises
``BadInputError``. Using a presignature twice, or on two messages, reveals the key.

BIP-32 (non-hardened) derivation is fixed *before* presigning (Groth-Shoup, ePrint 2021/1330): presigning
takes the additive ``shift`` and the child public key and folds the shift into the first signer's share
(the spec's threshold presigning, ``x_0 += shift``); the presignature carries the child key, and nothing
at signing time can change it.

``sighash`` must be the 32-byte digest this node computed itself from the transaction it approved (BIP-143
/ legacy sighash), never a hash handed in by a peer or a coordinator: a presignature's ``R`` is known
before the message is chosen, and signing an attacker-chosen hash with it is the raw-hash attack of the
same paper.

Signing round for signer ``i``::

    sigma_i = k~_i * m + r * chi~_i  (mod q),  r = x(Gamma) mod q,  m = int(sighash)
    -> broadcast sighash || sigma_i (signers that disagree on the sighash abort unattributed)
    with every sigma_j: check sigma_j * Gamma == m * Delta~_j + r * S~_j for each j (blame each failure),
    s = sum sigma_j, low-S normalised; verify (r, s) under the child public key.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Final

from coincurve._libsecp256k1 import ffi, lib
from coincurve.context import GLOBAL_CONTEXT

from tss.cggmp24 import rounds
from tss.cggmp24.errors import BadInputError, InvalidContributionError, UnattributableAbortError
from tss.cggmp24.rounds import (
    PROTOCOL_SIGNING,
    Message,
    Reader,
    RoundCore,
    Slot,
    Step,
    body,
    check_each,
    drive,
    new_core,
    require,
    send,
)
from tss.secp256k1 import N as Q
from tss.secp256k1 import cpoint, lincomb, point_eq, point_mul

SLOT_PARTIAL: Final = 1
SLOTS: Final = (Slot(SLOT_PARTIAL, "partial_signature", True),)


@dataclass(frozen=True)
class PresignatureCommitments:
    """The public part of a presignature, the same for every signer: ``Gamma`` (33 bytes), the signer set
    (keygen indices, ascending), ``Delta~_j`` and ``S~_j`` per signer (aligned with ``signers``), the
    derivation ``shift`` bound in at presigning, the public key the signature verifies under (the child
    key when ``shift != 0``), and the presigning session id."""

    gamma: bytes
    signers: tuple[int, ...]
    deltas: tuple[bytes, ...]
    s_points: tuple[bytes, ...]
    shift: int
    public_key: bytes
    session_id: bytes

    def r(self) -> int:
        return int.from_bytes(self.gamma[1:], "big") % Q


class Presignature:
    """One signer's presignature; consumed by :func:`issue_partial_signature` (one partial, ever)."""

    __slots__ = ("_secret", "index", "public")

    def __init__(self, index: int, k_tilde: int, chi_tilde: int, public: PresignatureCommitments) -> None:
        if index not in public.signers:
            raise BadInputError("the presignature's party is not in its signer set")
        if not (0 < k_tilde < Q and 0 <= chi_tilde < Q):
            raise BadInputError("presignature secrets out of range")
        self.index = index
        self.public = public
        self._secret = bytearray(k_tilde.to_bytes(32, "big") + chi_tilde.to_bytes(32, "big"))

    def is_consumed(self) -> bool:
        return not any(self._secret[:32])

    def _take(self) -> tuple[int, int]:
        k = int.from_bytes(self._secret[:32], "big")
        chi = int.from_bytes(self._secret[32:], "big")
        self._secret[:] = bytes(64)  # consumed before anything else can fail
        if k == 0:
            raise BadInputError("presignature already used")
        return k, chi

    def __repr__(self) -> str:
        state = "consumed" if self.is_consumed() else "unused"
        return f"Presignature(index={self.index}, signers={self.public.signers}, {state})"

    def __copy__(self) -> Presignature:
        raise TypeError("a presignature cannot be copied")

    def __deepcopy__(self, memo: object) -> Presignature:
        raise TypeError("a presignature cannot be copied")

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a presignature cannot be pickled")


def _message_scalar(sighash: bytes) -> int:
    if not isinstance(sighash, bytes) or len(sighash) != 32:
        raise BadInputError("sighash must be the 32-byte digest computed by this node")
    return int.from_bytes(sighash, "big") % Q


def issue_partial_signature(presignature: Presignature, sighash: bytes) -> bytes:
    """``sigma_i = k~_i * m + r * chi~_i mod q`` (32 bytes). Consumes the presignature (also when the
    input is rejected after it was taken); a second call raises ``BadInputError``."""
    if not isinstance(presignature, Presignature):
        raise BadInputError("not a presignature")
    m = _message_scalar(sighash)
    k, chi = presignature._take()
    r = presignature.public.r()
    return ((k * m + r * chi) % Q).to_bytes(32, "big")


@dataclass(frozen=True)
class Signature:
    """An ECDSA signature with low S."""

    r: int
    s: int

    def to_compact(self) -> bytes:
        return self.r.to_bytes(32, "big") + self.s.to_bytes(32, "big")


def ecdsa_verify(public_key: bytes, sighash: bytes, sig: Signature) -> bool:
    """libsecp256k1's ECDSA verification (it refuses high S)."""
    try:
        pk = cpoint(public_key)
    except ValueError:
        return False
    if not (0 < sig.r < Q and 0 < sig.s < Q) or len(sighash) != 32:
        return False
    ctx = GLOBAL_CONTEXT.ctx
    raw = ffi.new("secp256k1_ecdsa_signature *")
    if not lib.secp256k1_ecdsa_signature_parse_compact(ctx, raw, sig.to_compact()):
        return False
    return bool(lib.secp256k1_ecdsa_verify(ctx, raw, sighash, pk.public_key))


def verify_partial_signature(pub: PresignatureCommitments, j: int, sigma_bytes: bytes, m: int) -> int:
    """Check signer ``j``'s ``sigma_j * Gamma == m * Delta~_j + r * S~_j``; returns ``sigma_j``."""
    rd = Reader(sigma_bytes, j, "signing: partial signature")
    sigma = int.from_bytes(rd.take(32), "big")
    rd.end()
    require(sigma < Q, j, "signing: partial signature out of range")
    pos = pub.signers.index(j)
    gamma = cpoint(pub.gamma)
    rhs = lincomb([(cpoint(pub.deltas[pos]), m), (cpoint(pub.s_points[pos]), pub.r())])
    require(point_eq(point_mul(gamma, sigma), rhs), j, "signing: sigma_j * Gamma != m * Delta_j + r * S_j")
    return sigma


def combine_partial_signatures(
    pub: PresignatureCommitments, partials: Mapping[int, bytes], sighash: bytes
) -> Signature:
    """Verify every signer's partial signature (raising :class:`~tss.cggmp24.rounds.Blames` naming every
    failing signer), then ``s = sum sigma_j`` with low S; the result is verified under
    ``pub.public_key`` (``UnattributableAbortError`` if it does not verify, which cannot happen when every
    partial verified)."""
    m = _message_scalar(sighash)
    if set(partials) != set(pub.signers):
        raise BadInputError("need exactly one partial signature per signer")
    sigmas: dict[int, int] = {}

    def check(j: int) -> None:
        sigmas[j] = verify_partial_signature(pub, j, partials[j], m)

    check_each(pub.signers, check)
    r = pub.r()
    s = sum(sigmas.values()) % Q
    if s > Q // 2:
        s = Q - s
    sig = Signature(r, s)
    if r == 0 or s == 0 or not ecdsa_verify(pub.public_key, sighash, sig):
        raise UnattributableAbortError("signing: combined signature does not verify")
    return sig


# ---------------------------------------------------------------------------------------------
# the signing round as a state machine


class Phase:
    PARTIALS = "partials"  # our partial signature sent; waiting for the others
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class SigningState:
    core: RoundCore
    commitments: PresignatureCommitments
    sighash: bytes
    phase: str = Phase.PARTIALS
    signature: Signature | None = None
    blame: tuple[InvalidContributionError, ...] = ()
    error: Exception | None = None


def signing_start(presignature: Presignature, sighash: bytes) -> tuple[SigningState, list[Message]]:
    """Issue our partial signature on ``sighash`` (consuming the presignature) and broadcast it. The
    session is the presigning session; the parties are the presignature's signer set."""
    pub = presignature.public
    core = new_core(PROTOCOL_SIGNING, pub.session_id, presignature.index, pub.signers, SLOTS)
    sigma = issue_partial_signature(presignature, sighash)
    core, msgs = send(core, SLOT_PARTIAL, {None: sighash + sigma})
    return SigningState(core, pub, sighash), msgs


def _on_partials(state: SigningState) -> tuple[SigningState, list[Message]]:
    """Every message body is ``sighash || sigma_j``. A signer that signed another sighash is not blamed
    (it may be honest and the one told a different transaction may be us): the run aborts unattributed."""
    partials: dict[int, bytes] = {}
    for j in state.core.parties:
        b = body(state.core, SLOT_PARTIAL, j)
        if len(b) >= 32 and b[:32] != state.sighash:
            raise UnattributableAbortError(f"signing: signer {j} signed another sighash")
        partials[j] = b[32:]
    sig = combine_partial_signatures(state.commitments, partials, state.sighash)
    return replace(state, phase=Phase.DONE, signature=sig), []


STEPS: Final[Mapping[str, Step[SigningState]]] = {Phase.PARTIALS: Step((SLOT_PARTIAL,), _on_partials)}


def _fail(
    state: SigningState, blame: Sequence[InvalidContributionError], error: Exception | None
) -> SigningState:
    return replace(state, phase=Phase.FAILED, blame=(*state.blame, *blame), error=error)


def signing_round(state: SigningState, inbox: Iterable[object] = ()) -> tuple[SigningState, list[Message]]:
    """Advance with ``inbox``; ``state.signature`` is set when ``phase == "done"``. Never raises on
    network input."""
    return drive(state, inbox, STEPS, lambda s, c: replace(s, core=c), _fail)


def waiting_for(state: SigningState) -> tuple[int, ...]:
    """The parties whose messages the current round still needs."""
    return rounds.waiting_for(state, STEPS)


retransmit = rounds.retransmit
