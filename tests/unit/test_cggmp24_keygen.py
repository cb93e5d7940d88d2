"""Threshold keygen (tss.cggmp24.keygen): honest runs for t-of-n, and a party that sends any bad value is
blamed by every honest party that sees it while nothing is output; dropped, replayed, reordered,
misaddressed and foreign-session messages."""

from __future__ import annotations

import itertools
import random
import secrets
from collections.abc import Callable, Sequence

import pytest

from tests.unit.cggmp24_harness import body_of, replace_body, run_network, slot_of
from tss.cggmp24 import keygen
from tss.cggmp24.errors import BadInputError, InvalidContributionError, InvalidProofError
from tss.cggmp24.keygen import DealingState, KeyShare, SlotCode, lagrange_coefficient
from tss.cggmp24.rounds import Message
from tss.secp256k1 import N as Q
from tss.secp256k1 import cbytes, lincomb, point_mul_base

Filter = Callable[[Message, int], Sequence[Message]]


def start_all(
    t: int, n: int, sid: bytes | None = None, hd: bool = True
) -> tuple[dict[int, DealingState], list[Message]]:
    sid = sid or secrets.token_bytes(32)
    states, first = {}, []
    for i in range(n):
        s, m = keygen.keygen_start(sid, i, t, n, hd)
        states[i] = s
        first += m
    return states, first


def run_keygen(
    t: int, n: int, filt: Filter | None = None, hd: bool = True, **kw: object
) -> dict[int, DealingState]:
    states, first = start_all(t, n, hd=hd)
    return run_network(states, first, keygen.keygen_round, filt=filt, **kw)  # type: ignore[arg-type]


def check_shares(shares: Sequence[KeyShare], t: int, n: int) -> None:
    pk = shares[0].public_key
    for s in shares:
        assert (s.t, s.n) == (t, n)
        assert s.public_key == pk
        assert s.public_shares == shares[0].public_shares
        assert s.chain_code == shares[0].chain_code
        assert cbytes(point_mul_base(s.secret.value())) == s.public_shares[s.index]
    for subset in itertools.combinations(range(n), t):
        y = lincomb([(shares[0].public_share(j), lagrange_coefficient(subset, j)) for j in subset])
        assert cbytes(y) == pk
        x = sum(lagrange_coefficient(subset, j) * shares[j].secret.value() for j in subset) % Q
        assert cbytes(point_mul_base(x)) == pk


PARAMS = [(2, 2), (2, 3), (3, 3), (2, 5), (3, 5), (4, 5), (5, 5)]


@pytest.mark.parametrize(("t", "n"), PARAMS)
def test_honest_keygen(t: int, n: int) -> None:
    out = run_keygen(t, n)
    assert all(s.phase == "done" and not s.blame and not s.core.rejections for s in out.values())
    shares = [out[i].result for i in range(n)]
    assert all(s is not None for s in shares)
    check_shares(shares, t, n)  # type: ignore[arg-type]
    assert len(shares[0].chain_code) == 32  # type: ignore[union-attr]


def test_random_parameters() -> None:
    rng = random.Random(2024)
    for _ in range(3):
        n = rng.randint(2, 5)
        t = rng.randint(2, n)
        out = run_keygen(t, n, shuffle=rng)
        check_shares([out[i].result for i in range(n)], t, n)  # type: ignore[misc]


def test_without_chain_code() -> None:
    out = run_keygen(2, 3, hd=False)
    assert all(s.result is not None and s.result.chain_code == b"" for s in out.values())


def test_secret_not_in_repr() -> None:
    out = run_keygen(2, 3)
    share = out[0].result
    assert share is not None
    secret_hex = format(share.secret.value(), "x")
    for text in (repr(share), repr(out[0]), str(share)):
        assert secret_hex not in text and str(share.secret.value()) not in text
    share.zeroize()
    assert share.secret.is_zeroized()
    with pytest.raises(BadInputError):
        share.secret.value()


def test_bad_parameters() -> None:
    with pytest.raises(BadInputError):
        keygen.keygen_start(bytes(32), 0, 1, 3)
    with pytest.raises(BadInputError):
        keygen.keygen_start(bytes(32), 0, 4, 3)
    with pytest.raises(BadInputError):
        keygen.keygen_start(bytes(32), 3, 2, 3)
    with pytest.raises(BadInputError):
        keygen.keygen_start(bytes(31), 0, 2, 3)


# ---------------------------------------------------------------------------------------------
# a party sends a bad value: every honest party that receives it blames it, nobody outputs


def tamper(sender: int, slot: int, change: Callable[[bytes], bytes], only_to: int | None = None) -> Filter:
    def f(m: Message, receiver: int) -> list[Message]:
        if m.sender == sender and slot_of(m) == slot and (only_to is None or receiver == only_to):
            return [replace_body(m, change(body_of(m)))]
        return [m]

    return f


def assert_blamed(out: dict[int, DealingState], culprit: int, check: str, receivers: Sequence[int]) -> None:
    for i in receivers:
        s = out[i]
        assert s.phase == "failed", (i, s.phase)
        assert s.result is None
        assert [b.party for b in s.blame] == [culprit], (i, s.blame)
        assert check in s.blame[0].check


def flip_last(b: bytes) -> bytes:
    return b[:-1] + bytes([b[-1] ^ 1])


def test_bad_share_blamed_by_its_receiver() -> None:
    out = run_keygen(
        3,
        4,
        filt=tamper(
            2, SlotCode.SHARE, lambda b: (int.from_bytes(b, "big") + 1).to_bytes(32, "big"), only_to=0
        ),
    )
    assert_blamed(out, 2, "share does not match the VSS commitments", [0])
    assert all(out[i].phase != "done" for i in range(4))  # party 0 never sends its proof


def test_bad_shares_to_everyone_blamed_by_everyone() -> None:
    out = run_keygen(
        3, 4, filt=tamper(1, SlotCode.SHARE, lambda b: (int.from_bytes(b, "big") ^ 4).to_bytes(32, "big"))
    )
    assert_blamed(out, 1, "share does not match", [0, 2, 3])


def test_share_out_of_range_blamed() -> None:
    out = run_keygen(2, 3, filt=tamper(1, SlotCode.SHARE, lambda b: (Q + 1).to_bytes(32, "big")))
    assert_blamed(out, 1, "share out of range", [0, 2])


def test_short_share_blamed() -> None:
    out = run_keygen(2, 3, filt=tamper(1, SlotCode.SHARE, lambda b: b[:31]))
    assert_blamed(out, 1, "message too short", [0, 2])


def test_decommitment_not_matching_commitment_blamed() -> None:
    # change rid_j after the hash commitment: V_j no longer opens
    out = run_keygen(2, 3, filt=tamper(2, SlotCode.DECOMMIT, lambda b: bytes([b[0] ^ 1]) + b[1:]))
    assert_blamed(out, 2, "does not open V_j", [0, 1])


def test_vss_commitment_swapped_blamed() -> None:
    # replace the last VSS point by G: the opening no longer matches V_j (and the shares would not match)
    out = run_keygen(2, 3, filt=tamper(0, SlotCode.DECOMMIT, lambda b: b[:-33] + cbytes(point_mul_base(1))))
    assert_blamed(out, 0, "does not open V_j", [1, 2])


def test_wrong_number_of_vss_points_blamed() -> None:
    out = run_keygen(3, 3, filt=tamper(1, SlotCode.DECOMMIT, lambda b: b[:-33]))
    assert_blamed(out, 1, "message too short", [0, 2])
    out = run_keygen(3, 3, filt=tamper(1, SlotCode.DECOMMIT, lambda b: b + b[-33:]))
    assert_blamed(out, 1, "trailing bytes", [0, 2])


def test_vss_point_not_on_curve_blamed() -> None:
    out = run_keygen(2, 3, filt=tamper(1, SlotCode.DECOMMIT, lambda b: b[:-33] + b"\x02" + b"\xff" * 32))
    assert_blamed(out, 1, "not a curve point", [0, 2])


def test_bad_schnorr_proof_blamed() -> None:
    out = run_keygen(
        2,
        3,
        filt=tamper(1, SlotCode.SCHNORR, lambda b: ((int.from_bytes(b, "big") + 1) % Q).to_bytes(32, "big")),
    )
    assert_blamed(out, 1, "pi_sch", [0, 2])
    assert all(isinstance(e, InvalidProofError) for i in (0, 2) for e in out[i].blame)


def test_short_schnorr_proof_blamed() -> None:
    out = run_keygen(2, 3, filt=tamper(2, SlotCode.SCHNORR, lambda b: b[:16]))
    assert_blamed(out, 2, "pi_sch", [0, 1])


def test_two_culprits_both_named() -> None:
    def f(m: Message, r: int) -> list[Message]:
        if m.sender in (1, 3) and slot_of(m) == SlotCode.SCHNORR:
            return [replace_body(m, flip_last(body_of(m)))]
        return [m]

    out = run_keygen(2, 4, filt=f)
    for i in (0, 2):
        assert sorted(b.party for b in out[i].blame) == [1, 3]


def test_equivocated_commitment_caught_by_echo() -> None:
    """Party 2 sends party 0 another V than the others get: the echo round makes every party abort (the
    echo cannot tell the equivocator from a lying echoer; each names the parties whose echo differs)."""
    out = run_keygen(2, 4, filt=tamper(2, SlotCode.COMMIT, flip_last, only_to=0))
    for i in range(4):
        assert out[i].phase == "failed" and out[i].result is None
        assert all("echo" in b.check for b in out[i].blame)
    assert sorted(b.party for b in out[0].blame) == [1, 2, 3]
    for i in (1, 2, 3):
        assert [b.party for b in out[i].blame] == [0]


# ---------------------------------------------------------------------------------------------
# delivery faults


def test_dropped_message_waits_and_names_the_sender() -> None:
    dropped: list[Message] = []

    def drop(m: Message, r: int) -> list[Message]:
        if m.sender == 2 and r == 0 and slot_of(m) == SlotCode.DECOMMIT:
            dropped.append(m)
            return []
        return [m]

    states, first = start_all(3, 4)
    out = run_network(states, first, keygen.keygen_round, filt=drop)
    assert out[0].phase == "decommit"
    assert keygen.waiting_for(out[0]) == (2,)
    assert dropped
    # party 2 retransmits everything it sent; party 0 takes what it lacks, ignores the rest
    resent = [m for m in keygen.retransmit(out[2]) if m.recipient in (None, 0)]
    out = run_network(out, resent, keygen.keygen_round)
    assert all(s.phase == "done" for s in out.values())
    assert not out[0].core.rejections
    check_shares([out[i].result for i in range(4)], 3, 4)  # type: ignore[misc]


def test_replayed_messages_are_idempotent() -> None:
    out = run_keygen(3, 4, filt=lambda m, r: [m, m, m])
    assert all(s.phase == "done" and not s.core.rejections for s in out.values())
    check_shares([out[i].result for i in range(4)], 3, 4)  # type: ignore[misc]
    # a replay after the end changes nothing
    s0 = out[0]
    s1, msgs = keygen.keygen_round(s0, [m for m in keygen.retransmit(out[1]) if m.recipient in (None, 0)])
    assert msgs == [] and s1.result is s0.result and not s1.core.rejections


def test_reordered_messages() -> None:
    """Party 0 gets the later round's messages before the earlier ones (reversed, in one inbox)."""
    states, first = start_all(2, 3)
    held: list[Message] = []
    queue = list(first)
    # parties 1 and 2 run; everything for party 0 is held back
    for _ in range(3):
        nxt = []
        for m in queue:
            for r in [1, 2, 0] if m.recipient is None else [m.recipient]:
                if r == m.sender:
                    continue
                if r == 0:
                    held.append(m)
                else:
                    states[r], out = keygen.keygen_round(states[r], [m])
                    nxt += out
        queue = nxt
    assert any(slot_of(m) == SlotCode.ECHO for m in held)
    states[0], out0 = keygen.keygen_round(states[0], list(reversed(held)))
    final = run_network(states, out0 + queue, keygen.keygen_round)
    assert all(s.phase == "done" for s in final.values())
    check_shares([final[i].result for i in range(3)], 2, 3)  # type: ignore[misc]


def test_shuffled_delivery() -> None:
    out = run_keygen(3, 5, shuffle=random.Random(7))
    check_shares([out[i].result for i in range(5)], 3, 5)  # type: ignore[misc]


def test_foreign_session_rejected() -> None:
    states, _first = start_all(2, 3)
    _other, other_first = start_all(2, 3)
    s0, out = keygen.keygen_round(states[0], [m for m in other_first if m.sender == 1])
    assert out == [] and [r.reason for r in s0.core.rejections] == ["wrong-session"]
    assert keygen.waiting_for(s0) == (1, 2)


def test_conflicting_message_rejected_first_stands() -> None:
    states, first = start_all(2, 3)
    m1 = next(m for m in first if m.sender == 1)
    s0, _ = keygen.keygen_round(states[0], [m1, replace_body(m1, flip_last(body_of(m1)))])
    assert [r.reason for r in s0.core.rejections] == ["conflicting"]
    assert s0.core.store[(SlotCode.COMMIT, 1)] == body_of(m1)


def test_impersonation_unknown_sender_misaddressed_and_garbage_rejected() -> None:
    states, first = start_all(2, 3)
    m1 = next(m for m in first if m.sender == 1)
    forged_self = Message(0, None, replace_body(m1, b"\x00" * 32).payload)
    unknown = Message(7, None, m1.payload)
    misaddressed = Message(1, 2, m1.payload)  # a broadcast slot sent point to point
    garbage = Message(1, None, b"junk")
    wrong_protocol = Message(1, None, m1.payload[:4] + b"\x03" + m1.payload[5:])
    s0, out = keygen.keygen_round(
        states[0], [forged_self, unknown, misaddressed, garbage, wrong_protocol, "x"]
    )
    assert out == []
    assert [r.reason for r in s0.core.rejections] == [
        "impersonation",
        "unknown-sender",
        "wrong-recipient",
        "malformed",
        "wrong-protocol",
        "malformed",
    ]


def test_share_for_someone_else_rejected() -> None:
    """A point-to-point share addressed to party 2 that reaches party 0 is refused, not used."""
    states, first = start_all(2, 3)
    out = run_network(
        states, first, keygen.keygen_round, filt=lambda m, r: [] if slot_of(m) == SlotCode.DECOMMIT else [m]
    )
    share_1_to_2 = next(
        m for m in keygen.retransmit(out[1]) if slot_of(m) == SlotCode.SHARE and m.recipient == 2
    )
    s0, _ = keygen.keygen_round(out[0], [share_1_to_2])
    assert s0.core.rejections[-1].reason == "wrong-recipient"


def test_blame_is_an_invalid_contribution() -> None:
    out = run_keygen(2, 3, filt=tamper(2, SlotCode.DECOMMIT, lambda b: b[:10]))
    assert all(isinstance(b, InvalidContributionError) for b in out[0].blame)


def test_parties_disagreeing_on_t_abort_at_the_echo() -> None:
    """Party 0 was started as 3-of-3, the others as 2-of-3: the echo binds t, so everyone aborts there
    instead of blaming party 0's (well-formed, 3-point) opening."""
    sid = secrets.token_bytes(32)
    states, first = {}, []
    for i in range(3):
        states[i], msgs = keygen.keygen_start(sid, i, 3 if i == 0 else 2, 3)
        first += msgs
    out = run_network(states, first, keygen.keygen_round)
    for i in range(3):
        assert out[i].phase == "failed" and out[i].result is None
        assert all("echo" in b.check for b in out[i].blame)
    assert [b.party for b in out[1].blame] == [0]
