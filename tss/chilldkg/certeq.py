"""BIP-340 signatures with a tag prefix, and CertEq, ChillDKG's equality check.

**Signatures.** BIP-340 Schnorr signing is written here on top of :mod:`tss.secp256k1` because the
draft signs messages that are not 32 bytes long, and its proofs of possession use BIP-340 with a
different tag prefix (``"BIP DKG/pop message"`` instead of ``"BIP0340"``, i.e. the tags
``<prefix>/aux``, ``<prefix>/nonce``, ``<prefix>/challenge``). Standard-tag signatures are verified by
libsecp256k1 (:func:`tss.secp256k1.schnorr_verify`); prefixed ones by checking ``R = s*G - e*P`` with
libsecp256k1 point operations.

**CertEq.** Every participant signs ``certeq_message(x, i)`` with its host key; the coordinator
concatenates the ``n`` signatures into a certificate; a participant that sees a certificate with all
``n`` valid signatures knows that every participant saw the same ``x`` (the "equality input", which
also is the recovery data without the certificate). Messages are domain-separated as BIP-340
recommends: a 33-byte zero-padded tag, the signer's 4-byte index, then ``x``. Recovery
acknowledgments are the same construction with another tag.
"""

from __future__ import annotations

from collections.abc import Sequence

from tss.secp256k1 import (
    N,
    P,
    Point,
    cbytes,
    has_even_y,
    point_mul,
    point_mul_base,
    point_neg,
    point_tweak_add,
    schnorr_verify,
    tagged_hash,
    xbytes,
)

from .errors import InvalidSignatureInCertificateError
from .util import BIP_TAG

# ---------------------------------------------------------------------------------------------
# BIP-340 with a tag prefix


def schnorr_sign(msg: bytes, seckey: bytes, aux_rand: bytes, tag_prefix: str = "BIP0340") -> bytes:
    """BIP-340 ``Sign(sk, m)`` with auxiliary randomness, for a message of any length."""
    d0 = int.from_bytes(seckey, "big")
    if len(seckey) != 32 or not 1 <= d0 < N:
        raise ValueError("secret key must be 32 bytes encoding an integer in 1..N-1")
    if len(aux_rand) != 32:
        raise ValueError("aux_rand must be 32 bytes")
    pub = point_mul_base(d0)
    d = d0 if has_even_y(pub) else N - d0
    px = xbytes(pub)
    masked = (d ^ int.from_bytes(tagged_hash(tag_prefix + "/aux", aux_rand), "big")).to_bytes(32, "big")
    k0 = int.from_bytes(tagged_hash(tag_prefix + "/nonce", masked + px + msg), "big") % N
    if k0 == 0:
        raise ValueError("nonce is zero")  # probability ~2^-256
    r_point = point_mul_base(k0)
    k = k0 if has_even_y(r_point) else N - k0
    rx = xbytes(r_point)
    e = int.from_bytes(tagged_hash(tag_prefix + "/challenge", rx + px + msg), "big") % N
    return rx + ((k + e * d) % N).to_bytes(32, "big")


def schnorr_verify_point(msg: bytes, pubkey: Point, sig: bytes, tag_prefix: str) -> bool:
    """BIP-340 ``Verify`` against ``lift_x(xbytes(pubkey))`` (an already parsed point: no square root)."""
    if pubkey is None or len(sig) != 64:
        return False
    r = int.from_bytes(sig[:32], "big")
    s = int.from_bytes(sig[32:], "big")
    if r >= P or s >= N:
        return False
    pub = pubkey if has_even_y(pubkey) else point_neg(pubkey)
    e = int.from_bytes(tagged_hash(tag_prefix + "/challenge", sig[:32] + xbytes(pub) + msg), "big") % N
    # R = s*G - e*P = s*G + (N - e)*P
    r_point = point_tweak_add(point_mul(pub, N - e), s)
    if r_point is None:
        return False
    return cbytes(r_point) == b"\x02" + sig[:32]


# ---------------------------------------------------------------------------------------------
# CertEq


def _domain_separated(tag: str, participant_id: int, x: bytes) -> bytes:
    prefix = (BIP_TAG + tag).encode()
    return prefix + b"\x00" * (33 - len(prefix)) + participant_id.to_bytes(4, "big") + x


def certeq_message(x: bytes, participant_id: int) -> bytes:
    return _domain_separated("certeq message", participant_id, x)


def certeq_participant_step(hostseckey: bytes, participant_id: int, x: bytes, aux_rand: bytes) -> bytes:
    """This participant's 64-byte signature on the equality input ``x``."""
    return schnorr_sign(certeq_message(x, participant_id), hostseckey, aux_rand)


def certeq_cert_len(n: int) -> int:
    return 64 * n


def certeq_coordinator_step(sigs: Sequence[bytes]) -> bytes:
    return b"".join(sigs)


def certeq_verify(hostpubkeys: Sequence[bytes], x: bytes, cert: bytes) -> None:
    """Check all ``n`` signatures of ``cert`` on ``x``; :class:`InvalidSignatureInCertificateError` names
    the first bad one. The host key's sign byte can be dropped because the message commits to ``x``,
    which contains every full host public key."""
    if len(cert) != certeq_cert_len(len(hostpubkeys)):
        raise ValueError("certificate has the wrong length")
    for i, hostpubkey in enumerate(hostpubkeys):
        if not schnorr_verify(certeq_message(x, i), hostpubkey[1:33], cert[64 * i : 64 * i + 64]):
            raise InvalidSignatureInCertificateError(i)


# ---------------------------------------------------------------------------------------------
# recovery acknowledgments


def recovery_ack_message(x: bytes, participant_id: int) -> bytes:
    return _domain_separated("recovery acknowledgment", participant_id, x)


def recovery_ack_sign(hostseckey: bytes, participant_id: int, x: bytes, aux_rand: bytes) -> bytes:
    return schnorr_sign(recovery_ack_message(x, participant_id), hostseckey, aux_rand)


def recovery_ack_verify(hostpubkey: bytes, participant_id: int, x: bytes, sig: bytes) -> bool:
    return schnorr_verify(recovery_ack_message(x, participant_id), hostpubkey[1:33], sig)
