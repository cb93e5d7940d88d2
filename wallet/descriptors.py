"""Output script descriptors for the wallet's keys: ``tr(KEY)`` (BIP-386, key path only) and
``wpkh(KEY)`` (BIP-382), with the BIP-380 checksum.

``KEY`` is a hex public key (33-byte compressed; 32-byte x-only inside ``tr``) or an extended public key
with an optional origin ``[fingerprint/path]`` and a non-hardened path, optionally ending in ``/*``.
Script trees, private keys and hardened steps are refused with a ValueError naming them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tss.secp256k1 import cpoint, lift_x
from wallet.bech32 import CHARSET as CHECKSUM_CHARSET
from wallet.bip32 import HARDENED, ExtendedPubKey, ckd_pub, parse_xpub
from wallet.script import p2wpkh_script
from wallet.taproot import key_path_output

INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    "ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
)
_GEN = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _polymod(symbols: list[int]) -> int:
    c = 1
    for v in symbols:
        c0 = c >> 35
        c = ((c & 0x7FFFFFFFF) << 5) ^ v
        for i in range(5):
            if (c0 >> i) & 1:
                c ^= _GEN[i]
    return c


def descriptor_checksum(desc: str) -> str:
    """The 8-character BIP-380 checksum of ``desc`` (without ``#``)."""
    symbols: list[int] = []
    groups: list[int] = []
    for ch in desc:
        v = INPUT_CHARSET.find(ch)
        if v < 0:
            raise ValueError(f"invalid descriptor character {ch!r}")
        symbols.append(v & 31)
        groups.append(v >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    c = _polymod([*symbols, 0, 0, 0, 0, 0, 0, 0, 0]) ^ 1
    return "".join(CHECKSUM_CHARSET[(c >> (5 * (7 - i))) & 31] for i in range(8))


def add_checksum(desc: str) -> str:
    return f"{desc}#{descriptor_checksum(desc)}"


def split_checksum(desc: str, require: bool = False) -> str:
    """The descriptor without its checksum, checked; ValueError on a bad or (if required) missing one."""
    if "#" not in desc:
        if require:
            raise ValueError("descriptor checksum missing")
        return desc
    body, _, check = desc.rpartition("#")
    if len(check) != 8:
        raise ValueError(f"descriptor checksum must be 8 characters, got {len(check)}")
    expected = descriptor_checksum(body)
    if check != expected:
        raise ValueError(f"descriptor checksum mismatch: got {check}, expected {expected}")
    return body


@dataclass(frozen=True)
class KeyExpression:
    """A key in a descriptor: a fixed key, or an xpub with a path and an optional ``*`` wildcard."""

    text: str
    fixed: bytes | None = None  # 33-byte compressed or 32-byte x-only
    xpub: ExtendedPubKey | None = None
    path: tuple[int, ...] = ()
    wildcard: bool = False

    def key_at(self, index: int | None = None) -> tuple[bytes, tuple[bytes, ...]]:
        """(public key, BIP-32 plain tweaks from the xpub) at wildcard position ``index``."""
        if self.fixed is not None:
            return self.fixed, ()
        assert self.xpub is not None
        steps = list(self.path)
        if self.wildcard:
            if index is None:
                raise ValueError("ranged descriptor needs an index")
            steps.append(index)
        elif index is not None:
            raise ValueError("descriptor is not ranged")
        key, tweaks = self.xpub, []
        for s in steps:
            key, t = ckd_pub(key, s)
            tweaks.append(t)
        return key.pubkey, tuple(tweaks)


def _parse_key(text: str, network: str | None, xonly_ok: bool) -> KeyExpression:
    body = text
    if body.startswith("["):
        end = body.find("]")
        if end < 0:
            raise ValueError("key origin has no closing ']'")
        origin = body[1:end].split("/")
        if len(origin[0]) != 8 or any(c not in "0123456789abcdef" for c in origin[0]):
            raise ValueError("key origin fingerprint must be 8 lower-case hex characters")
        body = body[end + 1 :]
    parts = body.split("/")
    head = parts[0]
    if all(c in "0123456789abcdefABCDEF" for c in head) and head:
        if len(parts) > 1:
            raise ValueError("a hex public key cannot have a derivation path")
        key = bytes.fromhex(head)
        if len(key) == 65:
            raise ValueError("uncompressed public keys are not allowed here")
        if len(key) == 32 and xonly_ok:
            lift_x(key)
            return KeyExpression(text, fixed=key)
        if len(key) == 33 and key[0] in (2, 3):
            cpoint(key)
            return KeyExpression(text, fixed=key)
        raise ValueError(f"invalid public key {head!r}")
    xpub, _ = parse_xpub(head, network)
    steps = parts[1:]
    wildcard = False
    if steps and steps[-1] in ("*", "*'", "*h"):
        if steps[-1] != "*":
            raise ValueError("hardened wildcard: threshold keys derive publicly only")
        wildcard = True
        steps = steps[:-1]
    path = []
    for s in steps:
        if s[-1:] in ("'", "h"):
            raise ValueError(f"hardened step {s!r}: threshold keys derive publicly only")
        if not s.isdigit() or int(s) >= HARDENED:
            raise ValueError(f"invalid derivation step {s!r}")
        path.append(int(s))
    return KeyExpression(text, xpub=xpub, path=tuple(path), wildcard=wildcard)


@dataclass(frozen=True)
class Descriptor:
    kind: Literal["tr", "wpkh"]
    key: KeyExpression

    def __str__(self) -> str:
        return add_checksum(f"{self.kind}({self.key.text})")

    @property
    def is_ranged(self) -> bool:
        return self.key.wildcard

    def script_pubkey(self, index: int | None = None) -> bytes:
        pub, _ = self.key.key_at(index)
        if self.kind == "wpkh":
            return p2wpkh_script(pub)
        return key_path_output(pub).script_pubkey


def parse_descriptor(desc: str, network: str | None = None, require_checksum: bool = False) -> Descriptor:
    """Parse ``tr(KEY)`` or ``wpkh(KEY)``; ValueError naming what is not supported or wrong."""
    body = split_checksum(desc.strip(), require_checksum)
    for kind in ("tr", "wpkh"):
        if body.startswith(kind + "(") and body.endswith(")"):
            inner = body[len(kind) + 1 : -1]
            if "," in inner or "(" in inner:
                raise ValueError(f"{kind}() with a script tree or nested expression is not supported")
            return Descriptor(kind, _parse_key(inner, network, xonly_ok=kind == "tr"))
    head = body.split("(", 1)[0]
    raise ValueError(f"unsupported descriptor {head}(): only tr(KEY) and wpkh(KEY)")


def tr_descriptor(key: str) -> str:
    """``tr(KEY)#checksum`` for a key expression (hex key or xpub with path)."""
    parse_descriptor(f"tr({key})")
    return add_checksum(f"tr({key})")


def wpkh_descriptor(key: str) -> str:
    parse_descriptor(f"wpkh({key})")
    return add_checksum(f"wpkh({key})")
