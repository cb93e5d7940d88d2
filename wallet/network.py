"""The four networks and their encodings (address prefixes, bech32 hrp, extended-key versions)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Network = Literal["mainnet", "testnet", "signet", "regtest"]
NETWORKS: tuple[Network, ...] = get_args(Network)


@dataclass(frozen=True)
class NetworkParams:
    name: Network
    hrp: str  # BIP-173 human-readable part
    p2pkh_prefix: int  # base58check version byte
    p2sh_prefix: int
    xpub_version: bytes  # BIP-32 serialization version of public extended keys
    xprv_version: bytes  # recognised only to reject private keys with a clear message


_MAIN = NetworkParams("mainnet", "bc", 0x00, 0x05, bytes.fromhex("0488b21e"), bytes.fromhex("0488ade4"))
_TEST = NetworkParams("testnet", "tb", 0x6F, 0xC4, bytes.fromhex("043587cf"), bytes.fromhex("04358394"))

PARAMS: dict[Network, NetworkParams] = {
    "mainnet": _MAIN,
    "testnet": _TEST,
    # signet and regtest share testnet's base58 prefixes and extended-key versions; only regtest
    # has its own bech32 hrp.
    "signet": NetworkParams("signet", "tb", 0x6F, 0xC4, _TEST.xpub_version, _TEST.xprv_version),
    "regtest": NetworkParams("regtest", "bcrt", 0x6F, 0xC4, _TEST.xpub_version, _TEST.xprv_version),
}


def network_params(network: str) -> NetworkParams:
    """The parameters of ``network``; ValueError for an unknown name."""
    if network not in PARAMS:
        raise ValueError(f"unknown network {network!r} (expected one of {', '.join(NETWORKS)})")
    return PARAMS[network]
