"""Addresses: BIP-173 / BIP-350 examples, every network, and named rejections."""

from __future__ import annotations

import pytest
from coincurve import PrivateKey

from wallet.address import InvalidAddress, address_to_script, p2tr_address, p2wpkh_address, script_to_address
from wallet.bech32 import Encoding, convertbits, encode
from wallet.network import NETWORKS
from wallet.script import hash160

# examples from the BIP-173 and BIP-350 texts
VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "mainnet", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "mainnet",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "testnet",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    ("BC1SW50QGDZ25J", "mainnet", "6002751e"),
]


@pytest.mark.parametrize(("address", "network", "spk"), VALID, ids=[v[0][:14] for v in VALID])
def test_bip_examples(address: str, network: str, spk: str) -> None:
    assert address_to_script(address, network).hex() == spk
    assert script_to_address(bytes.fromhex(spk), network) == address.lower()


KEY = PrivateKey(b"\x01" * 32).public_key.format()
HRP = {"mainnet": "bc1", "testnet": "tb1", "signet": "tb1", "regtest": "bcrt1"}


@pytest.mark.parametrize("network", NETWORKS)
def test_round_trip_every_network(network: str) -> None:
    for addr in (p2wpkh_address(KEY, network), p2tr_address(KEY[1:], network)):
        assert addr.startswith(HRP[network])
        assert script_to_address(address_to_script(addr, network), network) == addr
    for spk in (bytes.fromhex("76a914" + "11" * 20 + "88ac"), bytes.fromhex("a914" + "22" * 20 + "87")):
        assert address_to_script(script_to_address(spk, network), network) == spk


def _bech(hrp: str, version: int, program: bytes, enc: Encoding) -> str:
    return encode(hrp, [version, *convertbits(program, 8, 5, True)], enc)


BAD = [
    (p2tr_address(KEY[1:], "testnet"), "mainnet", "wrong network"),
    (p2wpkh_address(KEY, "mainnet"), "regtest", "wrong network"),
    (p2wpkh_address(KEY, "regtest"), "testnet", "wrong network"),
    (p2wpkh_address(KEY, "mainnet")[:-1] + "q", "mainnet", "checksum"),
    (p2tr_address(KEY[1:], "mainnet")[:-2] + "qq", "mainnet", "checksum"),
    (_bech("bc", 1, KEY[1:], Encoding.BECH32), "mainnet", "must use bech32m, not bech32"),
    (_bech("bc", 0, KEY[1:21], Encoding.BECH32M), "mainnet", "must use bech32, not bech32m"),
    (_bech("bc", 0, b"\x01" * 25, Encoding.BECH32), "mainnet", "20 or 32 bytes"),
    (_bech("bc", 1, b"\x01" * 41, Encoding.BECH32M), "mainnet", "not in 2..40"),
    (_bech("bc", 17, b"\x01" * 32, Encoding.BECH32M), "mainnet", "witness version 17"),
    ("bc1qw508d6qejxtdg4y5r3zarvaRy0c5xw7kv8f3t4", "mainnet", "mixes upper and lower case"),
    ("1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "testnet", "wrong network"),
    ("1BoatSLRHtKNngkdXEeobR76b53LETtpyX", "mainnet", "checksum"),
    ("", "mainnet", "empty"),
]


@pytest.mark.parametrize(("address", "network", "problem"), BAD, ids=[f"bad-{i}" for i in range(len(BAD))])
def test_bad_addresses_named(address: str, network: str, problem: str) -> None:
    with pytest.raises(InvalidAddress, match=problem):
        address_to_script(address, network)


def test_unknown_network() -> None:
    with pytest.raises(ValueError, match="unknown network"):
        address_to_script(p2wpkh_address(KEY, "mainnet"), "bitcoin")


def test_btclib_agrees_on_addresses() -> None:
    from btclib.b32 import address_from_witness
    from btclib.network import NETWORKS as BTCLIB_NETS

    assert "mainnet" in BTCLIB_NETS
    for net in ("mainnet", "testnet", "regtest", "signet"):
        if net not in BTCLIB_NETS:
            continue
        assert address_from_witness(0, hash160(KEY), net) == (
            p2wpkh_address(KEY, net)
        )
        assert address_from_witness(1, KEY[1:], net) == p2tr_address(KEY[1:], net)
