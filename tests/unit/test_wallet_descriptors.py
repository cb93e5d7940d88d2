"""Descriptors: BIP-380 checksum, BIP-382 wpkh() and BIP-386 tr() examples, refusals."""

from __future__ import annotations

import pytest

from tss.secp256k1 import cbytes, point_mul_base
from wallet.bip32 import derive, from_threshold_key
from wallet.descriptors import (
    add_checksum,
    descriptor_checksum,
    parse_descriptor,
    split_checksum,
    tr_descriptor,
    wpkh_descriptor,
)
from wallet.script import p2wpkh_script
from wallet.taproot import key_path_output

KEY = "03a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd"
XPUB = (
    "xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1"
    "D3tgFxHmwMkQTPH"
)


def test_bip380_checksum_example() -> None:
    assert descriptor_checksum("raw(deadbeef)") == "89f8spxm"  # BIP-380
    assert split_checksum("raw(deadbeef)#89f8spxm") == "raw(deadbeef)"
    for bad in ("raw(deadbeef)#89f8spxn", "raw(deedbeef)#89f8spxm", "raw(deadbeef)#89f8spx"):
        with pytest.raises(ValueError, match="checksum"):
            split_checksum(bad)
    with pytest.raises(ValueError, match="missing"):
        split_checksum("raw(deadbeef)", require=True)


# (descriptor, scripts at index 0, 1, 2 or the single script): BIP-382 and BIP-386 test vectors
VALID = [
    (f"wpkh({KEY})", ["00149a1c78a507689f6f54b847ad1cef1e614ee23f1e"]),
    (
        f"wpkh([ffffffff/13']{XPUB}/1/2/*)",
        [
            "0014326b2249e3a25d5dc60935f044ee835d090ba859",
            "0014af0bd98abc2f2cae66e36896a39ffe2d32984fb7",
            "00141fa798efd1cbf95cebf912c031b8a4a6e9fb9f27",
        ],
    ),
    (f"tr({KEY[2:]})", ["512077aab6e066f8a7419c5ab714c12c67d25007ed55a43cadcacb4d7a970a093f11"]),
]


VALID_IDS = ["bip382-wpkh-hex", "bip382-wpkh-xpub", "bip386-tr-hex"]


@pytest.mark.parametrize(("desc", "scripts"), VALID, ids=VALID_IDS)
def test_bip_vectors(desc: str, scripts: list[str]) -> None:
    d = parse_descriptor(desc, "mainnet")
    if d.is_ranged:
        assert [d.script_pubkey(i).hex() for i in range(len(scripts))] == scripts
    else:
        assert d.script_pubkey().hex() == scripts[0]
    assert str(d) == add_checksum(desc)
    assert parse_descriptor(str(d), require_checksum=True) == d


INVALID = [
    ("tr(04a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd5b8dec5235a0fa8722476c7709c02559e3"
     "aa73aa03918ba2d492eea75abea235)", "uncompressed"),
    ("wpkh(04a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd5b8dec5235a0fa8722476c7709c0255"
     "9e3aa73aa03918ba2d492eea75abea235)", "uncompressed"),
    (f"wpkh({KEY[2:]})", "invalid public key"),
    (f"wsh(tr({KEY[2:]}))", "unsupported"),
    (f"sh(tr({KEY[2:]}))", "unsupported"),
    (f"tr({KEY[2:]},pk({KEY}))", "script tree"),
    (f"wpkh({XPUB}/1'/2)", "hardened"),
    (f"wpkh({XPUB}/1/*')", "hardened"),
    ("wpkh(L4rK1yDtCWekvXuE6oXD9jCYfFNV2cWRpVuPLBcCU2z8TrisoyY1)", "invalid public key|extended key"),
]


@pytest.mark.parametrize(("desc", "problem"), INVALID, ids=[f"invalid-{i}" for i in range(len(INVALID))])
def test_invalid(desc: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_descriptor(desc)


def test_threshold_descriptors() -> None:
    root = from_threshold_key(cbytes(point_mul_base(777)), b"\x01" * 32)
    for net in ("mainnet", "regtest"):
        x = root.to_string(net)
        tr = parse_descriptor(tr_descriptor(f"{x}/0/*"), net)
        wp = parse_descriptor(wpkh_descriptor(f"{x}/1/*"), net)
        d = derive(root, [0, 5])
        assert tr.script_pubkey(5) == key_path_output(d.pubkey).script_pubkey
        assert tr.key.key_at(5) == (d.pubkey, d.tweaks)
        assert wp.script_pubkey(3) == p2wpkh_script(derive(root, [1, 3]).pubkey)
    with pytest.raises(ValueError, match="wrong network"):
        parse_descriptor(tr_descriptor(f"{root.to_string('mainnet')}/0/*"), "regtest")
