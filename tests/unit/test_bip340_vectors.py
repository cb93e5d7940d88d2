"""BIP-340 conformance: every row of ``tests/vectors/bip340/test-vectors.csv`` as its own case.

Verification goes through ``tss.secp256k1.schnorr_verify`` (libsecp256k1, any message length). Rows with a
secret key are also signed with coincurve's ``PrivateKey.sign_schnorr(msg, aux)`` and must reproduce the
vector's signature byte for byte. coincurve only signs 32-byte messages (it wraps
``secp256k1_schnorrsig_sign32``), so for the rows with other message lengths (indices 15-18) only
verification is asserted.
"""

from __future__ import annotations

import csv

import pytest
from coincurve import PrivateKey

from tests.vectors import VECTORS
from tss.secp256k1 import schnorr_verify


def _rows() -> list[dict[str, str]]:
    path = VECTORS / "bip340" / "test-vectors.csv"
    if not path.exists():
        raise FileNotFoundError(f"conformance vectors missing: {path}")
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


ROWS = _rows()


@pytest.mark.parametrize("row", ROWS, ids=[f"bip340-{r['index']}" for r in ROWS])
def test_bip340_vector(row: dict[str, str]) -> None:
    pubkey = bytes.fromhex(row["public key"])
    msg = bytes.fromhex(row["message"])
    sig = bytes.fromhex(row["signature"])
    expected = row["verification result"] == "TRUE"

    assert schnorr_verify(msg, pubkey, sig) is expected

    if row["secret key"]:
        key = PrivateKey(bytes.fromhex(row["secret key"]))
        assert key.public_key_xonly.format() == pubkey
        if len(msg) == 32:
            assert key.sign_schnorr(msg, bytes.fromhex(row["aux_rand"])) == sig
        # else: coincurve cannot sign non-32-byte messages; verification above covers the row.
