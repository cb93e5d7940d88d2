"""The error kinds of the CGGMP24 code: bad input from the caller, a contribution blamed on a party, and
an abort the protocol cannot attribute.

Messages name the party and the check, never a secret value.
"""

from __future__ import annotations


class CggmpError(Exception):
    """Base of every error raised by ``tss.cggmp24``."""


class BadInputError(CggmpError, ValueError):
    """The caller's own input is wrong (wrong length, out of range, unknown party index...)."""


class InvalidContributionError(CggmpError):
    """Party ``party`` sent something that fails check ``check`` (a proof, a range, a commitment, a
    decommitment, an echo...). Every honest party that sees the same message reaches the same verdict."""

    def __init__(self, party: int, check: str, detail: str = "") -> None:
        self.party = party
        self.check = check
        self.detail = detail
        super().__init__(f"party {party}: {check}" + (f" ({detail})" if detail else ""))


class InvalidProofError(InvalidContributionError):
    """A zero-knowledge proof by ``party`` does not verify; ``check`` names the proof and the failed
    equation or range (e.g. ``"pi_aff_g: z1 out of range"``)."""


class UnattributableAbortError(CggmpError):
    """The protocol detected a failure it cannot pin on one party (CGGMP24 presigning's final
    ``delta * G == sum Delta_j`` / ``delta * X == sum S_j`` check: the specification aborts without
    identification there). ``check`` names the failed equation."""

    def __init__(self, check: str) -> None:
        self.check = check
        super().__init__(f"abort without identification: {check}")
