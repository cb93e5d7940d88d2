"""The FROST signing round state machine under dropped, reordered, replayed, corrupted and foreign
messages. Keys come from the test-only dealer."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable, Iterable

import pytest

from tests.unit.frost_test_dealer import DealtKey, deal
from tss.frost import SignersContext, get_xonly_pk, nonce_gen, thresh_pubkey_and_tweak
from tss.frost_signing_session import (
    KIND_PSIG,
    KIND_PUBNONCE,
    Blame,
    Message,
    Phase,
    SessionParams,
    SigningState,
    encode_payload,
    finalize,
    missing,
    new_session,
    round_1,
    round_2,
)
from tss.secp256k1 import schnorr_verify, tagged_hash

KEY: DealtKey = deal(5, 3, rng=random.Random(445))
IDS = [4, 0, 2]  # any t-subset, deliberately unsorted
SID = bytes(range(32))
MSG = b"spend 1 BTC to bc1p..."  # not 32 bytes: the optional feature is implemented


def params(ids: list[int] = IDS, tweaks: tuple[bytes, ...] = (), is_xonly: tuple[bool, ...] = (),
           **kw: object) -> SessionParams:
    ctx = SignersContext(KEY.n, KEY.t, ids, [KEY.pubshares[i] for i in ids], KEY.thresh_pk)
    return SessionParams(SID, ctx, MSG, tweaks, is_xonly, **kw)  # type: ignore[arg-type]


def start(p: SessionParams | None = None) -> dict[int, SigningState]:
    p = p or params()
    return {i: new_session(p, i, KEY.secshares[i]) for i in p.signers_ctx.ids}


Net = Callable[[int, list[Message]], list[Message]]  # (recipient, messages in flight) -> its inbox


def everything(_: int, msgs: list[Message]) -> list[Message]:
    return list(msgs)


def step(
    states: dict[int, SigningState],
    fn: Callable[[SigningState, Iterable[object]], tuple[SigningState, list[Message]]],
    in_flight: list[Message],
    net: Net = everything,
) -> list[Message]:
    out: list[Message] = []
    for i in list(states):
        states[i], o = fn(states[i], net(i, in_flight))
        out += o
    return out


def run(states: dict[int, SigningState], net: Net = everything) -> None:
    m1 = step(states, round_1, [], net)
    m2 = step(states, round_2, m1, net)
    step(states, finalize, m2, net)


def tweaked_key(p: SessionParams) -> bytes:
    return get_xonly_pk(thresh_pubkey_and_tweak(KEY.thresh_pk, list(p.tweaks), list(p.is_xonly)))


def assert_done(states: dict[int, SigningState], p: SessionParams) -> None:
    sigs = {s.signature for s in states.values()}
    assert all(s.phase is Phase.DONE for s in states.values()), [s.phase for s in states.values()]
    assert len(sigs) == 1
    sig = sigs.pop()
    assert sig is not None and schnorr_verify(p.msg, tweaked_key(p), sig)


# ---------------------------------------------------------------------------------------------


def test_happy_path_with_tweaks() -> None:
    plain = tagged_hash("test/bip32-like", b"child 7")
    p0 = params(tweaks=(plain,), is_xonly=(False,))
    taptweak = tagged_hash("TapTweak", tweaked_key(p0))
    p = params(tweaks=(plain, taptweak), is_xonly=(False, True))
    states = start(p)
    run(states)
    assert_done(states, p)
    assert all(not s.rejections and not s.blame for s in states.values())


def test_reordered_and_early_messages() -> None:
    p = params()
    states = start(p)
    rng = random.Random(1)

    def shuffled(_: int, msgs: list[Message]) -> list[Message]:
        out = list(msgs)
        rng.shuffle(out)
        return out

    m1 = step(states, round_1, [], shuffled)
    # signer 4 signs first, and its psig reaches the others together with the nonces (early)
    states[4], early = round_2(states[4], m1)
    for i in (0, 2):
        states[i], out = round_2(states[i], shuffled(i, m1 + early))
        early += out
    step(states, finalize, early[::-1])
    assert_done(states, p)


def test_replayed_messages_are_idempotent() -> None:
    p = params()
    states = start(p)
    m1 = step(states, round_1, [])
    m2 = step(states, round_2, m1 + m1)
    # rounds called again re-send the same messages and never sign twice
    assert step(states, round_1, m1) == m1
    assert step(states, round_2, m2 + m1) == m2
    step(states, finalize, m1 + m2 + m2 + m1)
    assert_done(states, p)
    assert all(not s.rejections for s in states.values())


def test_dropped_nonce_says_who_is_missing_then_recovers() -> None:
    p = params()
    states = start(p)
    m1 = step(states, round_1, [])

    def drop_2(_: int, msgs: list[Message]) -> list[Message]:
        return [m for m in msgs if m.sender != 2]

    m2 = step(states, round_2, m1, drop_2)
    assert [m.sender for m in m2] == [2]  # only signer 2 (which has every nonce) could sign
    assert missing(states[4]) == (2,) and missing(states[0]) == (2,)
    assert states[4].phase is Phase.NONCES
    # signer 2 re-sends on retry; the others can now sign
    states[2], resend = round_1(states[2])
    for i in (4, 0):
        states[i], out = round_2(states[i], resend)
        m2 += out
    step(states, finalize, m2)
    assert_done(states, p)


def test_dropped_psig_cannot_finish() -> None:
    p = params()
    states = start(p)
    m1 = step(states, round_1, [])
    m2 = step(states, round_2, m1)
    step(states, finalize, [m for m in m2 if m.sender != 0])
    for i in (4, 2):
        assert states[i].phase is Phase.PSIGS and states[i].signature is None
        assert missing(states[i]) == (0,)
    assert states[0].phase is Phase.DONE  # 0 had every psig


def _corrupt(m: Message, body: bytes) -> Message:
    return Message(m.sender, m.recipient, m.payload[:33] + body)


@pytest.mark.parametrize("bad", [b"\x04" + bytes(65), b"\x02" + bytes(32) * 2, b"\x02" * 10])
def test_malformed_pubnonce_blames_sender(bad: bytes) -> None:
    states = start()
    m1 = step(states, round_1, [])
    m1 = [_corrupt(m, bad) if m.sender == 0 else m for m in m1]
    step(states, round_2, m1)
    for i in (4, 2):
        assert states[i].phase is Phase.FAILED
        assert states[i].blame == (Blame(0, "pubnonce"),)


def test_wrong_but_valid_pubnonce_blames_sender_at_finalize() -> None:
    p = params()
    states = start(p)
    m1 = step(states, round_1, [])
    _, other = nonce_gen()
    # signer 2 broadcasts a pubnonce that is not the one it signs with
    m1 = [_corrupt(m, other) if m.sender == 2 else m for m in m1]
    m2: list[Message] = []
    for i in IDS:  # 2 signs honestly with its real nonce (its own corrupted echo is not taken)
        states[i], out = round_2(states[i], m1)
        m2 += out
    step(states, finalize, m2)
    for i in (4, 0):
        assert states[i].phase is Phase.FAILED and states[i].blame == (Blame(2, "psig"),)


@pytest.mark.parametrize("how", ["flip", "order", "short"])
def test_corrupted_psig_blames_exactly_the_sender(how: str) -> None:
    states = start()
    m1 = step(states, round_1, [])
    m2 = step(states, round_2, m1)

    def corrupt(m: Message) -> Message:
        body = m.payload[33:]
        if how == "flip":
            body = bytes([body[0] ^ 1]) + body[1:]
        elif how == "order":
            body = bytes.fromhex("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141")
        else:
            body = body[:31]
        return _corrupt(m, body)

    m2 = [corrupt(m) if m.sender == 4 else m for m in m2]
    step(states, finalize, m2)
    for i in (0, 2):
        assert states[i].phase is Phase.FAILED
        assert states[i].blame == (Blame(4, "psig"),)


def test_foreign_and_malformed_messages_are_reported_not_fatal() -> None:
    p = params()
    states = start(p)
    m1 = step(states, round_1, [])
    _, pn = nonce_gen()
    junk: list[object] = [
        Message(1, None, encode_payload(KIND_PUBNONCE, SID, pn)),  # 1 is not in the signer set
        Message(99, None, b"\x01"),  # unknown and malformed
        Message(0, None, b""),  # empty payload
        Message(0, None, b"\x07" + SID + pn),  # unknown kind
        Message(0, None, encode_payload(KIND_PUBNONCE, bytes(32), pn)),  # other session
        Message(0, 3, encode_payload(KIND_PUBNONCE, SID, pn)),  # addressed to someone else
        Message(True, None, encode_payload(KIND_PUBNONCE, SID, pn)),  # type: ignore[arg-type]
        "not a message",
        None,
        Message(0, None, "text"),  # type: ignore[arg-type]
    ]
    m2 = step(states, round_2, junk + m1)
    m2 += [Message(0, None, encode_payload(KIND_PSIG, SID, bytes(31)))]  # conflicting psig from 0
    step(states, finalize, m2)
    assert_done(states, p)
    reasons = [r.reason for r in states[4].rejections]
    assert reasons == [
        "unknown-sender", "unknown-sender", "malformed", "malformed", "wrong-session", "wrong-recipient",
        "unknown-sender", "malformed", "malformed", "malformed", "conflicting",
    ]
    # the conflicting psig reached 0 itself as a message "from 0": impersonation, ignored
    assert [r.reason for r in states[0].rejections][-1] == "impersonation"


def test_equivocating_pubnonce_keeps_the_first() -> None:
    p = params()
    states = start(p)
    m1 = step(states, round_1, [])
    _, other = nonce_gen()
    extra = [_corrupt(m, other) for m in m1 if m.sender == 0]
    m2 = step(states, round_2, m1 + extra)
    step(states, finalize, m2)
    assert_done(states, p)
    assert [r.reason for r in states[4].rejections] == ["conflicting"]


def test_precommitted_pool_nonce() -> None:
    pool_secnonce, pool_pubnonce = nonce_gen(KEY.secshares[0])
    p = params(precommitted_pubnonces={0: pool_pubnonce})
    states = {i: new_session(p, i, KEY.secshares[i]) for i in (4, 2)}
    states[0] = new_session(p, 0, KEY.secshares[0], (pool_secnonce, pool_pubnonce))
    m1 = step(states, round_1, [])
    assert sorted(m.sender for m in m1) == [2, 4]  # 0's nonce is already known to everyone
    m2 = step(states, round_2, m1)
    step(states, finalize, m2)
    assert_done(states, p)
    assert pool_secnonce == bytearray(64)  # the pool nonce is consumed
    with pytest.raises(ValueError):  # and cannot start another session
        new_session(p, 0, KEY.secshares[0], (pool_secnonce, pool_pubnonce))


def test_secnonce_cannot_sign_twice_even_from_an_old_state() -> None:
    states = start()
    m1 = step(states, round_1, [])
    old = states[0]
    old = dataclasses.replace(old, pubnonces=dict(old.pubnonces))
    states[0], _ = round_2(old, m1)
    with pytest.raises(ValueError):
        round_2(old, m1)  # the old state shares the (now erased) secnonce


def test_bad_session_parameters() -> None:
    with pytest.raises(ValueError):
        new_session(params(), 1, KEY.secshares[1])  # not in the signer set
    with pytest.raises(ValueError):
        new_session(params(), 0, KEY.secshares[2])  # someone else's share
    with pytest.raises(ValueError):
        new_session(dataclasses.replace(params(), session_id=b"short"), 0, KEY.secshares[0])
    with pytest.raises(ValueError):
        new_session(params(ids=[0, 0, 2]), 0, KEY.secshares[0])
    with pytest.raises(ValueError):
        new_session(params(ids=[0, 2]), 0, KEY.secshares[0])  # fewer than t
    with pytest.raises(ValueError):
        new_session(params(tweaks=(b"\xff" * 32,), is_xonly=(True,)), 0, KEY.secshares[0])


def test_secrets_not_in_repr() -> None:
    s = start()[0]
    assert KEY.secshares[0].hex() not in repr(s) and "secshare=" not in repr(s)
    assert bytes(s.secnonce).hex() not in repr(s)
