"""EncPedPop: SimplPedPop with the partial secret shares encrypted, so they can go through the
coordinator.

Theory of operation. Every participant has an ECDH key pair (in ChillDKG: its host key). A dealer
derives a one-time nonce ``(secnonce, pubnonce)`` from its seed and encrypts the partial share for
participant ``i`` by *adding* a pad ``H_"encpedpop ecdh"(ECDH(secnonce, enckey_i) || pubnonce ||
enckey_i || i || context)`` (a multi-recipient hashed ElGamal KEM; the recipient index goes into the
hash). Its own share is padded with a symmetric pad derived from its decryption key. Because the
encryption is additive mod N, the coordinator can add the ciphertexts for participant ``i`` from all
dealers, and ``i`` subtracts the sum of all pads it can recompute from the ``n`` pubnonces.

The encryption context (``t || enckeys``) is hashed into the seed and into every pad, so the same
shares are never encrypted under different pads. The equality input grows by ``enckeys || pubnonces``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, NoReturn

from tss.secp256k1 import N, Point, cbytes, cbytes_ext, point_mul_base
from tss.secp256k1 import ecdh as ecdh_libsecp256k1

from . import simplpedpop
from .errors import (
    FaultyCoordinatorError,
    FaultyParticipantOrCoordinatorError,
    SecshareSumError,
    UnknownFaultyParticipantOrCoordinatorError,
)
from .util import (
    parse_points_ext,
    parse_scalars,
    repr_hiding,
    scalar_bytes,
    scalar_wrapping,
    tagged_hash_bip_dkg,
)

# ---------------------------------------------------------------------------------------------
# encryption


def ecdh(seckey: bytes, my_pubkey: bytes, their_pubkey: bytes, context: bytes, sending: bool) -> int:
    """The pad of one recipient: libsecp256k1's ECDH (constant time in ``seckey``) hashed with both
    public keys and the context. ``ValueError`` on a bad public key."""
    data = ecdh_libsecp256k1(seckey, their_pubkey)
    data += my_pubkey + their_pubkey if sending else their_pubkey + my_pubkey
    return scalar_wrapping(tagged_hash_bip_dkg("encpedpop ecdh", data + context))


def self_pad(symkey: bytes, nonce: bytes, context: bytes) -> int:
    return scalar_wrapping(tagged_hash_bip_dkg("encaps_multi self_pad", symkey + nonce + context))


def encaps_multi(
    secnonce: bytes,
    pubnonce: bytes,
    deckey: bytes,
    enckeys: Sequence[bytes],
    context: bytes,
    participant_id: int,
) -> list[int]:
    pads = []
    for i, enckey in enumerate(enckeys):
        ctx = i.to_bytes(4, "big") + context
        if i == participant_id:
            pads.append(self_pad(deckey, pubnonce, ctx))
        else:
            pads.append(ecdh(secnonce, pubnonce, enckey, ctx, sending=True))
    return pads


def encrypt_multi(
    secnonce: bytes,
    pubnonce: bytes,
    deckey: bytes,
    enckeys: Sequence[bytes],
    context: bytes,
    participant_id: int,
    plaintexts: Sequence[int],
) -> list[int]:
    pads = encaps_multi(secnonce, pubnonce, deckey, enckeys, context, participant_id)
    if len(pads) != len(plaintexts):
        raise ValueError("need one plaintext per enckey")
    return [(m + pad) % N for m, pad in zip(plaintexts, pads, strict=True)]


def decaps_multi(
    deckey: bytes, enckey: bytes, pubnonces: Sequence[bytes], context: bytes, participant_id: int
) -> list[int]:
    """The pads every dealer used for us; an unparseable pubnonce blames its dealer."""
    ctx = participant_id.to_bytes(4, "big") + context
    pads = []
    for sender, pubnonce in enumerate(pubnonces):
        if sender == participant_id:
            pads.append(self_pad(deckey, pubnonce, ctx))
            continue
        try:
            pads.append(ecdh(deckey, enckey, pubnonce, ctx, sending=False))
        except ValueError as e:
            raise FaultyParticipantOrCoordinatorError(sender, "invalid public nonce") from e
    return pads


def decrypt_sum(
    deckey: bytes,
    enckey: bytes,
    pubnonces: Sequence[bytes],
    context: bytes,
    participant_id: int,
    sum_ciphertexts: int,
) -> int:
    if not 0 <= participant_id < len(pubnonces):
        raise ValueError("participant id out of range")
    pads = decaps_multi(deckey, enckey, pubnonces, context, participant_id)
    return (sum_ciphertexts - sum(pads)) % N


def serialize_enc_context(t: int, enckeys: Sequence[bytes]) -> bytes:
    return t.to_bytes(4, "big") + b"".join(enckeys)


# ---------------------------------------------------------------------------------------------
# messages


class ParticipantMsg(NamedTuple):
    """SimplPedPop message || ``pubnonce`` (33) || ``enc_shares`` (32*n)."""

    simpl_pmsg: simplpedpop.ParticipantMsg
    pubnonce: bytes
    enc_shares: list[int]

    @staticmethod
    def len_bytes(t: int, n: int) -> int:
        return simplpedpop.ParticipantMsg.len_bytes(t) + 33 + 32 * n

    @staticmethod
    def from_bytes(b: bytes, t: int, n: int) -> ParticipantMsg:
        if len(b) != ParticipantMsg.len_bytes(t, n):
            raise ValueError("EncPedPop participant message has the wrong length")
        k = simplpedpop.ParticipantMsg.len_bytes(t)
        simpl = simplpedpop.ParticipantMsg.from_bytes(b[:k], t)
        return ParticipantMsg(simpl, b[k : k + 33], parse_scalars(b[k + 33 :], n, "encrypted secret share"))

    def to_bytes(self) -> bytes:
        return self.simpl_pmsg.to_bytes() + self.pubnonce + b"".join(scalar_bytes(s) for s in self.enc_shares)


class CoordinatorMsg(NamedTuple):
    """SimplPedPop coordinator message || ``pubnonces`` (33*n, unparsed)."""

    simpl_cmsg: simplpedpop.CoordinatorMsg
    pubnonces: list[bytes]

    @staticmethod
    def len_bytes(t: int, n: int) -> int:
        return simplpedpop.CoordinatorMsg.len_bytes(t, n) + 33 * n

    @staticmethod
    def from_bytes(b: bytes, t: int, n: int) -> CoordinatorMsg:
        if len(b) != CoordinatorMsg.len_bytes(t, n):
            raise ValueError("EncPedPop coordinator message has the wrong length")
        k = simplpedpop.CoordinatorMsg.len_bytes(t, n)
        simpl = simplpedpop.CoordinatorMsg.from_bytes(b[:k], t, n)
        return CoordinatorMsg(simpl, [b[k + 33 * i : k + 33 * i + 33] for i in range(n)])

    def to_bytes(self) -> bytes:
        return self.simpl_cmsg.to_bytes() + b"".join(self.pubnonces)


class CoordinatorInvestigationMsg(NamedTuple):
    """``enc_partial_secshares`` (32*n) || ``partial_pubshares`` (33*n)."""

    enc_partial_secshares: list[int]
    partial_pubshares: list[Point]

    @staticmethod
    def len_bytes(n: int) -> int:
        return 65 * n

    @staticmethod
    def from_bytes(b: bytes, n: int) -> CoordinatorInvestigationMsg:
        if len(b) != CoordinatorInvestigationMsg.len_bytes(n):
            raise ValueError("EncPedPop investigation message has the wrong length")
        enc = parse_scalars(b[: 32 * n], n, "encrypted partial secshare")
        return CoordinatorInvestigationMsg(enc, parse_points_ext(b[32 * n :], n))

    def to_bytes(self) -> bytes:
        return b"".join(scalar_bytes(s) for s in self.enc_partial_secshares) + b"".join(
            cbytes_ext(p) for p in self.partial_pubshares
        )


class ParticipantState(NamedTuple):
    simpl_state: simplpedpop.ParticipantState
    pubnonce: bytes
    enckeys: list[bytes]
    participant_id: int


class ParticipantInvestigationData(NamedTuple):
    simpl_bstate: simplpedpop.ParticipantInvestigationData
    enc_secshare: int
    pads: list[int]

    def __repr__(self) -> str:
        return repr_hiding(self, ("pads",))


# ---------------------------------------------------------------------------------------------
# participant


def participant_step1(
    seed: bytes, deckey: bytes, enckeys: Sequence[bytes], t: int, participant_id: int, random: bytes
) -> tuple[ParticipantState, ParticipantMsg]:
    if not 0 < t < 2**32:
        raise ValueError("threshold out of range")
    if len(random) != 32:
        raise ValueError("random must be 32 bytes")
    n = len(enckeys)
    enc_context = serialize_enc_context(t, enckeys)
    # Everything that goes into the shares also goes into the nonce: derive the nonce from the seed.
    simpl_seed = tagged_hash_bip_dkg("encpedpop seed", seed + random + enc_context)
    simpl_aux_rand = tagged_hash_bip_dkg("simplpedpop aux", simpl_seed)
    secnonce = tagged_hash_bip_dkg("encpedpop secnonce", simpl_seed)
    nonce_scalar = int.from_bytes(secnonce, "big")
    if not 0 < nonce_scalar < N:
        raise ValueError("secnonce out of range")  # probability ~2^-128
    pubnonce = cbytes(point_mul_base(nonce_scalar))
    simpl_state, simpl_pmsg, shares = simplpedpop.participant_step1(
        simpl_seed, t, n, participant_id, simpl_aux_rand
    )
    enc_shares = encrypt_multi(secnonce, pubnonce, deckey, enckeys, enc_context, participant_id, shares)
    state = ParticipantState(simpl_state, pubnonce, list(enckeys), participant_id)
    return state, ParticipantMsg(simpl_pmsg, pubnonce, enc_shares)


def participant_step2(
    state: ParticipantState, deckey: bytes, cmsg: CoordinatorMsg, enc_secshare: int
) -> tuple[simplpedpop.DKGOutput, bytes]:
    simpl_state, pubnonce, enckeys, me = state
    simpl_cmsg, pubnonces = cmsg
    if pubnonces[me] != pubnonce:
        raise FaultyCoordinatorError("Coordinator replied with wrong pubnonce")
    enc_context = serialize_enc_context(simpl_state.t, enckeys)
    pads = decaps_multi(deckey, enckeys[me], pubnonces, enc_context, me)
    secshare = (enc_secshare - sum(pads)) % N
    try:
        output, eq_input = simplpedpop.participant_step2(simpl_state, simpl_cmsg, secshare)
    except UnknownFaultyParticipantOrCoordinatorError as e:
        inv_data = ParticipantInvestigationData(e.inv_data, enc_secshare, pads)
        raise UnknownFaultyParticipantOrCoordinatorError(inv_data, *e.args) from e
    return output, eq_input + b"".join(enckeys) + b"".join(pubnonces)


def participant_investigate(
    inv_data: ParticipantInvestigationData, cinv: CoordinatorInvestigationMsg
) -> NoReturn:
    simpl_inv_data, _enc_secshare, pads = inv_data
    n = simpl_inv_data.n
    if len(cinv.enc_partial_secshares) != n:
        raise ValueError("investigation message for another n")
    partial_secshares = [(c - pad) % N for c, pad in zip(cinv.enc_partial_secshares, pads, strict=True)]
    try:
        simplpedpop.participant_investigate(
            simpl_inv_data, simplpedpop.CoordinatorInvestigationMsg(cinv.partial_pubshares), partial_secshares
        )
    except SecshareSumError as e:
        # Encryption is additively homomorphic: the sums of the ciphertexts differ, so the
        # coordinator's aggregation is wrong.
        raise FaultyCoordinatorError(
            "Sum of encrypted partial secshares not equal to encrypted secshare"
        ) from e


# ---------------------------------------------------------------------------------------------
# coordinator


def coordinator_step(
    pmsgs: Sequence[ParticipantMsg], t: int, enckeys: Sequence[bytes]
) -> tuple[CoordinatorMsg, simplpedpop.DKGOutput, bytes, list[int]]:
    """(message to all, output, equality input, ``enc_secshares[i]`` = sum of ciphertexts for i)."""
    n = len(enckeys)
    if len(pmsgs) != n:
        raise ValueError("need n participant messages")
    simpl_cmsg, output, eq_input = simplpedpop.coordinator_step([m.simpl_pmsg for m in pmsgs], t, n)
    pubnonces = [m.pubnonce for m in pmsgs]
    enc_secshares = [sum(m.enc_shares[i] for m in pmsgs) % N for i in range(n)]
    eq_input += b"".join(enckeys) + b"".join(pubnonces)
    return CoordinatorMsg(simpl_cmsg, pubnonces), output, eq_input, enc_secshares


def coordinator_investigate(pmsgs: Sequence[ParticipantMsg]) -> list[CoordinatorInvestigationMsg]:
    n = len(pmsgs)
    simpl = simplpedpop.coordinator_investigate([m.simpl_pmsg for m in pmsgs])
    return [
        CoordinatorInvestigationMsg([m.enc_shares[i] for m in pmsgs], simpl[i].partial_pubshares)
        for i in range(n)
    ]
