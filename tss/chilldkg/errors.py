"""Error types of ChillDKG, named as in the draft BIP "bip-frost-dkg".

Every error caused by a received protocol message is a :class:`ProtocolError` and names the suspected
party where it can: ``participant_id`` for a participant, the type itself for the coordinator
(:class:`FaultyCoordinatorError`). Bad *local* input (wrong lengths, bad keys, bad parameters) is a
``ValueError`` (or one of the draft's ``ValueError`` subclasses below).

Exception messages never contain secrets: only participant indices and fixed texts.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """Base class for errors caused by received protocol messages."""


class FaultyParticipantError(ProtocolError):
    """Raised by the coordinator: participant ``participant_id`` deviated from the protocol."""

    def __init__(self, participant_id: int, *args: Any) -> None:
        self.participant_id = participant_id
        super().__init__(participant_id, *args)


class FaultyParticipantOrCoordinatorError(ProtocolError):
    """Raised by a participant: participant ``participant_id`` *or* the coordinator (who may have framed
    that participant) deviated from the protocol."""

    def __init__(self, participant_id: int, *args: Any) -> None:
        self.participant_id = participant_id
        super().__init__(participant_id, *args)


class FaultyCoordinatorError(ProtocolError):
    """Raised by a participant: the coordinator deviated from the protocol."""


class UnknownFaultyParticipantOrCoordinatorError(ProtocolError):
    """Raised by a participant whose secret share does not verify: some participant or the coordinator
    is faulty, and only the investigation procedure (``participant_investigate`` with the coordinator's
    investigation message) can name a suspect. ``inv_data`` holds what the investigation needs; it is
    secret (it contains the participant's share) and must not be logged or sent."""

    def __init__(self, inv_data: Any, *args: Any) -> None:
        self.inv_data = inv_data
        super().__init__(*args)


class MsgParseError(ValueError):
    """A received message has the right length but contains an invalid encoding (point or scalar)."""


class SecshareSumError(ValueError):
    """SimplPedPop investigation: the partial secret shares do not add up to the secret share."""


class HostSeckeyError(ValueError):
    """The host secret key is invalid, or does not belong to the session."""


class SessionParamsError(ValueError):
    """Base class for invalid ``SessionParams``."""


class ThresholdOrCountError(SessionParamsError):
    """``1 <= t <= len(hostpubkeys) <= 2**32 - 1`` does not hold."""


class InvalidHostPubkeyError(SessionParamsError):
    """Host public key of participant ``participant_id`` is not a valid compressed point."""

    def __init__(self, participant_id: int, *args: Any) -> None:
        self.participant_id = participant_id
        super().__init__(participant_id, *args)


class DuplicateHostPubkeyError(SessionParamsError):
    """Participants ``participant_id1`` and ``participant_id2`` have the same host public key."""

    def __init__(self, participant_id1: int, participant_id2: int, *args: Any) -> None:
        self.participant_id1 = participant_id1
        self.participant_id2 = participant_id2
        super().__init__(participant_id1, participant_id2, *args)


class RandomnessError(ValueError):
    """The session randomness is all zeroes (a broken random number generator)."""


class RecoveryDataError(ValueError):
    """The recovery data is malformed, inconsistent or not certified."""


class InvalidSignatureInCertificateError(ValueError):
    """CertEq: the signature of participant ``participant_id`` in a certificate does not verify."""

    def __init__(self, participant_id: int, *args: Any) -> None:
        self.participant_id = participant_id
        super().__init__(participant_id, *args)


class InvalidRecoveryAckError(FaultyParticipantError):
    """The recovery acknowledgment of participant ``participant_id`` does not verify."""
