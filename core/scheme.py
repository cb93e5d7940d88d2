"""Signing schemes: what the signing pipeline needs of a threshold signature scheme, and the registry.

Theory of operation
-------------------
A spend is signed in one attempt after another (consensus picks a signer set per attempt). The pipeline
is the same whatever the scheme; only these steps differ, and a scheme provides them as pure functions:

1. **Material.** Before an attempt, every signer must hold, per input, secret material whose public half
   consensus claimed for that attempt (:attr:`SigningScheme.material`): FROST a precommitted nonce pair of
   that signer alone; CGGMP24 a presignature, bound to the whole signer set and to the derivation path.
   A signer makes its material with :meth:`SigningScheme.make_material`; the secret half never leaves it.
2. **Partial signatures.** A signer of an approved attempt computes one partial signature per input from
   its share, the attempt (:class:`Attempt`: the signer set and every signer's public material), its
   own secret material and the sighashes **it computed itself** (:class:`SpendInput`), with
   :meth:`SigningScheme.sign_inputs`. The secret material is erased whatever happens: it can sign once.
3. **Verify with blame, combine.** Whoever collects the partial signatures combines them
   (:meth:`SigningScheme.combine`); a contribution that does not verify is blamed on its signer
   (:class:`InvalidPartialSignature` names it), and :meth:`SigningScheme.verify_partial` checks one
   signer's contribution on its own.
4. **Witness.** The combined signature becomes the input's final witness
   (:meth:`SigningScheme.witness`; P2TR key path: ``[sig]``).

Errors are types: :class:`SchemeError` (a ``ValueError``) is bad input, whose message is safe to publish
(a signer's refusal reason); :class:`InvalidPartialSignature` is a contribution blamed on a signer.

The registry maps the scheme name used on the wire (``TxRequested.scheme``, KV ``keys`` and ``presig``
keys, ``proto.<scheme>.<session>...`` subjects) to its implementation: :func:`scheme_for`. Outside the
registry's modules (``core.schemes``), no service names a scheme's functions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bitcoin.core import CTransaction

    from wallet.threshold_account import ThresholdAccount
    from wallet.transaction import Prevout

DEFAULT_SCHEME = "frost"  # the scheme of the key the DKG makes today (P2TR key path)


class SchemeError(ValueError):
    """Bad input to a scheme (inconsistent attempt, material used or not this signer's); the message is
    safe to publish: it names no secret."""


class UnknownScheme(SchemeError):
    """No scheme of that name is registered."""


class InvalidPartialSignature(Exception):
    """``signer``'s partial signature for input ``input_index`` does not verify: blamed on that signer."""

    def __init__(self, signer: str, input_index: int, reason: str = "invalid partial signature") -> None:
        super().__init__(f"{signer}: input {input_index}: {reason}")
        self.signer = signer
        self.input_index = input_index
        self.reason = reason


@dataclass(frozen=True, slots=True)
class MaterialKind:
    """What a signer must have claimed per input before an attempt."""

    name: str  # "nonce" (FROST), "presignature" (CGGMP24)
    per_input: int  # items of material each signer needs per input
    bound_to_signer_set: bool  # usable only by the signer set it was made for (CGGMP24 presignatures)
    bound_to_derivation: bool  # usable only for the derivation path it was made for


class PublicKeyShares(Protocol):
    """The public result of a DKG (``schemas.kv.KeyRecord`` is one)."""

    @property
    def n(self) -> int: ...
    @property
    def t(self) -> int: ...
    @property
    def threshold_pubkey(self) -> bytes: ...  # 33-byte compressed
    @property
    def pubshares(self) -> Sequence[bytes]: ...  # in participant order


class SecretShare(PublicKeyShares, Protocol):
    """One signer's DKG output (``services.signer.keystore.ShareRecord`` is one)."""

    @property
    def index(self) -> int: ...  # this signer's participant id (0-based)
    @property
    def secshare(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One signing attempt as the pipeline fixed it: the signer set (node names and their participant
    ids, in the attempt's order) and, per signer, the public half of its claimed material per input."""

    signers: tuple[str, ...]
    ids: tuple[int, ...]
    material: Mapping[str, Sequence[bytes]]

    def __post_init__(self) -> None:
        if len(self.signers) != len(self.ids) or len(set(self.signers)) != len(self.signers):
            raise SchemeError("malformed signer set")
        if set(self.material) != set(self.signers):
            raise SchemeError("the material does not name exactly the signer set")

    def public_material(self, input_index: int) -> list[bytes]:
        """Every signer's public material for one input, in signer order."""
        try:
            return [self.material[s][input_index] for s in self.signers]
        except IndexError:
            raise SchemeError(f"input {input_index}: not every signer has material for it") from None


@dataclass(frozen=True, slots=True)
class SpendInput:
    """One input to sign: its sighash and the key it is signed under (the threshold key tweaked along
    its derivation path: additive tweaks, each marked x-only or plain), and the key the final signature
    verifies under (x-only for P2TR)."""

    sighash: bytes
    tweaks: tuple[bytes, ...]
    is_xonly: tuple[bool, ...]
    output_key: bytes


@runtime_checkable
class SigningScheme(Protocol):
    """What a threshold signature scheme provides to the signing pipeline (pure: no I/O)."""

    @property
    def name(self) -> str:
        """The name on the wire: ``TxRequested.scheme``, KV keys, ``proto.<name>...`` subjects."""
        ...

    @property
    def material(self) -> MaterialKind: ...

    def make_material(self, share: SecretShare, material_id: bytes) -> tuple[bytearray, bytes]:
        """Fresh ``(secret, public)`` material of this signer; ``material_id`` is unique per item."""
        ...

    def spend_input(self, account: ThresholdAccount, derivation: Sequence[int], sighash: bytes) -> SpendInput:
        """The input signed under ``account``'s key at ``derivation`` for ``sighash``."""
        ...

    def sighashes(self, tx: CTransaction, prevouts: Sequence[Prevout]) -> list[bytes]:
        """Every input's sighash for this scheme's input type."""
        ...

    def sign_inputs(
        self,
        share: SecretShare,
        attempt: Attempt,
        me: str,
        secret_material: Sequence[bytearray | None],
        inputs: Sequence[SpendInput],
    ) -> list[bytes]:
        """Signer ``me``'s partial signature per input. ``secret_material[i]`` is its secret material for
        input ``i`` (None: not held), checked against its public half in ``attempt``; every item is erased
        on return or error. :class:`SchemeError` when anything does not fit."""
        ...

    def verify_partial(
        self,
        key: PublicKeyShares,
        attempt: Attempt,
        inputs: Sequence[SpendInput],
        signer: str,
        psigs: Sequence[bytes],
    ) -> None:
        """Check ``signer``'s partial signatures; :class:`InvalidPartialSignature` names it otherwise."""
        ...

    def combine(
        self,
        key: PublicKeyShares,
        attempt: Attempt,
        inputs: Sequence[SpendInput],
        psigs: Mapping[str, Sequence[bytes]],
    ) -> list[bytes]:
        """One final signature per input, each verified under its input's output key.
        :class:`InvalidPartialSignature` blames the first signer (in signer order) whose contribution
        fails; :class:`SchemeError` if the signature fails although every contribution verified."""
        ...

    def witness(self, signature: bytes) -> list[bytes]:
        """The input's final witness stack for a combined signature."""
        ...


def scheme_for(name: str) -> SigningScheme:
    """The implementation of the scheme ``name`` (the wire name); :class:`UnknownScheme` otherwise."""
    got = _registry().get(name)
    if got is None:
        raise UnknownScheme(f"scheme {name!r} is not supported")
    return got


def scheme_names() -> tuple[str, ...]:
    return tuple(_registry())


@cache
def _registry() -> Mapping[str, SigningScheme]:
    from core.schemes import SCHEMES  # the implementations import this module

    return SCHEMES
