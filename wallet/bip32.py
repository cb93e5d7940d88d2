"""BIP-32 *public* derivation for a threshold key, and xpub import/export.

A threshold key has no whole private key, so only non-hardened (public) derivation exists. Deriving a
child returns, besides the child key, the tweaks the signers need:

* ``tweaks``: one BIP-445 *plain* tweak per step (the 32-byte ``I_L`` of that step), applied in order
  by FROST signing (``is_xonly = False``) before the BIP-341 x-only TapTweak;
* ``shift``: their sum mod n, the additive offset a threshold-ECDSA (CGGMP24) signer adds to its key:
  ``child_pubkey = root_pubkey + shift*G``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from tss.secp256k1 import N, cbytes, cpoint, point_add, point_mul_base
from wallet.base58 import b58check_decode, b58check_encode
from wallet.network import NETWORKS, PARAMS, Network, network_params
from wallet.script import hash160

HARDENED = 0x80000000


@dataclass(frozen=True)
class ExtendedPubKey:
    """An extended public key (``xpub`` / ``tpub``)."""

    pubkey: bytes  # 33-byte compressed
    chain_code: bytes
    depth: int = 0
    parent_fingerprint: bytes = b"\x00\x00\x00\x00"
    child_number: int = 0

    def __post_init__(self) -> None:
        if len(self.chain_code) != 32:
            raise ValueError("chain code must be 32 bytes")
        if len(self.parent_fingerprint) != 4:
            raise ValueError("parent fingerprint must be 4 bytes")
        if not 0 <= self.depth <= 255:
            raise ValueError("depth must be 0..255")
        if not 0 <= self.child_number <= 0xFFFFFFFF:
            raise ValueError("child number out of range")
        if self.depth == 0 and self.parent_fingerprint != b"\x00" * 4:
            raise ValueError("zero depth with non-zero parent fingerprint")
        if self.depth == 0 and self.child_number != 0:
            raise ValueError("zero depth with non-zero child number")
        if len(self.pubkey) != 33 or self.pubkey[0] not in (2, 3):
            raise ValueError(f"invalid public key prefix {self.pubkey[:1].hex()} (must be 02 or 03)")
        cpoint(self.pubkey)  # on the curve

    @property
    def fingerprint(self) -> bytes:
        """HASH160(pubkey)[:4]: the key identifier's first 4 bytes."""
        return hash160(self.pubkey)[:4]

    def serialize(self, network: str) -> bytes:
        return (
            network_params(network).xpub_version
            + bytes([self.depth])
            + self.parent_fingerprint
            + self.child_number.to_bytes(4, "big")
            + self.chain_code
            + self.pubkey
        )

    def to_string(self, network: str) -> str:
        """``xpub...`` on mainnet, ``tpub...`` on testnet, signet and regtest."""
        return b58check_encode(self.serialize(network))


def from_threshold_key(pubkey: bytes, chain_code: bytes) -> ExtendedPubKey:
    """The root extended key of a threshold public key and its (jointly generated) chain code."""
    return ExtendedPubKey(pubkey, chain_code)


def parse_xpub(s: str, network: str | None = None) -> tuple[ExtendedPubKey, tuple[Network, ...]]:
    """Decode an extended public key; returns the key and the networks its version belongs to (testnet,
    signet and regtest share one). With ``network``, a key of another network is refused.
    ValueError names the problem; private extended keys are refused (the wallet holds none)."""
    try:
        data = b58check_decode(s)
    except ValueError as exc:
        raise ValueError(f"invalid extended key: {exc}") from exc
    if len(data) != 78:
        raise ValueError(f"extended key is {len(data)} bytes, expected 78")
    version = data[:4]
    nets = tuple(n for n in NETWORKS if PARAMS[n].xpub_version == version)
    if not nets:
        if any(PARAMS[n].xprv_version == version for n in NETWORKS):
            raise ValueError("private extended keys are not accepted (threshold keys have none)")
        raise ValueError(f"unknown extended key version {version.hex()}")
    if network is not None and network_params(network).name not in nets:
        raise ValueError(f"extended key is for {'/'.join(nets)}, not {network} (wrong network)")
    key = ExtendedPubKey(
        pubkey=data[45:78],
        chain_code=data[13:45],
        depth=data[4],
        parent_fingerprint=data[5:9],
        child_number=int.from_bytes(data[9:13], "big"),
    )
    return key, nets


def ckd_pub(parent: ExtendedPubKey, index: int) -> tuple[ExtendedPubKey, bytes]:
    """BIP-32 ``CKDpub``: (child, I_L as the 32-byte plain tweak). ValueError for a hardened index or
    the (probability 2^-127) invalid child, which BIP-32 says to skip."""
    if not 0 <= index < HARDENED:
        raise ValueError(f"index {index} is hardened or out of range: public derivation only")
    if parent.depth == 255:
        raise ValueError("maximum depth reached")
    i = hmac.new(parent.chain_code, parent.pubkey + index.to_bytes(4, "big"), hashlib.sha512).digest()
    il, ir = i[:32], i[32:]
    t = int.from_bytes(il, "big")
    if t >= N:
        raise ValueError(f"child {index} is invalid (I_L >= n); use the next index")
    child_point = point_add(cpoint(parent.pubkey), point_mul_base(t))
    if child_point is None:
        raise ValueError(f"child {index} is the point at infinity; use the next index")
    child = ExtendedPubKey(cbytes(child_point), ir, parent.depth + 1, parent.fingerprint, index)
    return child, il


@dataclass(frozen=True)
class Derivation:
    """Result of deriving a path from a (threshold) extended key."""

    key: ExtendedPubKey
    path: tuple[int, ...]
    tweaks: tuple[bytes, ...]  # BIP-445 plain tweaks, one per step, in order

    @property
    def shift(self) -> int:
        """Sum of the tweaks mod n: the ECDSA key offset (child = root + shift*G)."""
        return sum(int.from_bytes(t, "big") for t in self.tweaks) % N

    @property
    def pubkey(self) -> bytes:
        return self.key.pubkey


def parse_path(path: str | list[int] | tuple[int, ...]) -> tuple[int, ...]:
    """``"m/0/5"``, ``"0/5"`` or a list of indices; hardened steps (``'`` / ``h``) are refused."""
    if not isinstance(path, str):
        steps = tuple(path)
    else:
        parts = [p for p in path.split("/") if p]
        if parts and parts[0] == "m":
            parts = parts[1:]
        steps_l = []
        for p in parts:
            if p[-1:] in ("'", "h", "H"):
                raise ValueError(f"hardened step {p!r}: threshold keys derive publicly only")
            if not p.isdigit():
                raise ValueError(f"invalid path step {p!r}")
            steps_l.append(int(p))
        steps = tuple(steps_l)
    for s in steps:
        if not 0 <= s < HARDENED:
            raise ValueError(f"path step {s} is hardened or out of range")
    return steps


def derive(root: ExtendedPubKey, path: str | list[int] | tuple[int, ...]) -> Derivation:
    """Derive ``path`` (non-hardened only) from ``root``, collecting the per-step tweaks."""
    steps = parse_path(path)
    key = root
    tweaks = []
    for index in steps:
        key, tweak = ckd_pub(key, index)
        tweaks.append(tweak)
    return Derivation(key, steps, tuple(tweaks))

