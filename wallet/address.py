"""Addresses <-> scriptPubKeys on each network.

Segwit addresses (bech32 / bech32m, written in :mod:`wallet.bech32`) and, as destinations only, base58
P2PKH / P2SH. Every rejection is an :class:`InvalidAddress` that names the problem.
"""

from __future__ import annotations

import functools

from wallet.base58 import b58check_decode, b58check_encode
from wallet.bech32 import decode, decode_segwit_address, encode_segwit_address
from wallet.network import PARAMS, network_params
from wallet.script import classify, p2pkh_script, p2sh_script, p2tr_script, p2wpkh_script, witness_script


class InvalidAddress(ValueError):
    """An address that cannot be paid on the given network; the message says why."""


def p2tr_address(output_xonly: bytes, network: str) -> str:
    """bech32m address of the P2TR output key (already tweaked)."""
    if len(output_xonly) != 32:
        raise ValueError("P2TR output key must be 32 bytes (x-only)")
    return encode_segwit_address(network_params(network).hrp, 1, output_xonly)


def p2wpkh_address(pubkey33: bytes, network: str) -> str:
    return script_to_address(p2wpkh_script(pubkey33), network)


def script_to_address(script_pubkey: bytes, network: str) -> str:
    """The address of a standard scriptPubKey; ValueError for scripts without one."""
    params = network_params(network)
    info = classify(script_pubkey)
    if info.type == "p2pkh":
        return b58check_encode(bytes([params.p2pkh_prefix]) + info.program)
    if info.type == "p2sh":
        return b58check_encode(bytes([params.p2sh_prefix]) + info.program)
    if info.witness_version is not None:
        return encode_segwit_address(params.hrp, info.witness_version, info.program)
    raise ValueError("script has no address form (nonstandard)")


@functools.lru_cache(maxsize=4096)  # pure; every signer decodes each spend's recipient
def address_to_script(address: str, network: str) -> bytes:
    """The scriptPubKey that ``address`` pays on ``network``; :class:`InvalidAddress` otherwise."""
    params = network_params(network)
    if not isinstance(address, str) or not address:
        raise InvalidAddress("empty address")
    known_hrps = {p.hrp for p in PARAMS.values()}
    looks_segwit = address.lower().rsplit("1", 1)[0] in known_hrps if "1" in address[1:] else False
    try:
        decode(address)
        looks_segwit = True
    except ValueError as exc:
        if looks_segwit:
            raise InvalidAddress(f"invalid segwit address: {exc}") from exc
    if looks_segwit:
        return _segwit_to_script(address, params.hrp, network)
    try:
        payload = b58check_decode(address)
    except ValueError as exc:
        raise InvalidAddress(f"invalid address (neither segwit nor base58): {exc}") from exc
    if len(payload) != 21:
        raise InvalidAddress(f"base58 address payload is {len(payload)} bytes, expected 21")
    version, h = payload[0], payload[1:]
    if version == params.p2pkh_prefix:
        return p2pkh_script(h)
    if version == params.p2sh_prefix:
        return p2sh_script(h)
    raise InvalidAddress(f"base58 address version {version} is not a {network} P2PKH/P2SH (wrong network)")


def _segwit_to_script(address: str, hrp: str, network: str) -> bytes:
    try:
        got_hrp = decode(address)[0]
    except ValueError as exc:
        raise InvalidAddress(f"invalid segwit address: {exc}") from exc
    if got_hrp != hrp:
        owners = [n for n, p in PARAMS.items() if p.hrp == got_hrp]
        raise InvalidAddress(
            f"address has hrp {got_hrp!r} ({'/'.join(owners) or 'unknown'}), not {network}'s {hrp!r}"
            " (wrong network)"
        )
    try:
        version, program = decode_segwit_address(hrp, address)
    except ValueError as exc:
        raise InvalidAddress(f"invalid segwit address: {exc}") from exc
    return witness_script(version, program)


__all__ = [
    "InvalidAddress",
    "address_to_script",
    "p2tr_address",
    "p2tr_script",
    "p2wpkh_address",
    "p2wpkh_script",
    "script_to_address",
]
