"""BIP-32 public derivation (every non-hardened step of the BIP's vectors, from xpubs), invalid keys,
and the tweaks handed to the signers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from tests.vectors import load_json
from tss.secp256k1 import cbytes, cpoint, point_add, point_mul_base
from wallet.bip32 import ckd_pub, derive, from_threshold_key, parse_path, parse_xpub

V = load_json("bip32/test-vectors.json")
CHAINS = [v for v in V["vectors"] if "chains" in v]
INVALID = [k for v in V["vectors"] for k in v.get("invalid_keys", [])]


def _steps() -> list[tuple[str, str, int, str]]:
    out = []
    for v in CHAINS:
        chain = v["chains"]
        for parent, child in itertools.pairwise(chain):
            last = child["path"].split("/")[-1]
            if not last.endswith("'"):
                out.append((f"v{v['vector']}-{child['path']}", parent["xpub"], int(last), child["xpub"]))
    return out


STEPS = _steps()


@pytest.mark.parametrize(("name", "parent", "index", "child"), STEPS, ids=[s[0] for s in STEPS])
def test_public_derivation_step(name: str, parent: str, index: int, child: str) -> None:
    key, nets = parse_xpub(parent, "mainnet")
    assert nets == ("mainnet",)
    assert key.to_string("mainnet") == parent
    got, tweak = ckd_pub(key, index)
    assert got.to_string("mainnet") == child
    # the tweak is what the signer adds to its key: child = parent + I_L*G
    assert cbytes(point_add(cpoint(key.pubkey), point_mul_base(int.from_bytes(tweak, "big")))) == got.pubkey


@pytest.mark.parametrize("case", INVALID, ids=[f"invalid-{i}" for i in range(len(INVALID))])
def test_invalid_keys_rejected(case: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        parse_xpub(case["key"])


def test_hardened_refused() -> None:
    key, _ = parse_xpub(CHAINS[0]["chains"][0]["xpub"])
    with pytest.raises(ValueError, match="public derivation only"):
        ckd_pub(key, 0x80000000)
    with pytest.raises(ValueError, match="hardened"):
        parse_path("m/0'/1")
    with pytest.raises(ValueError, match="hardened"):
        parse_path("0/1h")


def test_multi_step_shift_and_tweaks() -> None:
    """m/0'/1/2'/2/1000000000 from the m/0'/1/2' xpub: two public steps."""
    chain = CHAINS[0]["chains"]
    root, _ = parse_xpub(chain[3]["xpub"])
    d = derive(root, "m/2/1000000000")
    assert d.key.to_string("mainnet") == chain[5]["xpub"]
    assert len(d.tweaks) == 2 and all(len(t) == 32 for t in d.tweaks)
    assert cbytes(point_add(cpoint(root.pubkey), point_mul_base(d.shift))) == d.pubkey
    assert derive(root, [2, 1000000000]) == d
    assert derive(root, "m").tweaks == () and derive(root, "").shift == 0


def test_threshold_root_and_networks() -> None:
    pub = cbytes(point_mul_base(12345))
    root = from_threshold_key(pub, b"\x07" * 32)
    x = root.to_string("mainnet")
    t = root.to_string("regtest")
    assert x.startswith("xpub") and t.startswith("tpub")
    assert t == root.to_string("testnet") == root.to_string("signet")
    assert parse_xpub(t)[1] == ("testnet", "signet", "regtest")
    assert parse_xpub(t, "regtest")[0] == root
    with pytest.raises(ValueError, match="wrong network"):
        parse_xpub(x, "testnet")
    with pytest.raises(ValueError, match="wrong network"):
        parse_xpub(t, "mainnet")
