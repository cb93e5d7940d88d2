"""CGGMP24 end to end, every step a round machine over the test network: threshold keygen (2-of-3), aux-info
(TEST-ONLY fixture primes), presigning for a signer set with a BIP-32 child key, signing (verified by
coincurve and btclib, strict DER, low S); then key refresh and a second aux-info run (the Paillier and
ring-Pedersen material renewed), presigning and signing with the refreshed shares, and the old shares
refused in a mixed set."""

from __future__ import annotations

import secrets

import pytest

from tests.unit.cggmp24_harness import run_network
from tests.unit.test_cggmp24_aux_info import run as run_aux_info
from tests.unit.test_cggmp24_keygen import run_keygen
from tests.unit.test_cggmp24_signing import assert_valid_ecdsa, sign_with
from tss.cggmp24 import key_refresh, presigning
from tss.cggmp24.aux_info import AuxInfoResult
from tss.cggmp24.errors import BadInputError
from tss.cggmp24.keygen import KeyShare
from tss.cggmp24.signing import Presignature
from wallet import bip32

pytestmark = pytest.mark.slow


def presign(
    shares: dict[int, KeyShare],
    aux: dict[int, AuxInfoResult],
    signers: tuple[int, ...],
    shift: int,
    child: bytes,
) -> dict[int, Presignature]:
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for j in signers:
        states[j], msgs = presigning.presigning_start(sid, shares[j], aux[j], signers, shift, child)
        first += msgs
    out = run_network(states, first, presigning.presigning_round)
    assert all(s.phase == "done" for s in out.values()), [(s.blame, s.error) for s in out.values()]
    return {j: s.result for j, s in out.items()}  # type: ignore[misc]


def aux_results() -> dict[int, AuxInfoResult]:
    out = run_aux_info(3)
    assert all(s.phase == "done" for s in out.values())
    return {i: s.result for i, s in out.items()}  # type: ignore[misc]


def test_keygen_aux_info_presign_sign_refresh() -> None:
    kg = run_keygen(2, 3)
    shares: dict[int, KeyShare] = {i: s.result for i, s in kg.items()}  # type: ignore[misc]
    pk, chain = shares[0].public_key, shares[0].chain_code
    d = bip32.derive(bip32.from_threshold_key(pk, chain), "m/0/3")
    aux = aux_results()

    h = secrets.token_bytes(32)
    sig = sign_with(presign(shares, aux, (0, 2), d.shift, d.pubkey), h)[0].signature
    assert sig is not None
    assert_valid_ecdsa(d.pubkey, h, sig)

    # refresh the shares and the aux material; sign again with another signer set
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for i, s in shares.items():
        states[i], msgs = key_refresh.refresh_start(sid, s)
        first += msgs
    refreshed = run_network(states, first, key_refresh.refresh_round)
    new: dict[int, KeyShare] = {i: s.result for i, s in refreshed.items()}  # type: ignore[misc]
    assert all(s.public_key == pk and s.chain_code == chain for s in new.values())
    new_aux = aux_results()
    assert all(new_aux[i].ring_pedersen[i] != aux[i].ring_pedersen[i] for i in range(3))

    h2 = secrets.token_bytes(32)
    sig2 = sign_with(presign(new, new_aux, (1, 2), d.shift, d.pubkey), h2)[2].signature
    assert sig2 is not None
    assert_valid_ecdsa(d.pubkey, h2, sig2)

    # an old share next to a new one: each side's Pi^aff-g for x_i fails against the other's view of X_i,
    # so the run fails with blame and nothing is presigned
    sid = secrets.token_bytes(32)
    mixed = {1: shares[1], 2: new[2]}
    states2, first2 = {}, []
    for j in (1, 2):
        states2[j], msgs = presigning.presigning_start(sid, mixed[j], new_aux[j], (1, 2), d.shift, d.pubkey)
        first2 += msgs
    out = run_network(states2, first2, presigning.presigning_round)
    assert all(s.phase == "failed" and s.result is None for s in out.values())
    assert [b.party for b in out[2].blame] == [1] and "pi_aff_g" in out[2].blame[0].check
    # retired shares are zeroized and refused
    for s in shares.values():
        s.zeroize()
    with pytest.raises(BadInputError):
        presigning.presigning_start(secrets.token_bytes(32), shares[1], new_aux[1], (1, 2), d.shift, d.pubkey)
