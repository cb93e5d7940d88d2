"""FROST (BIP-445 threshold Schnorr) as a :class:`core.scheme.SigningScheme`, for P2TR key-path inputs.

The pipeline's shape fixes how BIP-445 is driven here. Each signer precommits its nonces (``NonceGen``,
pooled long before any spend), consensus names every signer's pubnonce in the attempt, and each signer
sends its partial signatures to the broadcaster, which aggregates. So a signer runs a single round
(``NonceAgg`` over the attempt's pubnonces, then ``Sign``) and the broadcaster is the aggregator
(``PartialSigAgg``; ``PartialSigVerify`` only when the aggregate fails, to blame the signer). Nonces come
from the signer's own pool: a precommitted nonce never signs two messages because ``Sign`` erases the
secret nonce, and every secret nonce handed to :meth:`FrostScheme.sign_inputs` is erased on return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from core.scheme import (
    Attempt,
    InvalidPartialSignature,
    MaterialKind,
    PublicKeyShares,
    SchemeError,
    SecretShare,
    SpendInput,
)
from tss import frost
from tss.secp256k1 import cbytes, point_mul_base, schnorr_verify
from wallet.sighash import SighashCache, bip341_sighash
from wallet.witness import p2tr_key_path_witness

if TYPE_CHECKING:
    from bitcoin.core import CTransaction

    from wallet.threshold_account import ThresholdAccount
    from wallet.transaction import Prevout

_NONCE = MaterialKind("nonce", per_input=1, bound_to_signer_set=False, bound_to_derivation=False)


class FrostScheme:
    """BIP-445 FROST signing with precommitted nonces; stateless."""

    @property
    def name(self) -> str:
        return "frost"

    @property
    def material(self) -> MaterialKind:
        return _NONCE

    def make_material(self, share: SecretShare, material_id: bytes) -> tuple[bytearray, bytes]:
        return frost.nonce_gen(share.secshare, share.pubshares[share.index], None, None, material_id)

    def spend_input(self, account: ThresholdAccount, derivation: Sequence[int], sighash: bytes) -> SpendInput:
        key = account.key(tuple(derivation))
        return SpendInput(sighash, key.tweaks, key.is_xonly, key.output_xonly)

    def sighashes(self, tx: CTransaction, prevouts: Sequence[Prevout]) -> list[bytes]:
        cache = SighashCache(tx, prevouts)
        return [bip341_sighash(tx, prevouts, i, cache=cache) for i in range(len(tx.vin))]

    def sign_inputs(
        self,
        share: SecretShare,
        attempt: Attempt,
        me: str,
        secret_material: Sequence[bytearray | None],
        inputs: Sequence[SpendInput],
    ) -> list[bytes]:
        try:
            if me not in attempt.signers:
                raise SchemeError("this signer is not in the signer set")
            if attempt.ids[attempt.signers.index(me)] != share.index:
                raise SchemeError("this signer is listed with another participant id")
            mine = attempt.material[me]
            if len(secret_material) != len(inputs) or len(mine) != len(inputs):
                raise SchemeError("the attempt does not name one nonce of this signer per input")
            signers_ctx = _signers_ctx(share, attempt)
            psigs: list[bytes] = []
            for i, (secnonce, inp) in enumerate(zip(secret_material, inputs, strict=True)):
                if secnonce is None or len(secnonce) != 64 or not any(secnonce):
                    raise SchemeError(f"input {i}: the nonce is used or unknown")
                if _pubnonce_of(secnonce) != mine[i]:
                    raise SchemeError(f"input {i}: the pubnonce listed for this signer is not its own")
                try:
                    session_ctx = frost.SessionContext(
                        frost.nonce_agg(attempt.public_material(i)),
                        signers_ctx,
                        list(inp.tweaks),
                        list(inp.is_xonly),
                        inp.sighash,
                    )
                    psigs.append(frost.sign(secnonce, share.secshare, share.index, session_ctx))
                except (ValueError, frost.InvalidContributionError) as exc:
                    _check_signer_set(signers_ctx)  # the likelier culprit, named precisely
                    raise SchemeError(f"input {i}: {type(exc).__name__}") from exc
            return psigs
        finally:
            for secnonce in secret_material:  # whatever was handed in is erased: it signs once
                if secnonce is not None:
                    secnonce[:] = bytes(len(secnonce))

    def verify_partial(
        self,
        key: PublicKeyShares,
        attempt: Attempt,
        inputs: Sequence[SpendInput],
        signer: str,
        psigs: Sequence[bytes],
    ) -> None:
        if signer not in attempt.signers:
            raise SchemeError(f"{signer} is not in the signer set")
        j = attempt.signers.index(signer)
        signers_ctx = _signers_ctx(key, attempt)
        _check_signer_set(signers_ctx)
        for i, inp in enumerate(inputs):
            psig = psigs[i] if i < len(psigs) else b""
            _verify_one(attempt, signers_ctx, inp, i, j, psig)

    def combine(
        self,
        key: PublicKeyShares,
        attempt: Attempt,
        inputs: Sequence[SpendInput],
        psigs: Mapping[str, Sequence[bytes]],
    ) -> list[bytes]:
        signers_ctx = _signers_ctx(key, attempt)
        sigs: list[bytes] = []
        for i, inp in enumerate(inputs):
            mine = [_psig(psigs, s, i) for s in attempt.signers]
            pubnonces = attempt.public_material(i)  # SchemeError: the attempt's fault, nobody's blame
            sig = b""
            try:  # optimistic: aggregate and check; look for the culprit only when that fails
                session_ctx = frost.SessionContext(
                    frost.nonce_agg(pubnonces),
                    signers_ctx,
                    list(inp.tweaks),
                    list(inp.is_xonly),
                    inp.sighash,
                )
                sig = frost.partial_sig_agg(mine, session_ctx)
            except (ValueError, frost.InvalidContributionError):
                sig = b""
            if not sig or not schnorr_verify(inp.sighash, inp.output_key, sig):
                _check_signer_set(signers_ctx)  # a bad signer set is nobody's blame
                for j, psig in enumerate(mine):
                    _verify_one(attempt, signers_ctx, inp, i, j, psig)
                raise SchemeError(f"input {i}: aggregate signature does not verify")
            sigs.append(sig)
        return sigs

    def witness(self, signature: bytes) -> list[bytes]:
        return p2tr_key_path_witness(signature)


FROST = FrostScheme()


def _signers_ctx(key: PublicKeyShares, attempt: Attempt) -> frost.SignersContext:
    """The BIP-445 signers context of the attempt (checked by ``Sign`` / ``PartialSigAgg`` themselves;
    :func:`_check_signer_set` names what is wrong when they fail)."""
    if any(not 0 <= i < len(key.pubshares) for i in attempt.ids):
        raise SchemeError("a participant id of the signer set is out of range")
    ids = list(attempt.ids)
    return frost.SignersContext(key.n, key.t, ids, [key.pubshares[i] for i in ids], key.threshold_pubkey)


def _check_signer_set(signers_ctx: frost.SignersContext) -> None:
    """:class:`SchemeError` unless the signer set is valid for the key (ids distinct and in range, at
    least t, their pubshares interpolating to the threshold key)."""
    try:
        frost.validate_signers_ctx(signers_ctx)
    except ValueError as exc:
        raise SchemeError(f"invalid signer set: {exc}") from exc


def _psig(psigs: Mapping[str, Sequence[bytes]], signer: str, i: int) -> bytes:
    got = psigs.get(signer, ())
    return got[i] if i < len(got) else b""


def _verify_one(
    attempt: Attempt, signers_ctx: frost.SignersContext, inp: SpendInput, i: int, j: int, psig: bytes
) -> None:
    """``PartialSigVerify`` of the signer at position ``j`` for input ``i``, blaming whoever fails."""
    pubnonces = attempt.public_material(i)
    try:
        ok = frost.partial_sig_verify(
            psig,
            pubnonces,
            signers_ctx,
            list(inp.tweaks),
            list(inp.is_xonly),
            inp.sighash,
            j,
        )
    except frost.InvalidContributionError as exc:
        culprit = j if exc.signer_index is None else exc.signer_index
        raise InvalidPartialSignature(attempt.signers[culprit], i, f"invalid {exc.contrib}") from None
    except ValueError:
        ok = False
    if not ok:
        raise InvalidPartialSignature(attempt.signers[j], i)


def _pubnonce_of(secnonce: bytearray) -> bytes:
    k1 = int.from_bytes(secnonce[0:32], "big")
    k2 = int.from_bytes(secnonce[32:64], "big")
    return cbytes(point_mul_base(k1)) + cbytes(point_mul_base(k2))
