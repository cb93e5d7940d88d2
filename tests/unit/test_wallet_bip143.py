"""BIP-143 sighash: the BIP's native P2WPKH example and python-bitcoinlib's SignatureHash on random
transactions."""

from __future__ import annotations

import hashlib

from bitcoin.core import COutPoint, CScript, CTransaction, CTxIn, CTxOut
from bitcoin.core.script import SIGVERSION_WITNESS_V0, SignatureHash
from coincurve import PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from wallet.sighash import SighashCache, bip143_sighash, p2wpkh_script_code
from wallet.transaction import Prevout, parse_transaction, with_witnesses
from wallet.verify import verify_input
from wallet.witness import p2wpkh_witness

# --- the "Native P2WPKH" example of BIP-143 (values copied from the BIP text) ---
BIP143_UNSIGNED = bytes.fromhex(
    "0100000002fff7f7881a8099afa6940d42d1e7f6362bec38171ea3edf433541db4e4ad969f0000000000eeffffff"
    "ef51e1b804cc89d182d279655c3aa89e815b1b309fe287d9b2b55d57b90ec68a0100000000ffffffff02202cb2060000"
    "00001976a9148280b37df378db99f66f85c95a783a76ac7a6d5988ac9093510d000000001976a9143bde42dbee7e4dbe"
    "6a21b2d50ce2f0167faa815988ac11000000"
)
BIP143_PRIVKEY = bytes.fromhex("619c335025c7f4012e556c2a58b2506e30b8511b53ade95ea316fd8c3286feb9")
BIP143_PUBKEY = bytes.fromhex("025476c2e83188368da1ff3e292e7acafcdb3566bb0ad253f62fc70f07aeee6357")
BIP143_KEYHASH = bytes.fromhex("1d0f172a0ecb48aee1be1f2687d2963ae33f71a1")
BIP143_AMOUNT = 600_000_000
BIP143_HASH_PREVOUTS = "96b827c8483d4e9b96712b6713a7b68d6e8003a781feba36c31143470b4efd37"
BIP143_HASH_SEQUENCE = "52b0a642eea2fb7ae638c36f6252b6750293dbe574a806984b8e4d8548339a3b"
BIP143_HASH_OUTPUTS = "863ef3e1a92afbfdb97f31ad0fc7683ee943e9abcf2501590ff8f6551f47e5e5"
BIP143_SIGHASH = "c37af31116d1b27caf68aae9e3ac82f1477929014d5b917657d0eb49478cb670"
BIP143_SIG = (
    "304402203609e17b84f6a7d30c80bfa610b5b4542f32a8a0d5447a12fb1366d7f01cc44a0220573a954c4518331561406f"
    "90300e8f3358f51928d43c212a8caed02de67eebee"
)


def test_bip143_native_p2wpkh_example() -> None:
    tx = parse_transaction(BIP143_UNSIGNED)
    c = SighashCache(tx)
    assert hashlib.sha256(c.sha_prevouts).hexdigest() == BIP143_HASH_PREVOUTS
    assert hashlib.sha256(c.sha_sequences).hexdigest() == BIP143_HASH_SEQUENCE
    assert hashlib.sha256(c.sha_outputs).hexdigest() == BIP143_HASH_OUTPUTS
    digest = bip143_sighash(tx, 1, p2wpkh_script_code(BIP143_KEYHASH), BIP143_AMOUNT, 0x01)
    assert digest.hex() == BIP143_SIGHASH
    assert PrivateKey(BIP143_PRIVKEY).public_key.format() == BIP143_PUBKEY
    sig = PrivateKey(BIP143_PRIVKEY).sign(digest, hasher=None)  # RFC 6979, as the BIP's signer
    assert sig.hex() == BIP143_SIG
    # the P2WPKH input alone verifies (input 0 is a P2PK in the BIP, outside the wallet's scope)
    signed = with_witnesses(tx, [[], p2wpkh_witness(sig, BIP143_PUBKEY)])
    prevouts = [
        Prevout(625_000_000, b"\x51\x20" + b"\x00" * 32),
        Prevout(BIP143_AMOUNT, b"\x00\x14" + BIP143_KEYHASH),
    ]
    verify_input(signed, prevouts, 1)


_bytes32 = st.binary(min_size=32, max_size=32)
_txin = st.builds(
    lambda h, n, seq: CTxIn(COutPoint(h, n), CScript(), seq),
    _bytes32,
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
)
_txout = st.builds(lambda v, s: CTxOut(v, CScript(s)), st.integers(0, 21 * 10**14), st.binary(max_size=60))


@settings(max_examples=150, deadline=None)
@given(
    vin=st.lists(_txin, min_size=1, max_size=5),
    vout=st.lists(_txout, min_size=1, max_size=5),
    version=st.integers(-(2**31), 2**31 - 1),
    # python-bitcoinlib packs nLockTime as signed in SignatureHash, so it cannot hash >= 2**31
    locktime=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_bip143_matches_python_bitcoinlib(
    vin: list[CTxIn], vout: list[CTxOut], version: int, locktime: int, data: st.DataObject
) -> None:
    tx = CTransaction(vin, vout, locktime, version)
    index = data.draw(st.integers(0, len(vin) - 1))
    hash_type = data.draw(st.sampled_from([1, 2, 3, 0x81, 0x82, 0x83]))
    amount = data.draw(st.integers(0, 21 * 10**14))
    script_code = data.draw(st.binary(max_size=80))
    ours = bip143_sighash(tx, index, script_code, amount, hash_type)
    theirs = SignatureHash(CScript(script_code), tx, index, hash_type, amount, SIGVERSION_WITNESS_V0)
    assert ours == theirs
