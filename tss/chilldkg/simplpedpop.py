"""SimplPedPop: Pedersen's DKG with proofs of possession, the innermost layer of ChillDKG.

Theory of operation. Each participant ``i`` deals a Feldman VSS of a fresh secret (its polynomial comes
from a seed) and sends the coordinator its commitment plus a *proof of possession* (pop): a BIP-340
signature with the tag prefix ``"BIP DKG/pop message"`` by the committed secret ``a_{i,0}`` over its
own index, which rules out rogue-key attacks. Partial secret shares travel over secure channels (in
ChillDKG: encrypted by EncPedPop). The coordinator forwards every commitment to a secret, every pop,
and only the *sums* of the other coefficients' commitments (saves bandwidth). Each participant checks
its own commitment came back unchanged, checks all other pops, adds its partial shares and checks the
sum against the summed commitment. The output is tweaked with the unspendable-Taproot tweak
(:meth:`VSSCommitment.invalid_taproot_commit`). The equality input ``t || sum_coms`` must be checked by
an equality protocol (CertEq) one layer up.

If the share check fails, the participant cannot tell who cheated; the coordinator then sends each
participant the partial public shares of every dealer (``coordinator_investigate``), and the
participant finds the dealer whose partial share does not match (``participant_investigate``).

Functions here take parsed messages (the wrapping layers parse bytes once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, NoReturn

from tss.secp256k1 import (
    N,
    Point,
    cbytes,
    cbytes_ext,
    point_add,
    point_eq,
    point_mul_base,
    point_neg,
    point_sum,
)

from .certeq import schnorr_sign, schnorr_verify_point
from .errors import (
    FaultyCoordinatorError,
    FaultyParticipantOrCoordinatorError,
    SecshareSumError,
    UnknownFaultyParticipantOrCoordinatorError,
)
from .util import BIP_TAG, parse_points_ext, repr_hiding, scalar_bytes
from .vss import VSSCommitment, vss_commit, vss_generate, vss_secshares

POP_MSG_TAG = BIP_TAG + "pop message"


def pop_msg(participant_id: int) -> bytes:
    return participant_id.to_bytes(4, "big")


def pop_prove(seckey: bytes, participant_id: int, aux_rand: bytes) -> bytes:
    return schnorr_sign(pop_msg(participant_id), seckey, aux_rand, tag_prefix=POP_MSG_TAG)


def pop_verify(pop: bytes, com_to_secret: Point, participant_id: int) -> bool:
    return schnorr_verify_point(pop_msg(participant_id), com_to_secret, pop, POP_MSG_TAG)


# ---------------------------------------------------------------------------------------------
# messages


class ParticipantMsg(NamedTuple):
    """``com`` (33*t bytes) || ``pop`` (64 bytes)."""

    com: VSSCommitment
    pop: bytes

    @staticmethod
    def len_bytes(t: int) -> int:
        return 33 * t + 64

    @staticmethod
    def from_bytes(b: bytes, t: int) -> ParticipantMsg:
        if len(b) != ParticipantMsg.len_bytes(t):
            raise ValueError("SimplPedPop participant message has the wrong length")
        return ParticipantMsg(VSSCommitment(parse_points_ext(b, t)), b[33 * t :])

    def to_bytes(self) -> bytes:
        return self.com.to_bytes() + self.pop


class CoordinatorMsg(NamedTuple):
    """``coms_to_secrets`` (33*n) || ``sum_coms_to_nonconst_terms`` (33*(t-1)) || ``pops`` (64*n)."""

    coms_to_secrets: list[Point]
    sum_coms_to_nonconst_terms: list[Point]
    pops: list[bytes]

    @staticmethod
    def len_bytes(t: int, n: int) -> int:
        return 97 * n + 33 * (t - 1)

    @staticmethod
    def from_bytes(b: bytes, t: int, n: int) -> CoordinatorMsg:
        if len(b) != CoordinatorMsg.len_bytes(t, n):
            raise ValueError("SimplPedPop coordinator message has the wrong length")
        points = parse_points_ext(b, n + t - 1)
        off = 33 * (n + t - 1)
        pops = [b[off + 64 * i : off + 64 * i + 64] for i in range(n)]
        return CoordinatorMsg(points[:n], points[n:], pops)

    def to_bytes(self) -> bytes:
        return (
            b"".join(cbytes_ext(p) for p in self.coms_to_secrets)
            + b"".join(cbytes_ext(p) for p in self.sum_coms_to_nonconst_terms)
            + b"".join(self.pops)
        )


class CoordinatorInvestigationMsg(NamedTuple):
    """``partial_pubshares`` (33*n): dealer j's public share for the receiving participant."""

    partial_pubshares: list[Point]

    @staticmethod
    def len_bytes(n: int) -> int:
        return 33 * n

    @staticmethod
    def from_bytes(b: bytes, n: int) -> CoordinatorInvestigationMsg:
        if len(b) != CoordinatorInvestigationMsg.len_bytes(n):
            raise ValueError("SimplPedPop investigation message has the wrong length")
        return CoordinatorInvestigationMsg(parse_points_ext(b, n))

    def to_bytes(self) -> bytes:
        return b"".join(cbytes_ext(p) for p in self.partial_pubshares)


class DKGOutput(NamedTuple):
    secshare: bytes | None
    thresh_pk: bytes
    pubshares: list[bytes]

    def __repr__(self) -> str:
        return repr_hiding(self, ("secshare",))


class ParticipantState(NamedTuple):
    t: int
    n: int
    participant_id: int
    com_to_secret: Point


class ParticipantInvestigationData(NamedTuple):
    n: int
    participant_id: int
    secshare: int
    pubshare: Point

    def __repr__(self) -> str:
        return repr_hiding(self, ("secshare",))


def assemble_sum_coms(
    coms_to_secrets: Sequence[Point], sum_coms_to_nonconst_terms: list[Point]
) -> VSSCommitment:
    return VSSCommitment([point_sum(coms_to_secrets), *sum_coms_to_nonconst_terms])


# ---------------------------------------------------------------------------------------------
# participant


def participant_step1(
    seed: bytes, t: int, n: int, participant_id: int, aux_rand: bytes
) -> tuple[ParticipantState, ParticipantMsg, list[int]]:
    """Deal: (state, message to the coordinator, partial shares ``f(1..n)`` for participants 0..n-1)."""
    if not 1 <= t <= n:
        raise ValueError("need 1 <= t <= n")
    if not 0 <= participant_id < n:
        raise ValueError("participant id out of range")
    if len(seed) != 32 or len(aux_rand) != 32:
        raise ValueError("seed and aux_rand must be 32 bytes")
    coeffs = vss_generate(seed, t)
    partial_secshares = vss_secshares(coeffs, n)
    pop = pop_prove(scalar_bytes(coeffs[0]), participant_id, aux_rand)
    com = vss_commit(coeffs)
    state = ParticipantState(t, n, participant_id, com.commitment_to_secret())
    return state, ParticipantMsg(com, pop), partial_secshares


def participant_step2_prepare_secshare(partial_secshares: Sequence[int]) -> int:
    return sum(partial_secshares) % N


def participant_step2(
    state: ParticipantState, cmsg: CoordinatorMsg, secshare: int
) -> tuple[DKGOutput, bytes]:
    """Check the coordinator's message and our share; (tweaked DKG output, equality input)."""
    t, n, me, com_to_secret = state
    coms_to_secrets, sum_coms_to_nonconst_terms, pops = cmsg
    if not point_eq(coms_to_secrets[me], com_to_secret):
        raise FaultyCoordinatorError(
            "Coordinator sent unexpected first group element for local participant id"
        )
    for i in range(n):
        if i == me:
            continue
        if coms_to_secrets[i] is None:
            raise FaultyParticipantOrCoordinatorError(i, "Participant sent invalid commitment")
        if not pop_verify(pops[i], coms_to_secrets[i], i):
            raise FaultyParticipantOrCoordinatorError(i, "Participant sent invalid proof-of-knowledge")

    sum_coms = assemble_sum_coms(coms_to_secrets, sum_coms_to_nonconst_terms)
    try:
        sum_coms_tweaked, tweak, pubtweak = sum_coms.invalid_taproot_commit()
    except ValueError as e:  # sum of pop-verified commitments is infinity: negligible
        raise FaultyCoordinatorError("Sum of commitments to secrets is the point at infinity") from e
    # Checking tweaked share against tweaked public share is equivalent and saves an addition.
    pubshares = sum_coms_tweaked.pubshares(n)
    secshare_tweaked = (secshare + tweak) % N
    if not point_eq(point_mul_base(secshare_tweaked), pubshares[me]):
        pubshare = point_add(pubshares[me], point_neg(pubtweak))
        raise UnknownFaultyParticipantOrCoordinatorError(
            ParticipantInvestigationData(n, me, secshare, pubshare),
            "Received invalid secshare; consider using participant_investigate() to determine a faulty party",
        )
    thresh_pk = sum_coms_tweaked.commitment_to_secret()
    output = DKGOutput(scalar_bytes(secshare_tweaked), cbytes(thresh_pk), [cbytes(p) for p in pubshares])
    eq_input = t.to_bytes(4, "big") + sum_coms.to_bytes()
    return output, eq_input


def participant_investigate(
    inv_data: ParticipantInvestigationData,
    cinv: CoordinatorInvestigationMsg,
    partial_secshares: Sequence[int],
) -> NoReturn:
    """Name the dealer whose partial share does not match its partial public share."""
    n, me, secshare, pubshare = inv_data
    if len(partial_secshares) != n or len(cinv.partial_pubshares) != n:
        raise ValueError("need n partial secret shares")
    partial_pubshares = cinv.partial_pubshares
    if not point_eq(point_sum(partial_pubshares), pubshare):
        raise FaultyCoordinatorError("Sum of partial pubshares not equal to pubshare")
    if sum(partial_secshares) % N != secshare:
        raise SecshareSumError("Sum of partial secshares not equal to secshare")
    for i in range(n):
        if not point_eq(point_mul_base(partial_secshares[i]), partial_pubshares[i]):
            if i != me:
                raise FaultyParticipantOrCoordinatorError(i, "Participant sent invalid partial secshare")
            raise FaultyCoordinatorError("Coordinator fiddled with the share from me to myself")
    raise ValueError("participant_investigate() called, but the investigation data is consistent")


# ---------------------------------------------------------------------------------------------
# coordinator


def coordinator_step(
    pmsgs: Sequence[ParticipantMsg], t: int, n: int
) -> tuple[CoordinatorMsg, DKGOutput, bytes]:
    """Aggregate the participants' messages: (message to all, DKG output without secret, equality input).

    ``ValueError`` if the summed commitment to the secret is infinity (only possible when some pop is
    invalid; the caller then finds the culprit with :func:`find_invalid_pop`)."""
    if len(pmsgs) != n:
        raise ValueError("need n participant messages")
    coms_to_secrets = [m.com.commitment_to_secret() for m in pmsgs]
    sum_coms_to_nonconst_terms = [point_sum([m.com.ges[j] for m in pmsgs]) for j in range(1, t)]
    pops = [m.pop for m in pmsgs]
    cmsg = CoordinatorMsg(coms_to_secrets, sum_coms_to_nonconst_terms, pops)
    sum_coms = assemble_sum_coms(coms_to_secrets, sum_coms_to_nonconst_terms)
    sum_coms_tweaked, _, _ = sum_coms.invalid_taproot_commit()
    thresh_pk = sum_coms_tweaked.commitment_to_secret()
    output = DKGOutput(None, cbytes(thresh_pk), [cbytes(p) for p in sum_coms_tweaked.pubshares(n)])
    return cmsg, output, t.to_bytes(4, "big") + sum_coms.to_bytes()


def find_invalid_pop(pmsgs: Sequence[ParticipantMsg]) -> int | None:
    """Index of the first participant whose commitment to its secret is infinity or whose pop fails."""
    for i, m in enumerate(pmsgs):
        c = m.com.commitment_to_secret()
        if c is None or not pop_verify(m.pop, c, i):
            return i
    return None


def coordinator_investigate(pmsgs: Sequence[ParticipantMsg]) -> list[CoordinatorInvestigationMsg]:
    """For each participant i, every dealer's public share for i."""
    n = len(pmsgs)
    per_dealer = [m.com.pubshares(n) for m in pmsgs]
    return [CoordinatorInvestigationMsg([per_dealer[j][i] for j in range(n)]) for i in range(n)]
