"""Aux-info generation (round machine): an honest run gives every party the same verified keys; a forged
Pi^prm, a short modulus, a tampered Pi^mod / Pi^fac, an opening that does not match its commitment and a
bad echo are each blamed on their sender. Primes come from the TEST-ONLY fixture."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from tests.unit.cggmp24_fixtures import fixture_safe_primes
from tests.unit.cggmp24_harness import body_of, replace_body, run_network, slot_of
from tss.cggmp24 import aux_info, pi_prm
from tss.cggmp24.aux_info import AuxInfoState, SlotCode
from tss.cggmp24.errors import BadInputError
from tss.cggmp24.paillier import PaillierSecretKey
from tss.cggmp24.rounds import Message

Filter = Callable[[Message, int], Sequence[Message]]


def primes_of(k: int) -> tuple[int, int, int, int]:
    pr = fixture_safe_primes()
    return pr[4 * k], pr[4 * k + 1], pr[4 * k + 2], pr[4 * k + 3]


def start_all(n: int) -> tuple[dict[int, AuxInfoState], list[Message], bytes]:
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for i in range(n):
        s, m = aux_info.start_aux_info(sid, i, n, primes_of(i))
        states[i] = s
        first += m
    return states, first, sid


def run(n: int, filt: Filter | None = None, states_first: Any = None) -> dict[int, AuxInfoState]:
    states, first, _ = states_first if states_first is not None else start_all(n)
    return run_network(states, first, aux_info.aux_info_round, filt=filt)


def assert_blamed(out: dict[int, AuxInfoState], culprit: int, check: str, receivers: Sequence[int]) -> None:
    for i in receivers:
        s = out[i]
        assert s.phase == "failed", (i, s.phase)
        assert s.result is None
        assert [b.party for b in s.blame] == [culprit], (i, s.blame)
        assert check in s.blame[0].check, s.blame[0].check


def tamper(sender: int, slot: int, change: Callable[[bytes], bytes]) -> Filter:
    def f(m: Message, receiver: int) -> list[Message]:
        if m.sender == sender and slot_of(m) == slot:
            return [replace_body(m, change(body_of(m)))]
        return [m]

    return f


def flip_last(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


def test_honest_run_three_parties() -> None:
    out = run(3)
    for i, s in out.items():
        assert s.phase == "done", (i, s.phase, s.blame)
        r = s.result
        assert r is not None and r.index == i
        for j in range(3):
            other = out[j].result
            assert other is not None
            assert r.paillier_keys[j].n == other.paillier.n
            assert r.ring_pedersen[j] == other.own_ring_pedersen.params
        assert r.paillier.n.bit_length() == 3072 and r.paillier.n != r.own_ring_pedersen.params.n
        assert str(int(r.paillier.p)) not in repr(s) and str(int(r.paillier.p)) not in repr(r)


def test_bad_inputs() -> None:
    sid = bytes(32)
    with pytest.raises(BadInputError):
        aux_info.start_aux_info(sid, 0, 1, primes_of(0))
    p = primes_of(0)
    with pytest.raises(BadInputError):
        aux_info.start_aux_info(sid, 0, 2, (p[0], p[0], p[2], p[3]))
    with pytest.raises(BadInputError):
        aux_info.start_aux_info(b"short", 0, 2, p)


def test_forged_prm_blamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Party 1 commits to a Pi^prm made for another prover index (a replayed proof)."""
    real = pi_prm.prove
    sid = secrets.token_bytes(32)
    s0, m0 = aux_info.start_aux_info(sid, 0, 2, primes_of(0))
    monkeypatch.setattr(pi_prm, "prove", lambda sid_, me, rp: real(sid_, me + 1, rp))
    s1, m1 = aux_info.start_aux_info(sid, 1, 2, primes_of(1))
    monkeypatch.setattr(pi_prm, "prove", real)
    out = run(2, states_first=({0: s0, 1: s1}, m0 + m1, sid))
    assert_blamed(out, 1, "pi_prm: ", [0])


def test_short_modulus_blamed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Party 1 uses N = 3 q (1538 bits) as its Paillier modulus."""
    sid = secrets.token_bytes(32)
    s0, m0 = aux_info.start_aux_info(sid, 0, 2, primes_of(0))
    monkeypatch.setattr(aux_info, "paillier_key_from_primes", lambda p, q: PaillierSecretKey(3, q))
    s1, m1 = aux_info.start_aux_info(sid, 1, 2, primes_of(1))
    monkeypatch.undo()
    out = run(2, states_first=({0: s0, 1: s1}, m0 + m1, sid))
    assert_blamed(out, 1, "paillier: modulus too short", [0])


def test_opening_not_matching_commitment_blamed() -> None:
    out = run(3, filt=tamper(2, SlotCode.OPENING, flip_last))
    assert_blamed(out, 2, "opening does not match V_j", [0, 1])


def test_bad_echo_blamed() -> None:
    out = run(2, filt=tamper(1, SlotCode.ECHO, flip_last))
    assert_blamed(out, 1, "echo", [0])


def test_tampered_fac_and_mod_blamed() -> None:
    out = run(2, filt=tamper(1, SlotCode.PROOFS, flip_last))  # the last field of Pi^fac (v)
    assert_blamed(out, 1, "pi_fac: ", [0])
    assert out[1].phase == "done"  # party 0's proofs were fine

    def flip_mod(b: bytes) -> bytes:
        return b[:10] + bytes([b[10] ^ 1]) + b[11:]  # inside Pi^mod's w

    out = run(2, filt=tamper(0, SlotCode.PROOFS, flip_mod))
    assert_blamed(out, 0, "pi_mod: ", [1])
