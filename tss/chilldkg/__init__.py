"""ChillDKG: the distributed key generation of the draft BIP "bip-frost-dkg", for BIP-445 FROST.

Theory of operation
-------------------
``n`` participants, each with a long-term *host key* pair (``hostpubkey_gen``), and an untrusted
coordinator run one session for common ``SessionParams(hostpubkeys, t)``; all ``n`` must take part.
Three layers, innermost first:

* **SimplPedPop** (:mod:`.simplpedpop`): every participant deals a Feldman VSS of a fresh secret and
  proves possession of it; the threshold secret is the sum of the dealt secrets, the threshold public key
  the sum of the commitments, plus the unspendable-Taproot tweak (:mod:`.vss`).
* **EncPedPop** (:mod:`.encpedpop`): the partial secret shares are encrypted to the recipients' host
  keys with an additively homomorphic ECDH pad, so the coordinator can sum them and relay one ciphertext
  per participant.
* **CertEq** (:mod:`.certeq`): every participant signs the *equality input* (``t``, summed VSS
  commitment, host keys, pubnonces, encrypted shares) with its host key; the coordinator's certificate
  of all ``n`` signatures proves to each participant that everybody saw the same session.

Message flow::

    participant_step1(hostseckey, params, random)   -> pmsg1   ----> coordinator_step1(pmsgs1, params)
    participant_step2(hostseckey, state1, cmsg1, aux) -> pmsg2 <---- cmsg1 (broadcast)
                                                              ----> coordinator_finalize(state, pmsgs2)
    participant_finalize(state2, cmsg2)             <---- cmsg2 (broadcast: the certificate)

The *recovery data* is the equality input followed by the certificate: with it, the host secret key
alone restores a participant's DKG output (``participant_recover``), and anybody (the coordinator, a
backup provider) can restore the public output (``coordinator_recover``). Recovery acknowledgments
(``participant_recovery_ack_sign`` / ``participant_recovery_acks_verify``) let everyone confirm that
every participant holds the recovery data before funds go to the key.

Blame: errors are the draft's types (:mod:`.errors`). ``FaultyParticipantError(i)`` is raised by the
coordinator; participants raise ``FaultyCoordinatorError``, ``FaultyParticipantOrCoordinatorError(i)``,
or ``UnknownFaultyParticipantOrCoordinatorError`` which ``participant_investigate`` (with the message
from ``coordinator_investigate``) turns into one of the first two.

Byte encodings are exactly the draft's and conform to its published test vectors. Scalars are Python
ints mod N (not constant-time); points are libsecp256k1 points via :mod:`tss.secp256k1`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, NewType, NoReturn

from tss.secp256k1 import N, cbytes, cpoint, point_eq, point_mul_base

from . import encpedpop, simplpedpop
from .certeq import (
    certeq_cert_len,
    certeq_coordinator_step,
    certeq_participant_step,
    certeq_verify,
    recovery_ack_sign,
    recovery_ack_verify,
)
from .errors import (
    DuplicateHostPubkeyError,
    FaultyCoordinatorError,
    FaultyParticipantError,
    FaultyParticipantOrCoordinatorError,
    HostSeckeyError,
    InvalidHostPubkeyError,
    InvalidRecoveryAckError,
    InvalidSignatureInCertificateError,
    MsgParseError,
    ProtocolError,
    RandomnessError,
    RecoveryDataError,
    SessionParamsError,
    ThresholdOrCountError,
    UnknownFaultyParticipantOrCoordinatorError,
)
from .util import parse_scalars, repr_hiding, scalar_bytes, tagged_hash_bip_dkg
from .vss import VSSCommitment

__all__ = [
    "CoordinatorInvestigationMsg",
    "CoordinatorMsg1",
    "CoordinatorMsg2",
    "CoordinatorState",
    "DKGOutput",
    "DuplicateHostPubkeyError",
    "FaultyCoordinatorError",
    "FaultyParticipantError",
    "FaultyParticipantOrCoordinatorError",
    "HostSeckeyError",
    "InvalidHostPubkeyError",
    "InvalidRecoveryAckError",
    "ParticipantInvestigationData",
    "ParticipantMsg1",
    "ParticipantMsg2",
    "ParticipantState1",
    "ParticipantState2",
    "ProtocolError",
    "RandomnessError",
    "RecoveryAckMsg",
    "RecoveryData",
    "RecoveryDataError",
    "SessionParams",
    "SessionParamsError",
    "ThresholdOrCountError",
    "UnknownFaultyParticipantOrCoordinatorError",
    "coordinator_finalize",
    "coordinator_investigate",
    "coordinator_recover",
    "coordinator_step1",
    "hostpubkey_gen",
    "params_hash",
    "participant_finalize",
    "participant_investigate",
    "participant_recover",
    "participant_recovery_ack_sign",
    "participant_recovery_acks_verify",
    "participant_step1",
    "participant_step2",
]

ParticipantInvestigationData = encpedpop.ParticipantInvestigationData
"""What ``UnknownFaultyParticipantOrCoordinatorError.inv_data`` holds (secret: never log it)."""

RecoveryData = NewType("RecoveryData", bytes)


# ---------------------------------------------------------------------------------------------
# host keys and session parameters


def hostpubkey_gen(hostseckey: bytes) -> bytes:
    """The 33-byte compressed ("plain", as BIP-327 ``IndividualPubkey``) host public key.

    ``ValueError`` unless 32 bytes; :class:`HostSeckeyError` unless the key is in 1..N-1."""
    if not isinstance(hostseckey, bytes | bytearray) or len(hostseckey) != 32:
        raise ValueError("host secret key must be 32 bytes")
    d = int.from_bytes(hostseckey, "big")
    if not 0 < d < N:
        raise HostSeckeyError()
    return cbytes(point_mul_base(d))


class SessionParams(NamedTuple):
    """``hostpubkeys``: ordered host public keys of all participants; ``t``: the signing threshold,
    ``1 <= t <= len(hostpubkeys) <= 2**32 - 1``. Every participant must have authentic host keys
    (compare ``params_hash`` out of band)."""

    hostpubkeys: list[bytes]
    t: int


def params_validate(params: SessionParams) -> None:
    hostpubkeys, t = params
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= len(hostpubkeys) <= 2**32 - 1:
        raise ThresholdOrCountError()
    for i, hostpubkey in enumerate(hostpubkeys):
        try:
            cpoint(bytes(hostpubkey))
        except (ValueError, TypeError) as e:
            raise InvalidHostPubkeyError(i) from e
    first_index: dict[bytes, int] = {}
    for i, hostpubkey in enumerate(hostpubkeys):
        if hostpubkey in first_index:
            raise DuplicateHostPubkeyError(first_index[hostpubkey], i)
        first_index[hostpubkey] = i


def params_hash(params: SessionParams) -> bytes:
    """32-byte hash of the session parameters, for out-of-band comparison of host keys and ``t``."""
    params_validate(params)
    hostpubkeys, t = params
    return tagged_hash_bip_dkg("params_hash", t.to_bytes(4, "big") + b"".join(hostpubkeys))


class DKGOutput(NamedTuple):
    """``secshare``: this participant's 32-byte secret share (``None`` for the coordinator);
    ``thresh_pk``: the 33-byte threshold public key; ``pubshares``: every participant's 33-byte public
    share."""

    secshare: bytes | None
    thresh_pk: bytes
    pubshares: list[bytes]

    def __repr__(self) -> str:
        return repr_hiding(self, ("secshare",))


# ---------------------------------------------------------------------------------------------
# messages


class ParticipantMsg1(NamedTuple):
    """Participant -> coordinator, round 1 (``33*t + 32*n + 97`` bytes)."""

    enc_pmsg: encpedpop.ParticipantMsg

    @staticmethod
    def len_bytes(t: int, n: int) -> int:
        return encpedpop.ParticipantMsg.len_bytes(t, n)

    @staticmethod
    def from_bytes(b: bytes, t: int, n: int) -> ParticipantMsg1:
        return ParticipantMsg1(encpedpop.ParticipantMsg.from_bytes(b, t, n))

    def to_bytes(self) -> bytes:
        return self.enc_pmsg.to_bytes()


class ParticipantMsg2(NamedTuple):
    """Participant -> coordinator, round 2: the CertEq signature (64 bytes)."""

    sig: bytes

    @staticmethod
    def len_bytes() -> int:
        return 64

    @staticmethod
    def from_bytes(b: bytes) -> ParticipantMsg2:
        if len(b) != 64:
            raise ValueError("participant message 2 must be 64 bytes")
        return ParticipantMsg2(bytes(b))

    def to_bytes(self) -> bytes:
        return self.sig


class CoordinatorMsg1(NamedTuple):
    """Coordinator -> all, round 1 (``162*n + 33*(t-1)`` bytes)."""

    enc_cmsg: encpedpop.CoordinatorMsg
    enc_secshares: list[int]

    @staticmethod
    def len_bytes(t: int, n: int) -> int:
        return encpedpop.CoordinatorMsg.len_bytes(t, n) + 32 * n

    @staticmethod
    def from_bytes(b: bytes, t: int, n: int) -> CoordinatorMsg1:
        if len(b) != CoordinatorMsg1.len_bytes(t, n):
            raise ValueError("coordinator message 1 has the wrong length")
        k = encpedpop.CoordinatorMsg.len_bytes(t, n)
        enc_cmsg = encpedpop.CoordinatorMsg.from_bytes(b[:k], t, n)
        return CoordinatorMsg1(enc_cmsg, parse_scalars(b[k:], n, "encrypted secret shares"))

    def to_bytes(self) -> bytes:
        return self.enc_cmsg.to_bytes() + b"".join(scalar_bytes(s) for s in self.enc_secshares)


class CoordinatorMsg2(NamedTuple):
    """Coordinator -> all, round 2: the certificate (``64*n`` bytes)."""

    cert: bytes

    @staticmethod
    def len_bytes(n: int) -> int:
        return certeq_cert_len(n)

    @staticmethod
    def from_bytes(b: bytes, n: int) -> CoordinatorMsg2:
        if len(b) != certeq_cert_len(n):
            raise ValueError("coordinator message 2 has the wrong length")
        return CoordinatorMsg2(bytes(b))

    def to_bytes(self) -> bytes:
        return self.cert


class CoordinatorInvestigationMsg(NamedTuple):
    """Coordinator -> participant i, investigation (``65*n`` bytes, nothing confidential)."""

    enc_cinv: encpedpop.CoordinatorInvestigationMsg

    @staticmethod
    def len_bytes(n: int) -> int:
        return encpedpop.CoordinatorInvestigationMsg.len_bytes(n)

    @staticmethod
    def from_bytes(b: bytes, n: int) -> CoordinatorInvestigationMsg:
        return CoordinatorInvestigationMsg(encpedpop.CoordinatorInvestigationMsg.from_bytes(b, n))

    def to_bytes(self) -> bytes:
        return self.enc_cinv.to_bytes()


class RecoveryAckMsg(NamedTuple):
    """A participant's acknowledgment signature on the recovery data (64 bytes)."""

    sig: bytes

    @staticmethod
    def len_bytes() -> int:
        return 64

    @staticmethod
    def from_bytes(b: bytes) -> RecoveryAckMsg:
        if len(b) != 64:
            raise ValueError("recovery acknowledgment must be 64 bytes")
        return RecoveryAckMsg(bytes(b))

    def to_bytes(self) -> bytes:
        return self.sig


def _enc_secshares_bytes(enc_secshares: Sequence[int]) -> bytes:
    return b"".join(scalar_bytes(s) for s in enc_secshares)


def deserialize_recovery_data(
    b: bytes,
) -> tuple[int, VSSCommitment, list[bytes], list[bytes], list[int], bytes]:
    """(t, sum_coms, hostpubkeys, pubnonces, enc_secshares, cert); ``ValueError`` if malformed."""
    if len(b) < 4:
        raise ValueError("recovery data too short")
    t = int.from_bytes(b[:4], "big")
    if len(b) < 4 + 33 * t:
        raise ValueError("recovery data too short")
    sum_coms = VSSCommitment.from_bytes(b[4 : 4 + 33 * t], t)
    rest = b[4 + 33 * t :]
    n, remainder = divmod(len(rest), 33 + 33 + 32 + 64)
    if remainder:
        raise ValueError("recovery data has the wrong length")
    hostpubkeys = [rest[33 * i : 33 * i + 33] for i in range(n)]
    rest = rest[33 * n :]
    pubnonces = [rest[33 * i : 33 * i + 33] for i in range(n)]
    rest = rest[33 * n :]
    enc_secshares = parse_scalars(rest[: 32 * n], n, "encrypted secret share")
    cert = rest[32 * n :]
    return t, sum_coms, hostpubkeys, pubnonces, enc_secshares, cert


# ---------------------------------------------------------------------------------------------
# participant


class ParticipantState1(NamedTuple):
    params: SessionParams
    participant_id: int
    enc_state: encpedpop.ParticipantState


class ParticipantState2(NamedTuple):
    params: SessionParams
    eq_input: bytes
    dkg_output: DKGOutput


def _participant_id(hostseckey: bytes, params: SessionParams, what: str) -> int:
    hostpubkey = hostpubkey_gen(hostseckey)
    params_validate(params)
    try:
        return list(params.hostpubkeys).index(hostpubkey)
    except ValueError as e:
        raise HostSeckeyError(what) from e


def participant_step1(
    hostseckey: bytes, params: SessionParams, random: bytes
) -> tuple[ParticipantState1, bytes]:
    """Round 1: (state for ``participant_step2``, ``pmsg1`` for the coordinator).

    ``random`` must be 32 FRESH random bytes. Raises ``ValueError``, :class:`HostSeckeyError`, the
    ``SessionParamsError`` subclasses, :class:`RandomnessError` (all-zero ``random``)."""
    participant_id = _participant_id(hostseckey, params, "Host secret key does not match any host public key")
    if len(random) != 32:
        raise ValueError("random must be 32 bytes")
    if random == b"\x00" * 32:
        raise RandomnessError()
    hostpubkeys, t = params
    # The seed is only hashed, so the host secret key can serve as both seed and decryption key.
    enc_state, enc_pmsg = encpedpop.participant_step1(
        seed=hostseckey,
        deckey=hostseckey,
        enckeys=hostpubkeys,
        t=t,
        participant_id=participant_id,
        random=random,
    )
    return ParticipantState1(params, participant_id, enc_state), enc_pmsg.to_bytes()


def participant_step2(
    hostseckey: bytes, state1: ParticipantState1, cmsg1: bytes, aux_rand: bytes
) -> tuple[ParticipantState2, bytes]:
    """Round 2: check ``cmsg1`` and sign the equality input; (state for ``participant_finalize``,
    ``pmsg2``). After sending ``pmsg2`` the host secret key must be kept: others may complete.

    Raises :class:`FaultyCoordinatorError`, :class:`FaultyParticipantOrCoordinatorError`,
    :class:`UnknownFaultyParticipantOrCoordinatorError` (see ``participant_investigate``),
    :class:`HostSeckeyError`, ``ValueError``."""
    hostpubkey = hostpubkey_gen(hostseckey)
    if len(aux_rand) != 32:
        raise ValueError("aux_rand must be 32 bytes")
    params, participant_id, enc_state = state1
    hostpubkeys = params.hostpubkeys
    if hostpubkey != hostpubkeys[participant_id]:
        raise HostSeckeyError("Host secret key does not match the one used in participant_step1")
    try:
        enc_cmsg, enc_secshares = CoordinatorMsg1.from_bytes(cmsg1, enc_state.simpl_state.t, len(hostpubkeys))
    except MsgParseError as e:
        raise FaultyCoordinatorError(*e.args) from e
    enc_output, eq_input = encpedpop.participant_step2(
        enc_state, hostseckey, enc_cmsg, enc_secshares[participant_id]
    )
    # The encrypted shares are part of the equality input, so everybody gets the same recovery data.
    eq_input += _enc_secshares_bytes(enc_secshares)
    state2 = ParticipantState2(params, eq_input, DKGOutput(*enc_output))
    sig = certeq_participant_step(hostseckey, participant_id, eq_input, aux_rand)
    return state2, ParticipantMsg2(sig).to_bytes()


def participant_finalize(state2: ParticipantState2, cmsg2: bytes) -> tuple[DKGOutput, RecoveryData]:
    """Round 3: verify the certificate; (DKG output, recovery data).

    An exception here does NOT mean the session failed for others: keep the host secret key, and
    accept valid recovery data later (``participant_recover``). Raises :class:`FaultyCoordinatorError`,
    ``ValueError`` (wrong length)."""
    params, eq_input, output = state2
    cert = CoordinatorMsg2.from_bytes(cmsg2, len(params.hostpubkeys)).cert
    try:
        certeq_verify(params.hostpubkeys, eq_input, cert)
    except InvalidSignatureInCertificateError as e:
        raise FaultyCoordinatorError(
            "Coordinator has provided a certificate with an invalid signature"
        ) from e
    return output, RecoveryData(eq_input + cert)


def participant_investigate(error: UnknownFaultyParticipantOrCoordinatorError, cinv: bytes) -> NoReturn:
    """Turn ``UnknownFaultyParticipantOrCoordinatorError`` from ``participant_step2`` into a suspect,
    using this participant's investigation message from ``coordinator_investigate``.

    Always raises: :class:`FaultyParticipantOrCoordinatorError` or :class:`FaultyCoordinatorError`
    (``ValueError`` if the arguments do not belong together)."""
    inv_data = error.inv_data
    if not isinstance(inv_data, encpedpop.ParticipantInvestigationData):
        raise ValueError("error carries no ChillDKG investigation data")
    try:
        cinv_parsed = CoordinatorInvestigationMsg.from_bytes(cinv, inv_data.simpl_bstate.n)
    except MsgParseError as e:
        raise FaultyCoordinatorError(*e.args) from e
    encpedpop.participant_investigate(inv_data, cinv_parsed.enc_cinv)


# ---------------------------------------------------------------------------------------------
# coordinator


class CoordinatorState(NamedTuple):
    params: SessionParams
    eq_input: bytes
    dkg_output: DKGOutput


def _parse_pmsgs1(pmsgs1: Sequence[bytes], t: int, n: int) -> list[encpedpop.ParticipantMsg]:
    parsed = []
    for i, pmsg1 in enumerate(pmsgs1):
        try:
            parsed.append(ParticipantMsg1.from_bytes(pmsg1, t, n).enc_pmsg)
        except MsgParseError as e:
            raise FaultyParticipantError(i, *e.args) from e
    return parsed


def coordinator_step1(pmsgs1: Sequence[bytes], params: SessionParams) -> tuple[CoordinatorState, bytes]:
    """Aggregate the ``n`` first messages: (state for ``coordinator_finalize``, ``cmsg1`` for all).

    Raises the ``SessionParamsError`` subclasses, :class:`FaultyParticipantError`, ``ValueError``."""
    params_validate(params)
    hostpubkeys, t = params
    n = len(hostpubkeys)
    if len(pmsgs1) != n:
        raise ValueError("need one first message per participant")
    parsed = _parse_pmsgs1(pmsgs1, t, n)
    try:
        enc_cmsg, enc_output, eq_input, enc_secshares = encpedpop.coordinator_step(parsed, t, hostpubkeys)
    except ValueError as e:
        # The commitments to the secrets sum to infinity: some participant's proof of possession fails.
        culprit = simplpedpop.find_invalid_pop([m.simpl_pmsg for m in parsed])
        if culprit is None:
            raise
        raise FaultyParticipantError(culprit, "Participant sent invalid proof-of-knowledge") from e
    eq_input += _enc_secshares_bytes(enc_secshares)
    state = CoordinatorState(params, eq_input, DKGOutput(*enc_output))
    return state, CoordinatorMsg1(enc_cmsg, enc_secshares).to_bytes()


def coordinator_finalize(
    state: CoordinatorState, pmsgs2: Sequence[bytes]
) -> tuple[bytes, DKGOutput, RecoveryData]:
    """Build the certificate from the ``n`` signatures: (``cmsg2`` for all, DKG output, recovery data).

    Raises :class:`FaultyParticipantError` (bad signature), ``ValueError`` (wrong count or length)."""
    params, eq_input, output = state
    if len(pmsgs2) != len(params.hostpubkeys):
        raise ValueError("need one second message per participant")
    sigs = [ParticipantMsg2.from_bytes(m).sig for m in pmsgs2]
    cert = certeq_coordinator_step(sigs)
    try:
        certeq_verify(params.hostpubkeys, eq_input, cert)
    except InvalidSignatureInCertificateError as e:
        raise FaultyParticipantError(
            e.participant_id, "Participant has provided an invalid signature for the certificate"
        ) from e
    return CoordinatorMsg2(cert).to_bytes(), output, RecoveryData(eq_input + cert)


def coordinator_investigate(pmsgs: Sequence[bytes], params: SessionParams) -> list[bytes]:
    """One investigation message per participant (safe to broadcast: nothing confidential)."""
    n = len(pmsgs)
    parsed = _parse_pmsgs1(pmsgs, params.t, n)
    return [CoordinatorInvestigationMsg(c).to_bytes() for c in encpedpop.coordinator_investigate(parsed)]


# ---------------------------------------------------------------------------------------------
# recovery


def _recover(hostseckey: bytes | None, recovery_data: bytes) -> tuple[DKGOutput, SessionParams]:
    try:
        t, sum_coms, hostpubkeys, pubnonces, enc_secshares, cert = deserialize_recovery_data(recovery_data)
    except ValueError as e:
        raise RecoveryDataError("Failed to deserialize recovery data") from e
    n = len(hostpubkeys)
    params = SessionParams(hostpubkeys, t)
    try:
        params_validate(params)
    except SessionParamsError as e:
        raise RecoveryDataError("Invalid session parameters in recovery data") from e
    eq_input = recovery_data[: len(recovery_data) - len(cert)]
    try:
        certeq_verify(hostpubkeys, eq_input, cert)
    except InvalidSignatureInCertificateError as e:
        raise RecoveryDataError("Invalid certificate in recovery data") from e
    try:
        sum_coms_tweaked, tweak, _ = sum_coms.invalid_taproot_commit()
    except ValueError as e:  # certified by all participants, so unreachable unless all are faulty
        raise RecoveryDataError("Invalid commitment in recovery data") from e
    pubshares = sum_coms_tweaked.pubshares(n)
    secshare: bytes | None = None
    if hostseckey is not None:
        hostpubkey = hostpubkey_gen(hostseckey)
        try:
            participant_id = hostpubkeys.index(hostpubkey)
        except ValueError as e:
            raise HostSeckeyError(
                "Host secret key does not match any host public key in the recovery data"
            ) from e
        enc_context = encpedpop.serialize_enc_context(t, hostpubkeys)
        try:
            share = encpedpop.decrypt_sum(
                hostseckey, hostpubkey, pubnonces, enc_context, participant_id, enc_secshares[participant_id]
            )
        except FaultyParticipantOrCoordinatorError as e:
            raise RecoveryDataError("Invalid public nonce in recovery data") from e
        share = (share + tweak) % N
        # We signed this data, so this held during the session; a mismatch means corrupt data.
        if not point_eq(point_mul_base(share), pubshares[participant_id]):
            raise RecoveryDataError("Secret share does not match recovery data")
        secshare = scalar_bytes(share)
    output = DKGOutput(
        secshare, cbytes(sum_coms_tweaked.commitment_to_secret()), [cbytes(p) for p in pubshares]
    )
    return output, params


def participant_recover(
    hostseckey: bytes, recovery_data: RecoveryData | bytes
) -> tuple[DKGOutput, SessionParams]:
    """Restore a participant's DKG output from its host secret key and the session's recovery data.

    Raises :class:`RecoveryDataError`, :class:`HostSeckeyError`, ``ValueError``."""
    if hostseckey is None:
        raise ValueError("host secret key required")
    return _recover(hostseckey, recovery_data)


def coordinator_recover(recovery_data: RecoveryData | bytes) -> tuple[DKGOutput, SessionParams]:
    """Restore the public DKG output (``secshare`` is ``None``). Raises :class:`RecoveryDataError`."""
    return _recover(None, recovery_data)


# ---------------------------------------------------------------------------------------------
# recovery acknowledgments


def _check_recovery_data_matches(recovery_data: bytes, params: SessionParams) -> None:
    try:
        t, _, hostpubkeys, _, _, _ = deserialize_recovery_data(recovery_data)
    except ValueError as e:
        raise RecoveryDataError("Failed to deserialize recovery data") from e
    if t != params.t or hostpubkeys != list(params.hostpubkeys):
        raise RecoveryDataError("Recovery data does not match the provided session parameters")


def participant_recovery_ack_sign(
    hostseckey: bytes, recovery_data: RecoveryData | bytes, params: SessionParams, aux_rand: bytes
) -> bytes:
    """A 64-byte acknowledgment that this participant holds ``recovery_data``."""
    participant_id = _participant_id(hostseckey, params, "Host secret key does not match any host public key")
    if len(aux_rand) != 32:
        raise ValueError("aux_rand must be 32 bytes")
    _check_recovery_data_matches(recovery_data, params)
    return RecoveryAckMsg(recovery_ack_sign(hostseckey, participant_id, recovery_data, aux_rand)).to_bytes()


def participant_recovery_acks_verify(
    recovery_data: RecoveryData | bytes, params: SessionParams, ack_sigs: Sequence[bytes]
) -> None:
    """Check every participant's acknowledgment; :class:`InvalidRecoveryAckError` names a bad one."""
    params_validate(params)
    if len(ack_sigs) != len(params.hostpubkeys):
        raise ValueError("need one acknowledgment per participant")
    _check_recovery_data_matches(recovery_data, params)
    for i, sig in enumerate(ack_sigs):
        ack = RecoveryAckMsg.from_bytes(sig)
        if not recovery_ack_verify(params.hostpubkeys[i], i, recovery_data, ack.sig):
            raise InvalidRecoveryAckError(i)
