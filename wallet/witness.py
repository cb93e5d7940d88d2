"""Final witnesses from signatures: P2TR key path (BIP-341) and P2WPKH (BIP-141 / BIP-143)."""

from __future__ import annotations

from wallet.der import der_decode, der_encode, is_strict_der, normalize_s
from wallet.sighash import SIGHASH_ALL, SIGHASH_DEFAULT, TAPROOT_HASH_TYPES
from wallet.verify import ECDSA_HASH_TYPES


def p2tr_key_path_witness(signature: bytes, hash_type: int = SIGHASH_DEFAULT) -> list[bytes]:
    """``[sig]`` for SIGHASH_DEFAULT (64 bytes), ``[sig || hash_type]`` otherwise (65 bytes). A 65-byte
    signature is accepted as is when its last byte equals ``hash_type``."""
    if hash_type not in TAPROOT_HASH_TYPES:
        raise ValueError(f"invalid taproot hash type 0x{hash_type:02x}")
    if len(signature) == 65:
        if signature[64] != hash_type or hash_type == SIGHASH_DEFAULT:
            raise ValueError("65-byte signature's hash type byte does not match")
        return [signature]
    if len(signature) != 64:
        raise ValueError(f"Schnorr signature must be 64 bytes, got {len(signature)}")
    return [signature if hash_type == SIGHASH_DEFAULT else signature + bytes([hash_type])]


def ecdsa_der(signature: bytes) -> bytes:
    """A strict-DER, low-S signature from a 64-byte compact ``r || s`` or an existing DER encoding."""
    if len(signature) == 64:
        r, s = normalize_s(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        return der_encode(r, s)
    if not is_strict_der(signature):
        raise ValueError("ECDSA signature is neither 64-byte compact nor strict DER")
    r, s = normalize_s(*der_decode(signature))
    return der_encode(r, s)


def p2wpkh_witness(signature: bytes, pubkey33: bytes, hash_type: int = SIGHASH_ALL) -> list[bytes]:
    """``[DER(sig) || hash_type, pubkey]``; ``signature`` is compact ``r || s`` or DER (made low-S)."""
    if hash_type not in ECDSA_HASH_TYPES:
        raise ValueError(f"invalid ECDSA hash type 0x{hash_type:02x}")
    if len(pubkey33) != 33 or pubkey33[0] not in (2, 3):
        raise ValueError("P2WPKH needs a 33-byte compressed public key")
    return [ecdsa_der(signature) + bytes([hash_type]), pubkey33]
