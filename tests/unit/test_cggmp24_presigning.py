"""CGGMP24 threshold presigning (tss.cggmp24.presigning) with real Paillier keys (TEST-ONLY fixture
primes): honest runs sign (coincurve and btclib verify), with and without a BIP-32 shift bound in at
presigning; every bad value a party sends is blamed by the honest parties that receive it and no
presignature comes out; the final delta checks abort without identification; echo, drop, replay,
reorder and foreign-session handling."""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from functools import cache

import pytest

from tests.unit.cggmp24_fixtures import paillier_key, ring_pedersen
from tests.unit.cggmp24_harness import body_of, replace_body, run_network, slot_of
from tests.unit.test_cggmp24_keygen import run_keygen
from tests.unit.test_cggmp24_signing import assert_valid_ecdsa, sign_with
from tss.cggmp24 import presigning, signing
from tss.cggmp24.aux_info import AuxInfoResult
from tss.cggmp24.errors import BadInputError, InvalidProofError, UnattributableAbortError
from tss.cggmp24.keygen import KeyShare
from tss.cggmp24.presigning import PresigningState, SlotCode
from tss.cggmp24.rounds import Message
from tss.secp256k1 import N as Q
from tss.secp256k1 import cbytes, point_mul_base
from wallet import bip32

Filter = Callable[[Message, int], Sequence[Message]]


@cache
def key(t: int, n: int) -> tuple[KeyShare, ...]:
    out = run_keygen(t, n)
    return tuple(out[i].result for i in range(n))  # type: ignore[misc]


@cache
def aux(n: int) -> dict[int, AuxInfoResult]:
    pks = {j: paillier_key(j).public for j in range(n)}
    rps = {j: ring_pedersen(j).params for j in range(n)}
    return {i: AuxInfoResult(i, paillier_key(i), pks, rps, ring_pedersen(i)) for i in range(n)}


def start(
    t: int, n: int, signers: Sequence[int], shift: int = 0, child: bytes | None = None
) -> tuple[dict[int, PresigningState], list[Message]]:
    ks, ax = key(t, n), aux(n)
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for j in signers:
        states[j], msgs = presigning.presigning_start(sid, ks[j], ax[j], signers, shift, child)
        first += msgs
    return states, first


def run(
    t: int,
    n: int,
    signers: Sequence[int],
    filt: Filter | None = None,
    bad_round1: tuple[int, Callable[[bytes], bytes]] | None = None,
    **kw: object,
) -> dict[int, PresigningState]:
    """``bad_round1 = (sender, change)``: that party broadcasts a changed round-1 message to everyone
    consistently (its own copy too, so the echo agrees and the bad value reaches the checks)."""
    states, first = start(t, n, signers, **kw)  # type: ignore[arg-type]
    if bad_round1 is not None:
        sender, change = bad_round1
        st = states[sender]
        key = (SlotCode.R1, sender)
        new_body = change(st.core.store[key])
        states[sender] = replace(st, core=replace(st.core, store={**st.core.store, key: new_body}))
        first = [
            replace_body(m, new_body) if (m.sender == sender and slot_of(m) == SlotCode.R1) else m
            for m in first
        ]
    return run_network(states, first, presigning.presigning_round, filt=filt)


def presigs(out: dict[int, PresigningState]) -> dict[int, signing.Presignature]:
    assert all(s.phase == "done" and not s.blame and s.error is None for s in out.values()), [
        (s.phase, s.blame, s.error) for s in out.values()
    ]
    return {j: s.result for j, s in out.items()}  # type: ignore[misc]


def test_honest_2_of_3_signs() -> None:
    out = run(2, 3, (0, 2))
    ps = presigs(out)
    pub = ps[0].public
    assert all(p.public == pub for p in ps.values())
    h = secrets.token_bytes(32)
    sig = sign_with(ps, h)[0].signature
    assert sig is not None
    assert_valid_ecdsa(key(2, 3)[0].public_key, h, sig)


def test_honest_3_of_3_with_bip32_child_key() -> None:
    ks = key(3, 3)
    d = bip32.derive(bip32.from_threshold_key(ks[0].public_key, ks[0].chain_code), "m/0/7")
    out = run(3, 3, (0, 1, 2), shift=d.shift, child=d.pubkey)
    ps = presigs(out)
    assert ps[1].public.public_key == d.pubkey and ps[1].public.shift == d.shift
    h = secrets.token_bytes(32)
    sig = sign_with(ps, h)[2].signature
    assert sig is not None
    assert_valid_ecdsa(d.pubkey, h, sig)


def test_presignature_from_presigning_is_single_use() -> None:
    ps = presigs(run(2, 3, (1, 2)))
    signing.issue_partial_signature(ps[1], secrets.token_bytes(32))
    with pytest.raises(BadInputError, match="already used"):
        signing.issue_partial_signature(ps[1], secrets.token_bytes(32))


def test_bad_inputs() -> None:
    ks, ax = key(2, 3), aux(3)
    sid = secrets.token_bytes(32)
    with pytest.raises(BadInputError, match="child"):
        presigning.presigning_start(sid, ks[0], ax[0], (0, 1), 5, cbytes(point_mul_base(5)))
    with pytest.raises(BadInputError, match="child public key"):
        presigning.presigning_start(sid, ks[0], ax[0], (0, 1), 5)
    with pytest.raises(BadInputError):
        presigning.presigning_start(sid, ks[0], ax[0], (0,))
    with pytest.raises(BadInputError):
        presigning.presigning_start(sid, ks[0], ax[0], (1, 2))
    with pytest.raises(BadInputError):
        presigning.presigning_start(sid, ks[0], ax[1], (0, 1))


# ---------------------------------------------------------------------------------------------
# blame


def tamper(sender: int, slot: int, change: Callable[[bytes], bytes], only_to: int | None = None) -> Filter:
    def f(m: Message, r: int) -> list[Message]:
        if m.sender == sender and slot_of(m) == slot and (only_to is None or r == only_to):
            return [replace_body(m, change(body_of(m)))]
        return [m]

    return f


def at(offset: int, new: bytes) -> Callable[[bytes], bytes]:
    return lambda b: b[:offset] + new + b[offset + len(new) :]


NN_LEN = (paillier_key(0).nn.bit_length() + 7) // 8
G33 = cbytes(point_mul_base(1))


def assert_blamed(
    out: dict[int, PresigningState], culprit: int, check: str, receivers: Sequence[int]
) -> None:
    for i in receivers:
        s = out[i]
        assert s.phase == "failed" and s.result is None, (i, s.phase)
        assert [b.party for b in s.blame] == [culprit], (i, s.blame, s.error)
        assert check in s.blame[0].check, s.blame[0].check


def test_ciphertext_not_a_unit_blamed() -> None:
    out = run(2, 3, (0, 1), bad_round1=(1, at(0, bytes(NN_LEN))))
    assert_blamed(out, 1, "K_j not in Z*_N^2", [0])


def test_round1_point_changed_fails_enc_elg() -> None:
    # B_2 (the last point) replaced: the proof for G_1 no longer holds
    out = run(2, 3, (0, 1), bad_round1=(1, lambda b: b[:-33] + G33))
    assert_blamed(out, 1, "pi_enc_elg", [0])
    assert isinstance(out[0].blame[0], InvalidProofError)


def test_round1_point_not_on_curve_blamed() -> None:
    out = run(2, 3, (0, 1), bad_round1=(1, lambda b: b[:-33] + b"\x02" + b"\xff" * 32))
    assert_blamed(out, 1, "not a curve point", [0])


def test_bad_enc_elg_proof_blamed_by_receiver() -> None:
    out = run(2, 3, (0, 1), tamper(0, SlotCode.R1_PROOFS, lambda b: b[:-1] + bytes([b[-1] ^ 1])))
    assert_blamed(out, 0, "pi_enc_elg", [1])


def test_malformed_round1_proofs_blamed() -> None:
    out = run(2, 3, (0, 1), tamper(0, SlotCode.R1_PROOFS, lambda b: b + b"\x00"))
    assert_blamed(out, 0, "trailing bytes", [1])


def test_gamma_changed_fails_elog() -> None:
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R2, at(0, G33)))
    assert_blamed(out, 1, "pi_elog", [0])


def test_mta_ciphertext_changed_fails_aff_g() -> None:
    # D_ij (right after Gamma_j and the 163-byte Pi^elog): change its last byte
    off = 33 + 163 + NN_LEN - 1
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R2, lambda b: b[:off] + bytes([b[off] ^ 2]) + b[off + 1 :]))
    assert_blamed(out, 1, "", [0])
    assert "pi_aff_g" in out[0].blame[0].check or "Z*_N^2" in out[0].blame[0].check


def test_mta_ciphertext_zero_blamed() -> None:
    off = 33 + 163
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R2, at(off, bytes(NN_LEN))))
    assert_blamed(out, 1, "D_ij not in Z*_N^2", [0])


def test_bad_aff_g_proof_blamed() -> None:
    out = run(2, 3, (0, 1), tamper(0, SlotCode.R2, lambda b: b[:-1] + bytes([b[-1] ^ 1])))
    assert_blamed(out, 0, "pi_aff_g", [1])


def test_delta_point_changed_fails_elog() -> None:
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R3, at(32 + 33, G33)))
    assert_blamed(out, 1, "pi_elog", [0])


def test_delta_share_out_of_range_blamed() -> None:
    out = run(2, 3, (0, 1), tamper(0, SlotCode.R3, at(0, Q.to_bytes(32, "big"))))
    assert_blamed(out, 0, "delta_j out of range", [1])


def test_wrong_delta_aborts_without_identification() -> None:
    out = run(
        2,
        3,
        (0, 1),
        tamper(
            1, SlotCode.R3, lambda b: ((int.from_bytes(b[:32], "big") + 1) % Q).to_bytes(32, "big") + b[32:]
        ),
    )
    s = out[0]
    assert s.phase == "failed" and s.result is None and not s.blame
    assert isinstance(s.error, UnattributableAbortError) and "delta * G" in s.error.check


def test_wrong_s_point_aborts_without_identification() -> None:
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R3, at(32, G33)))
    s = out[0]
    assert s.phase == "failed" and s.result is None and not s.blame
    assert isinstance(s.error, UnattributableAbortError) and "delta * X" in s.error.check


def test_equivocated_round1_caught_by_echo() -> None:
    out = run(2, 3, (0, 1, 2), tamper(2, SlotCode.R1, lambda b: b[:-33] + G33, only_to=0))
    for i in (0, 1, 2):
        assert out[i].phase == "failed" and out[i].result is None
        assert out[i].blame and all("echo" in b.check for b in out[i].blame)


# ---------------------------------------------------------------------------------------------
# delivery


def test_drop_then_retransmit() -> None:
    def drop(m: Message, r: int) -> list[Message]:
        return [] if (m.sender == 1 and r == 0 and slot_of(m) == SlotCode.R2) else [m]

    states, first = start(2, 3, (0, 1))
    out = run_network(states, first, presigning.presigning_round, filt=drop)
    assert out[0].phase == "round2" and presigning.waiting_for(out[0]) == (1,)
    out = run_network(
        out,
        [m for m in presigning.retransmit(out[1]) if m.recipient in (None, 0)],
        presigning.presigning_round,
    )
    ps = presigs(out)
    h = secrets.token_bytes(32)
    assert_valid_ecdsa(key(2, 3)[0].public_key, h, sign_with(ps, h)[0].signature)  # type: ignore[arg-type]


def test_replay_and_shuffle() -> None:
    states, first = start(2, 3, (1, 2))
    out = run_network(
        states, first, presigning.presigning_round, filt=lambda m, r: [m, m], shuffle=random.Random(3)
    )
    ps = presigs(out)
    assert all(not s.core.rejections for s in out.values())
    h = secrets.token_bytes(32)
    assert_valid_ecdsa(key(2, 3)[0].public_key, h, sign_with(ps, h)[1].signature)  # type: ignore[arg-type]


def test_foreign_session_rejected() -> None:
    states, _ = start(2, 3, (0, 1))
    _, other = start(2, 3, (0, 1))
    s0, out = presigning.presigning_round(states[0], [m for m in other if m.sender == 1])
    assert out == [] and {r.reason for r in s0.core.rejections} == {"wrong-session"}
    assert presigning.waiting_for(s0) == (1,)


def test_secrets_not_in_repr() -> None:
    states, _ = start(2, 3, (0, 1))
    st = states[0]
    text = repr(st)
    sec = st.secret
    for v in (
        sec.k.value(),
        sec.gamma.value(),
        sec.x.value(),
        sec.a.value(),
        sec.b.value(),
        int(st.aux.paillier.p),
    ):
        assert str(v) not in text and format(v, "x") not in text


def test_precomputed_nonces_are_used_once_and_sign() -> None:
    ks, ax = key(2, 3), aux(3)
    signers = (0, 2)
    sid = secrets.token_bytes(32)
    pools = {}
    states, first = {}, []
    for j in signers:
        pool = presigning.NoncePool()
        for k, count in presigning.nonces_needed(j, signers).items():
            pool.fill(ax[j].paillier if k == j else ax[j].paillier_keys[k], count)
        pool.fill(paillier_key(4).public, 3)
        pools[j] = pool
        states[j], msgs = presigning.presigning_start(sid, ks[j], ax[j], signers, nonces=pool)
        first += msgs
    out = run_network(states, first, presigning.presigning_round)
    ps = presigs(out)
    assert all(pools[j].count(ax[j].paillier_keys[k]) == 0 for j in signers for k in signers)
    assert all(pools[j].count(paillier_key(4)) == 3 for j in signers)  # another key's nonces are not used
    assert "rho" not in repr(pools[0])
    h = secrets.token_bytes(32)
    assert_valid_ecdsa(ks[0].public_key, h, sign_with(ps, h)[0].signature)  # type: ignore[arg-type]


def test_own_ring_pedersen_secret_used_for_verification() -> None:
    ax = aux(3)
    assert presigning.verifier_params(ax[0]) is ring_pedersen(0)
    other = AuxInfoResult(0, ax[0].paillier, ax[0].paillier_keys, ax[0].ring_pedersen, ring_pedersen(1))
    assert presigning.verifier_params(other) is ax[0].ring_pedersen[0]  # a mismatching secret is not used


def flip_at(offset: int) -> Callable[[bytes], bytes]:
    return lambda b: b[:offset] + bytes([b[offset] ^ 1]) + b[offset + 1 :]


def test_bad_enc_elg_proof_for_k_blamed() -> None:
    # the first of the two proofs (for K_i): a byte in its middle
    out = run(2, 3, (0, 1), tamper(0, SlotCode.R1_PROOFS, flip_at(200)))
    assert_blamed(out, 0, "pi_enc_elg", [1])


def test_bad_first_aff_g_proof_blamed() -> None:
    # the first Pi^aff-g (for Gamma_j) starts after Gamma, Pi^elog and the four ciphertexts
    off = 33 + 163 + 4 * NN_LEN + 4 + 200
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R2, flip_at(off)))
    assert_blamed(out, 1, "pi_aff_g", [0])


def test_mta_f_ciphertext_zero_blamed() -> None:
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R2, at(33 + 163 + NN_LEN, bytes(NN_LEN))))
    assert_blamed(out, 1, "F_ij not in Z*_N^2", [0])


def test_mta_hat_ciphertexts_zero_blamed() -> None:
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R2, at(33 + 163 + 2 * NN_LEN, bytes(NN_LEN))))
    assert_blamed(out, 1, "D^_ij not in Z*_N^2", [0])
    out = run(2, 3, (0, 1), tamper(1, SlotCode.R2, at(33 + 163 + 3 * NN_LEN, bytes(NN_LEN))))
    assert_blamed(out, 1, "F^_ij not in Z*_N^2", [0])


def test_g_ciphertext_not_a_unit_blamed() -> None:
    out = run(2, 3, (0, 1), bad_round1=(1, at(NN_LEN, bytes(NN_LEN))))
    assert_blamed(out, 1, "G_j not in Z*_N^2", [0])


def test_honest_3_of_5_non_prefix_subset_with_shift() -> None:
    ks = key(3, 5)
    d = bip32.derive(bip32.from_threshold_key(ks[0].public_key, ks[0].chain_code), "m/1/2")
    out = run(3, 5, (1, 3, 4), shift=d.shift, child=d.pubkey)
    ps = presigs(out)
    h = secrets.token_bytes(32)
    sig = sign_with(ps, h)[4].signature
    assert sig is not None
    assert_valid_ecdsa(d.pubkey, h, sig)


def test_parties_disagreeing_on_the_child_key_abort_at_the_echo() -> None:
    """Signer 0 was told to presign for m/0/1, signer 1 for m/0/2: the echo (which binds the child key and
    the shift) fails for both; no proof is blamed and nothing is presigned."""
    ks, ax = key(2, 3), aux(3)
    root = bip32.from_threshold_key(ks[0].public_key, ks[0].chain_code)
    d1, d2 = bip32.derive(root, "m/0/1"), bip32.derive(root, "m/0/2")
    sid = secrets.token_bytes(32)
    s0, m0 = presigning.presigning_start(sid, ks[0], ax[0], (0, 1), d1.shift, d1.pubkey)
    s1, m1 = presigning.presigning_start(sid, ks[1], ax[1], (0, 1), d2.shift, d2.pubkey)
    out = run_network({0: s0, 1: s1}, m0 + m1, presigning.presigning_round)
    for i in (0, 1):
        assert out[i].phase == "failed" and out[i].result is None
        assert [b.party for b in out[i].blame] == [1 - i] and "echo" in out[i].blame[0].check
