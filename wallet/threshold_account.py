"""A Taproot account of a threshold key: addresses and the FROST tweaks that spend them.

The root is the extended public key (threshold public key, jointly generated chain code). Receive
addresses are ``0/i``, change addresses ``1/i`` (non-hardened: a threshold key derives publicly only).
Each address is the BIP-445 key-path-only P2TR output of the derived key, so spending it takes BIP-445
signing with the plain BIP-32 tweaks of each step followed by the x-only taproot tweak. The signer, the
intake and the broadcaster all derive through this one class, so they agree on scripts and tweaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from tss.secp256k1 import tagged_hash
from wallet.address import p2tr_address
from wallet.bip32 import ExtendedPubKey, derive, from_threshold_key, parse_path
from wallet.taproot import key_path_output

RECEIVE = 0
CHANGE = 1


def dkg_chain_code(params_hash: bytes, threshold_pubkey: bytes) -> bytes:
    """The BIP-32 chain code of a DKG's threshold key: every participant and the coordinator compute the
    same value from the session's public transcript, so no extra round is needed. (It is public key
    material, like an xpub's chain code: whoever knows it can link the wallet's addresses.)"""
    if len(params_hash) != 32 or len(threshold_pubkey) != 33:
        raise ValueError("params hash must be 32 bytes and the threshold key 33")
    return tagged_hash("mpcw/chaincode", params_hash + threshold_pubkey)


@dataclass(frozen=True)
class TaprootSpendKey:
    path: tuple[int, ...]
    internal_key: bytes  # 33-byte compressed derived key
    script_pubkey: bytes  # OP_1 <output key>
    output_xonly: bytes
    tweaks: tuple[bytes, ...]  # BIP-445 tweaks, in order
    is_xonly: tuple[bool, ...]


class ThresholdAccount:
    def __init__(self, threshold_pubkey: bytes, chain_code: bytes, network: str) -> None:
        self.root: ExtendedPubKey = from_threshold_key(threshold_pubkey, chain_code)
        self.network = network
        self._key = lru_cache(maxsize=4096)(self._derive)

    def _derive(self, path: tuple[int, ...]) -> TaprootSpendKey:
        d = derive(self.root, path)
        out = key_path_output(d.pubkey)
        return TaprootSpendKey(
            path=path,
            internal_key=d.pubkey,
            script_pubkey=out.script_pubkey,
            output_xonly=out.output_xonly,
            tweaks=(*d.tweaks, out.tweak),
            is_xonly=(*([False] * len(d.tweaks)), True),
        )

    def key(self, path: str | list[int] | tuple[int, ...]) -> TaprootSpendKey:
        return self._key(parse_path(path))

    def address(self, path: str | list[int] | tuple[int, ...]) -> str:
        return p2tr_address(self.key(path).output_xonly, self.network)

    def receive(self, index: int) -> TaprootSpendKey:
        return self.key((RECEIVE, index))

    def change(self, index: int) -> TaprootSpendKey:
        return self.key((CHANGE, index))

    def xpub(self) -> str:
        return self.root.to_string(self.network)
