"""CGGMP24 signing (tss.cggmp24.signing) from presignatures: every signer subset of size t, with and
without a BIP-32 shift; the signature verifies with coincurve and with btclib (strict DER, low S); a
presignature issues one partial signature only; a bad partial signature is blamed before combining.

The presignatures here come from a test-only dealer with presigning's exact algebra
(tests/unit/cggmp24_presig_dealer.py); test_cggmp24_presigning.py signs with real presignatures."""

from __future__ import annotations

import copy
import itertools
import pickle
import secrets
from functools import cache

import pytest
from coincurve import PublicKey
from ecc.curves import point_from_octets_var
from ecc.ecc import dsa

from tests.unit.cggmp24_harness import body_of, replace_body, run_network
from tests.unit.cggmp24_presig_dealer import deal_presignatures
from tests.unit.test_cggmp24_keygen import run_keygen
from tss.cggmp24 import signing
from tss.cggmp24.errors import BadInputError, UnattributableAbortError
from tss.cggmp24.keygen import KeyShare
from tss.cggmp24.rounds import Blames, Message
from tss.cggmp24.signing import Presignature, Signature
from tss.secp256k1 import N as Q
from tss.secp256k1 import cbytes, point_mul_base, point_tweak_add
from wallet import bip32
from wallet.der import der_encode, is_strict_der


@cache
def shares(t: int, n: int) -> tuple[KeyShare, ...]:
    out = run_keygen(t, n)
    return tuple(out[i].result for i in range(n))  # type: ignore[misc]


def secrets_of(ks: tuple[KeyShare, ...]) -> dict[int, int]:
    return {s.index: s.secret.value() for s in ks}


def sign_with(presigs: dict[int, Presignature], sighash: bytes) -> dict[int, signing.SigningState]:
    states, first = {}, []
    for j, p in presigs.items():
        st, msgs = signing.signing_start(p, sighash)
        states[j] = st
        first += msgs
    return run_network(states, first, signing.signing_round)


def assert_valid_ecdsa(public_key: bytes, sighash: bytes, sig: Signature) -> None:
    assert 0 < sig.s <= Q // 2  # low S
    der = der_encode(sig.r, sig.s)
    assert is_strict_der(der)
    assert PublicKey(public_key).verify(der, sighash, hasher=None)
    parsed = dsa.Sig.parse(der, strict=True)
    assert dsa.verify_(sighash, point_from_octets_var(public_key), parsed)
    assert signing.ecdsa_verify(public_key, sighash, sig)


@pytest.mark.parametrize(("t", "n"), [(2, 2), (2, 3), (3, 4), (4, 5), (5, 5)])
def test_every_signer_subset_signs(t: int, n: int) -> None:
    ks = shares(t, n)
    for subset in itertools.combinations(range(n), t):
        sighash = secrets.token_bytes(32)
        presigs = deal_presignatures(secrets_of(ks), subset, ks[0].public_key)
        out = sign_with(presigs, sighash)
        sigs = {s.signature for s in out.values()}
        assert len(sigs) == 1 and None not in sigs
        assert all(s.phase == "done" and not s.blame for s in out.values())
        assert_valid_ecdsa(ks[0].public_key, sighash, out[subset[0]].signature)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["m/0/5", "m/1/0", "m/2147483647"])
def test_bip32_child_key(path: str) -> None:
    """The shift from the wallet's own public BIP-32 derivation, bound in at presigning: the signature
    verifies under the child key, not under the root key."""
    ks = shares(3, 5)
    root = bip32.from_threshold_key(ks[0].public_key, ks[0].chain_code)
    d = bip32.derive(root, path)
    assert cbytes(point_tweak_add(PublicKey(ks[0].public_key), d.shift)) == d.pubkey
    sighash = secrets.token_bytes(32)
    presigs = deal_presignatures(secrets_of(ks), (1, 3, 4), d.pubkey, shift=d.shift)
    sig = sign_with(presigs, sighash)[1].signature
    assert sig is not None
    assert_valid_ecdsa(d.pubkey, sighash, sig)
    assert not PublicKey(ks[0].public_key).verify(der_encode(sig.r, sig.s), sighash, hasher=None)


def test_presignature_is_single_use() -> None:
    ks = shares(2, 3)
    p = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)[0]
    assert not p.is_consumed()
    signing.issue_partial_signature(p, bytes(32))
    assert p.is_consumed()
    with pytest.raises(BadInputError, match="already used"):
        signing.issue_partial_signature(p, bytes(32))
    with pytest.raises(BadInputError, match="already used"):
        signing.signing_start(p, secrets.token_bytes(32))


def test_presignature_consumed_even_when_signing_state_is_kept() -> None:
    """An old copy of a signing state cannot re-sign: the presignature buffer is shared and zeroed."""
    ks = shares(2, 3)
    presigs = deal_presignatures(secrets_of(ks), (0, 2), ks[0].public_key)
    st, _ = signing.signing_start(presigs[0], secrets.token_bytes(32))
    with pytest.raises(BadInputError):
        signing.signing_start(presigs[0], secrets.token_bytes(32))
    assert st.phase == "partials"


def test_presignature_cannot_be_copied_or_pickled() -> None:
    ks = shares(2, 3)
    p = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)[1]
    with pytest.raises(TypeError):
        copy.copy(p)
    with pytest.raises(TypeError):
        copy.deepcopy(p)
    with pytest.raises(TypeError):
        pickle.dumps(p)


def test_presignature_repr_has_no_secret() -> None:
    ks = shares(2, 3)
    p = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)[1]
    k = int.from_bytes(p._secret[:32], "big")
    assert format(k, "x") not in repr(p) and str(k) not in repr(p)
    assert "unused" in repr(p)


def test_sighash_must_be_32_bytes() -> None:
    ks = shares(2, 3)
    p = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)[0]
    with pytest.raises(BadInputError, match="32-byte"):
        signing.issue_partial_signature(p, b"\x00" * 31)
    assert not p.is_consumed()  # refused before it was taken


def test_bad_partial_signature_blamed_by_every_honest_signer() -> None:
    ks = shares(3, 5)
    sighash = secrets.token_bytes(32)
    presigs = deal_presignatures(secrets_of(ks), (0, 2, 4), ks[0].public_key)
    states, first = {}, []
    for j, p in presigs.items():
        states[j], msgs = signing.signing_start(p, sighash)
        first += msgs

    def bad(m: Message, r: int) -> list[Message]:
        if m.sender == 2:
            sigma = (int.from_bytes(body_of(m)[32:], "big") + 1) % Q
            return [replace_body(m, sighash + sigma.to_bytes(32, "big"))]
        return [m]

    out = run_network(states, first, signing.signing_round, filt=bad)
    for j in (0, 4):
        assert out[j].phase == "failed" and out[j].signature is None
        assert [b.party for b in out[j].blame] == [2]
        assert "sigma_j * Gamma" in out[j].blame[0].check


def test_partial_for_another_message_blamed() -> None:
    """A signer that signs another hash while claiming ours (with its genuine presignature) is caught by
    the per-partial check, before anything is combined."""
    ks = shares(2, 3)
    presigs = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)
    h = secrets.token_bytes(32)
    s0, _ = signing.signing_start(presigs[0], h)
    _, m1 = signing.signing_start(presigs[1], secrets.token_bytes(32))
    s0, _ = signing.signing_round(s0, [replace_body(m1[0], h + body_of(m1[0])[32:])])
    assert s0.phase == "failed" and [b.party for b in s0.blame] == [1]


def test_signers_told_different_sighashes_abort_unblamed() -> None:
    """Signer 1 was asked to sign another transaction: nobody is blamed (either side may be the honest
    one), nothing is signed."""
    ks = shares(2, 3)
    presigs = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)
    s0, m0 = signing.signing_start(presigs[0], secrets.token_bytes(32))
    s1, m1 = signing.signing_start(presigs[1], secrets.token_bytes(32))
    s0, _ = signing.signing_round(s0, m1)
    s1, _ = signing.signing_round(s1, m0)
    for s in (s0, s1):
        assert s.phase == "failed" and s.signature is None and not s.blame
        assert isinstance(s.error, UnattributableAbortError) and "another sighash" in s.error.check


def test_out_of_range_and_short_partials_blamed() -> None:
    ks = shares(2, 3)
    cases = ((Q.to_bytes(32, "big"), "out of range"), (b"\x01" * 31, "too short"), (b"\x01" * 33, "trailing"))
    for body, why in cases:
        presigs = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)
        h = secrets.token_bytes(32)
        s0, _ = signing.signing_start(presigs[0], h)
        _, m1 = signing.signing_start(presigs[1], h)
        s0, _ = signing.signing_round(s0, [replace_body(m1[0], h + body)])
        assert s0.phase == "failed" and [b.party for b in s0.blame] == [1]
        assert why in s0.blame[0].check


def test_combine_checks_every_partial_first() -> None:
    ks = shares(2, 3)
    presigs = deal_presignatures(secrets_of(ks), (1, 2), ks[0].public_key)
    pub = presigs[1].public
    h = secrets.token_bytes(32)
    partials = {j: signing.issue_partial_signature(p, h) for j, p in presigs.items()}
    # a pair of partials shifted by +d / -d still sums to a valid signature, but each one is wrong
    d = 12345
    forged = {
        1: ((int.from_bytes(partials[1], "big") + d) % Q).to_bytes(32, "big"),
        2: ((int.from_bytes(partials[2], "big") - d) % Q).to_bytes(32, "big"),
    }
    with pytest.raises(Blames) as ei:
        signing.combine_partial_signatures(pub, forged, h)
    assert sorted(e.party for e in ei.value.errors) == [1, 2]
    sig = signing.combine_partial_signatures(pub, partials, h)
    assert_valid_ecdsa(ks[0].public_key, h, sig)


def test_low_s_normalisation() -> None:
    """Both halves occur across runs; every output has low S and verifies."""
    ks = shares(2, 2)
    highs = 0
    for _ in range(16):
        presigs = deal_presignatures(secrets_of(ks), (0, 1), ks[0].public_key)
        pub = presigs[0].public
        h = secrets.token_bytes(32)
        partials = {j: signing.issue_partial_signature(p, h) for j, p in presigs.items()}
        raw = sum(int.from_bytes(v, "big") for v in partials.values()) % Q
        highs += raw > Q // 2
        sig = signing.combine_partial_signatures(pub, partials, h)
        assert sig.s <= Q // 2
        assert_valid_ecdsa(ks[0].public_key, h, sig)
    assert highs > 0


def test_signing_drop_replay_foreign_session() -> None:
    ks = shares(3, 4)
    h = secrets.token_bytes(32)
    presigs = deal_presignatures(secrets_of(ks), (0, 1, 3), ks[0].public_key)
    st = {}
    msgs = {}
    for j, p in presigs.items():
        st[j], msgs[j] = signing.signing_start(p, h)
    s0, _ = signing.signing_round(st[0], msgs[1] + msgs[1])
    assert signing.waiting_for(s0) == (3,)
    other = deal_presignatures(secrets_of(ks), (0, 1, 3), ks[0].public_key)
    _, foreign = signing.signing_start(other[3], h)
    s0, _ = signing.signing_round(s0, foreign)
    assert s0.core.rejections[-1].reason == "wrong-session"
    assert signing.waiting_for(s0) == (3,)
    s0, _ = signing.signing_round(s0, msgs[3])
    assert s0.phase == "done" and s0.signature is not None
    assert_valid_ecdsa(ks[0].public_key, h, s0.signature)


def test_wrong_child_key_is_not_accepted() -> None:
    """A presignature whose bound public key is not the signing key yields no signature (the combined
    signature is verified under the bound key)."""
    ks = shares(2, 3)
    wrong = cbytes(point_mul_base(7))
    presigs = deal_presignatures(secrets_of(ks), (0, 1), wrong)
    out = sign_with(presigs, secrets.token_bytes(32))
    assert all(s.phase == "failed" and s.signature is None and not s.blame for s in out.values())
