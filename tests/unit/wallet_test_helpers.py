"""Single-key transactions for the wallet tests (test only: the wallet itself never holds a key)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from bitcoin.core import CTransaction
from coincurve import PrivateKey

from tss.secp256k1 import xbytes
from wallet.script import p2wpkh_script
from wallet.sighash import SighashCache, bip143_sighash, bip341_sighash, p2wpkh_script_code
from wallet.taproot import key_path_output, taproot_tweak_seckey
from wallet.transaction import OutPoint, Prevout, TxOutput, build_transaction, with_witnesses
from wallet.witness import p2tr_key_path_witness, p2wpkh_witness


@dataclass(frozen=True)
class Key:
    seckey: bytes
    kind: str  # "p2tr" | "p2wpkh"

    @property
    def pubkey(self) -> bytes:
        return PrivateKey(self.seckey).public_key.format()

    @property
    def script_pubkey(self) -> bytes:
        if self.kind == "p2tr":
            return key_path_output(self.pubkey).script_pubkey
        return p2wpkh_script(self.pubkey)


def make_key(rng: random.Random, kind: str) -> Key:
    return Key(rng.randbytes(32), kind)


def sign_input(
    tx: CTransaction,
    prevouts: list[Prevout],
    index: int,
    key: Key,
    hash_type: int,
    cache: SighashCache | None = None,
    annex: bytes | None = None,
) -> list[bytes]:
    if key.kind == "p2tr":
        msg = bip341_sighash(tx, prevouts, index, hash_type, cache=cache, annex=annex)
        tweaked = taproot_tweak_seckey(key.seckey)
        assert xbytes(PrivateKey(tweaked).public_key) == key.script_pubkey[2:]
        w = p2tr_key_path_witness(PrivateKey(tweaked).sign_schnorr(msg, b"\x00" * 32), hash_type)
        return [*w, annex] if annex is not None else w
    h160 = key.script_pubkey[2:]
    code = p2wpkh_script_code(h160)
    digest = bip143_sighash(tx, index, code, prevouts[index].amount, hash_type, cache=cache)
    return p2wpkh_witness(PrivateKey(key.seckey).sign(digest, hasher=None), key.pubkey, hash_type)


def random_signed_tx(
    rng: random.Random,
    n_in: int,
    n_out: int,
    kinds: tuple[str, ...] = ("p2tr", "p2wpkh"),
    hash_types: tuple[int, ...] = (0x00, 0x01),
) -> tuple[CTransaction, list[Prevout], list[Key]]:
    """A valid transaction spending ``n_in`` single-key outputs, each input signed with a random
    hash type from ``hash_types`` (mapped to ALL for P2WPKH when 0)."""
    keys = [make_key(rng, rng.choice(kinds)) for _ in range(n_in)]
    prevouts = [Prevout(rng.randrange(10_000, 10**8), k.script_pubkey) for k in keys]
    total = sum(p.amount for p in prevouts)
    share = total // (n_out + 1)
    outs = [TxOutput(share, make_key(rng, rng.choice(kinds)).script_pubkey) for _ in range(n_out)]
    inputs = [(OutPoint(rng.randbytes(32).hex(), rng.randrange(4)), 0xFFFFFFFD) for _ in range(n_in)]
    tx = build_transaction(inputs, outs, version=2, locktime=rng.randrange(0, 800_000))
    cache = SighashCache(tx, prevouts)
    witnesses = []
    for i, k in enumerate(keys):
        ht = rng.choice(hash_types)
        if k.kind == "p2wpkh" and ht == 0:
            ht = 1
        if ht & 3 == 3 and i >= n_out:
            ht = (ht & 0x80) | 1
        witnesses.append(sign_input(tx, prevouts, i, k, ht, cache))
    return with_witnesses(tx, witnesses), prevouts, keys
