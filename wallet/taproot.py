"""BIP-341 output keys: tapleaf/tapbranch hashes, script-tree merkle roots, the TapTweak and the
tweaked output key, and the BIP-445 key-path-only commitment used for threshold keys.

For a threshold (FROST) key there is no script tree, but BIP-445 (following BIP-341's recommendation)
commits the output key to an *unspendable script path*: ``Q = lift_x(xonly(P)) + t*G`` with
``t = hash_TapTweak(xonly(P))``. The signer applies ``t`` as an x-only tweak; :func:`key_path_output`
returns it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tss.secp256k1 import N, has_even_y, lift_x, point_add, point_mul_base, tagged_hash, xbytes
from wallet.sighash import ser_string

LEAF_VERSION_TAPSCRIPT = 0xC0


def tap_leaf_hash(script: bytes, leaf_version: int = LEAF_VERSION_TAPSCRIPT) -> bytes:
    if leaf_version & 1:
        raise ValueError("leaf version must be even")
    return tagged_hash("TapLeaf", bytes([leaf_version]) + ser_string(script))


def tap_branch_hash(a: bytes, b: bytes) -> bytes:
    """Hash of two child hashes, in lexicographic order."""
    return tagged_hash("TapBranch", min(a, b) + max(a, b))


def script_tree_merkle_root(tree: Any) -> bytes:
    """Merkle root of a script tree given as nested pairs of leaves; a leaf is a ``(script,
    leaf_version)`` tuple or a dict with ``script`` (hex) and ``leafVersion`` (the BIP-341 vector form)."""
    if isinstance(tree, dict):
        return tap_leaf_hash(bytes.fromhex(tree["script"]), int(tree["leafVersion"]))
    if isinstance(tree, tuple) and len(tree) == 2 and isinstance(tree[0], bytes):
        return tap_leaf_hash(tree[0], int(tree[1]))
    if isinstance(tree, (list, tuple)) and len(tree) == 2:
        return tap_branch_hash(script_tree_merkle_root(tree[0]), script_tree_merkle_root(tree[1]))
    if isinstance(tree, (list, tuple)) and len(tree) == 1:
        return script_tree_merkle_root(tree[0])
    raise ValueError("script tree must be a leaf or a pair of subtrees")


def taproot_tweak(internal_xonly: bytes, merkle_root: bytes | None = None) -> bytes:
    """``hash_TapTweak(xonly(P) || merkle_root)``, the root omitted when there is none (32 bytes)."""
    if len(internal_xonly) != 32:
        raise ValueError("internal key must be 32 bytes (x-only)")
    if merkle_root is not None and len(merkle_root) != 32:
        raise ValueError("merkle root must be 32 bytes")
    t = tagged_hash("TapTweak", internal_xonly + (merkle_root or b""))
    if int.from_bytes(t, "big") >= N:
        raise ValueError("taproot tweak out of range")  # probability ~2^-128
    return t


def taproot_output_key(internal_xonly: bytes, merkle_root: bytes | None = None) -> tuple[bytes, int]:
    """(x-only output key Q, parity of Q's y): ``Q = lift_x(P) + t*G``."""
    t = int.from_bytes(taproot_tweak(internal_xonly, merkle_root), "big")
    q = point_add(lift_x(internal_xonly), point_mul_base(t))
    if q is None:
        raise ValueError("tweaked key is the point at infinity")
    return xbytes(q), 0 if has_even_y(q) else 1


def taproot_tweak_seckey(seckey: bytes, merkle_root: bytes | None = None) -> bytes:
    """The secret key of the output key (single-key tests only; a threshold key is never whole)."""
    d = int.from_bytes(seckey, "big")
    if not 0 < d < N:
        raise ValueError("secret key out of range")
    p = point_mul_base(d)
    if not has_even_y(p):
        d = N - d
    t = int.from_bytes(taproot_tweak(xbytes(p), merkle_root), "big")
    return ((d + t) % N).to_bytes(32, "big")


@dataclass(frozen=True)
class TaprootKeyPathOutput:
    """A key-path-only taproot output for a (threshold) internal key."""

    internal_xonly: bytes
    tweak: bytes  # x-only tweak for the signer: hash_TapTweak(internal_xonly)
    output_xonly: bytes
    output_parity: int

    @property
    def script_pubkey(self) -> bytes:
        return b"\x51\x20" + self.output_xonly


def key_path_output(internal_key: bytes) -> TaprootKeyPathOutput:
    """The BIP-445 output of ``internal_key`` (33-byte compressed or 32-byte x-only), committing to an
    unspendable script path."""
    if len(internal_key) == 33:
        if internal_key[0] not in (2, 3):
            raise ValueError("compressed key must start with 02 or 03")
        internal_key = internal_key[1:]
    if len(internal_key) != 32:
        raise ValueError("internal key must be 33-byte compressed or 32-byte x-only")
    lift_x(internal_key)  # must be on the curve
    q, parity = taproot_output_key(internal_key, None)
    return TaprootKeyPathOutput(internal_key, taproot_tweak(internal_key, None), q, parity)
