"""Property tests for ChillDKG (hypothesis, small example counts; the whole file runs in seconds).

* Random t-of-n (1 <= t <= n <= 7): the DKG completes, every party agrees on the threshold public key
  and the public shares, every secret share matches its public share, any t shares interpolate to the
  threshold key, and the recovery data restores every output.
* One corrupted bit in any DKG message is blamed on exactly the party that sent it, with the
  investigation procedure where the draft needs it.
* ChillDKG output + BIP-445 FROST signing (``tss.frost``) by any signer set of size >= t gives a
  BIP-340 signature that coincurve's verifier accepts, also after plain (BIP-32-like) tweaks and an
  x-only BIP-341 TapTweak.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import coincurve
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tss import chilldkg
from tss.chilldkg import (
    DKGOutput,
    FaultyCoordinatorError,
    FaultyParticipantError,
    FaultyParticipantOrCoordinatorError,
    SessionParams,
    UnknownFaultyParticipantOrCoordinatorError,
)
from tss.secp256k1 import N, cbytes, point_mul_base, tagged_hash

COORD = -1  # "the coordinator" in the blame lists below

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _det(label: str, i: int, seed: int) -> bytes:
    return hashlib.sha256(f"{label}/{seed}/{i}".encode()).digest()


@st.composite
def t_n(draw: st.DrawFn, max_n: int = 7) -> tuple[int, int]:
    n = draw(st.integers(1, max_n))
    return draw(st.integers(1, n)), n


@dataclass
class Run:
    seckeys: list[bytes]
    params: SessionParams
    outputs: list[DKGOutput]  # participants
    coord_output: DKGOutput
    recovery_data: bytes


def run_dkg(t: int, n: int, seed: int) -> Run:
    seckeys = [_det("host", i, seed) for i in range(n)]
    params = SessionParams([chilldkg.hostpubkey_gen(k) for k in seckeys], t)
    r1 = [chilldkg.participant_step1(k, params, _det("rand", i, seed)) for i, k in enumerate(seckeys)]
    cstate, cmsg1 = chilldkg.coordinator_step1([m for _, m in r1], params)
    r2 = [
        chilldkg.participant_step2(k, s1, cmsg1, _det("aux", i, seed))
        for i, (k, (s1, _)) in enumerate(zip(seckeys, r1, strict=True))
    ]
    cmsg2, cout, crec = chilldkg.coordinator_finalize(cstate, [m for _, m in r2])
    finals = [chilldkg.participant_finalize(s2, cmsg2) for s2, _ in r2]
    assert all(rec == crec for _, rec in finals)
    return Run(seckeys, params, [out for out, _ in finals], cout, crec)


def lagrange_at_zero(ids: list[int], i: int) -> int:
    num, den = 1, 1
    for j in ids:
        if j != i:
            num = num * (j + 1) % N
            den = den * (j - i) % N
    return num * pow(den, -1, N) % N


@SETTINGS
@given(tn=t_n(), seed=st.integers(0, 2**32), data=st.data())
def test_dkg_completes_and_agrees(tn: tuple[int, int], seed: int, data: st.DataObject) -> None:
    t, n = tn
    run = run_dkg(t, n, seed)
    for out in run.outputs:
        assert out.thresh_pk == run.coord_output.thresh_pk
        assert out.pubshares == run.coord_output.pubshares
    shares = []
    for i, out in enumerate(run.outputs):
        assert out.secshare is not None
        s = int.from_bytes(out.secshare, "big")
        assert cbytes(point_mul_base(s)) == out.pubshares[i]
        shares.append(s)
    ids = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=t, max_size=n)))
    secret = sum(lagrange_at_zero(ids, i) * shares[i] for i in ids) % N
    assert cbytes(point_mul_base(secret)) == run.coord_output.thresh_pk
    # fewer than t shares do not (with overwhelming probability) give the key
    if t > 1:
        fewer = ids[: t - 1]
        guess = sum(lagrange_at_zero(fewer, i) * shares[i] for i in fewer) % N
        assert cbytes(point_mul_base(guess)) != run.coord_output.thresh_pk
    for i, k in enumerate(run.seckeys):
        assert chilldkg.participant_recover(k, run.recovery_data) == (run.outputs[i], run.params)
    assert chilldkg.coordinator_recover(run.recovery_data) == (run.coord_output, run.params)


# ---------------------------------------------------------------------------------------------
# blame


def _flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def blames_with_corruption(t: int, n: int, seed: int, target: str, sender: int, bit: int) -> dict[int, int]:
    """Run a DKG where one message is corrupted; {party: blamed party} for every party that noticed.
    Participants are 0..n-1, the coordinator is COORD."""
    seckeys = [_det("host", i, seed) for i in range(n)]
    params = SessionParams([chilldkg.hostpubkey_gen(k) for k in seckeys], t)
    r1 = [chilldkg.participant_step1(k, params, _det("rand", i, seed)) for i, k in enumerate(seckeys)]
    pmsgs1 = [m for _, m in r1]
    if target == "pmsg1":
        pmsgs1[sender] = _flip(pmsgs1[sender], bit % (8 * len(pmsgs1[sender])))
    blames: dict[int, int] = {}
    try:
        cstate, cmsg1 = chilldkg.coordinator_step1(pmsgs1, params)
    except FaultyParticipantError as e:
        return {COORD: e.participant_id}
    cmsg1_for = [cmsg1] * n
    if target == "cmsg1":  # the coordinator sends participant `sender` a corrupted broadcast
        cmsg1_for[sender] = _flip(cmsg1, bit % (8 * len(cmsg1)))
    cinvs = chilldkg.coordinator_investigate(pmsgs1, params)
    r2: list[tuple[chilldkg.ParticipantState2, bytes]] = []
    for j in range(n):
        try:
            r2.append(chilldkg.participant_step2(seckeys[j], r1[j][0], cmsg1_for[j], _det("aux", j, seed)))
        except UnknownFaultyParticipantOrCoordinatorError as e:
            try:
                chilldkg.participant_investigate(e, cinvs[j])
            except FaultyParticipantOrCoordinatorError as e2:
                blames[j] = e2.participant_id
            except FaultyCoordinatorError:
                blames[j] = COORD
        except FaultyParticipantOrCoordinatorError as e:
            blames[j] = e.participant_id
        except FaultyCoordinatorError:
            blames[j] = COORD
    if blames:
        return blames
    pmsgs2 = [m for _, m in r2]
    if target == "pmsg2":
        pmsgs2[sender] = _flip(pmsgs2[sender], bit % 512)
    try:
        cmsg2, _, _ = chilldkg.coordinator_finalize(cstate, pmsgs2)
    except FaultyParticipantError as e:
        return {COORD: e.participant_id}
    if target == "cmsg2":
        cmsg2_bad = _flip(cmsg2, bit % (8 * len(cmsg2)))
        try:
            chilldkg.participant_finalize(r2[sender][0], cmsg2_bad)
        except FaultyCoordinatorError:
            blames[sender] = COORD
    return blames


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tn=t_n(6),
    seed=st.integers(0, 2**32),
    target=st.sampled_from(["pmsg1", "pmsg2"]),
    who=st.integers(0, 100),
    bit=st.integers(0, 2**20),
)
def test_corrupted_participant_message_is_blamed_on_its_sender(
    tn: tuple[int, int], seed: int, target: str, who: int, bit: int
) -> None:
    t, n = tn
    sender = who % n
    bit %= 8 * (chilldkg.ParticipantMsg1.len_bytes(t, n) if target == "pmsg1" else 64)
    blames = blames_with_corruption(t, n, seed, target, sender, bit)
    if target == "pmsg1" and n == 1 and 33 * t <= bit // 8 < 33 * t + 64:
        # the proof of possession is checked by the *other* participants only; alone, it is unused
        assert blames == {}
        return
    assert blames, "corruption went unnoticed"
    for party, blamed in blames.items():
        # a participant knows its own message was sent correctly: it can only suspect the coordinator
        assert blamed == (COORD if party == sender else sender), (party, blames)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tn=t_n(6),
    seed=st.integers(0, 2**32),
    target=st.sampled_from(["cmsg1", "cmsg2"]),
    who=st.integers(0, 100),
    bit=st.integers(0, 2**20),
)
def test_corrupted_coordinator_message_is_blamed_on_the_coordinator(
    tn: tuple[int, int], seed: int, target: str, who: int, bit: int
) -> None:
    t, n = tn
    receiver = who % n
    bit %= 8 * (chilldkg.CoordinatorMsg1.len_bytes(t, n) if target == "cmsg1" else 64 * n)
    blames = blames_with_corruption(t, n, seed, target, receiver, bit)
    own_pop = 33 * (n + t - 1) + 64 * receiver
    if target == "cmsg1" and own_pop <= bit // 8 < own_pop + 64:
        # a participant does not check its own proof of possession, and pops are not in the
        # equality input or the recovery data: the corruption is harmless
        assert blames == {}
        return
    if target == "cmsg1" and COORD in blames:
        # the receiver accepted a copy it cannot fully check alone (another participant's encrypted
        # share) and signed what it saw; CertEq catches the mismatch, and the coordinator, whose copy
        # was altered, sees the receiver's signature fail. No participant blamed anybody.
        assert blames == {COORD: receiver}
        return
    assert list(blames) == [receiver], "only the receiver of the corrupted copy notices"
    blamed = blames[receiver]
    # the draft can say "the coordinator", or "participant j or the coordinator" when the coordinator
    # relays a participant's commitment or proof of possession wrongly (it cannot tell which of the two)
    assert blamed == COORD or (target == "cmsg1" and 0 <= blamed < n and blamed != receiver)


# ---------------------------------------------------------------------------------------------
# ChillDKG + BIP-445 FROST

try:
    from tss import frost
except ImportError as exc:  # pragma: no cover - another engineer's module
    frost = None
    FROST_IMPORT_ERROR = str(exc)
else:
    FROST_IMPORT_ERROR = ""


@pytest.mark.skipif(frost is None, reason=f"tss.frost not importable: {FROST_IMPORT_ERROR}")
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tn=t_n(5),
    seed=st.integers(0, 2**32),
    data=st.data(),
    n_plain=st.integers(0, 2),
    taproot=st.booleans(),
    msg=st.binary(min_size=32, max_size=32),
)
def test_chilldkg_output_signs_with_frost(
    tn: tuple[int, int], seed: int, data: st.DataObject, n_plain: int, taproot: bool, msg: bytes
) -> None:
    assert frost is not None
    t, n = tn
    run = run_dkg(t, n, seed)
    pubshares = run.coord_output.pubshares
    thresh_pk = run.coord_output.thresh_pk
    ids = sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=t, max_size=n), label="signers"))
    # the BIP-445 threshold key of the signer set is ChillDKG's threshold key
    assert frost.derive_thresh_pubkey(ids, [coincurve.PublicKey(pubshares[i]) for i in ids]) == thresh_pk

    # plain tweaks (BIP-32 public derivation style), then the BIP-341 TapTweak of the resulting key
    tweaks = [tagged_hash("test/plain", bytes([k]) + thresh_pk) for k in range(n_plain)]
    is_xonly = [False] * n_plain
    if taproot:
        internal = frost.get_xonly_pk(frost.thresh_pubkey_and_tweak(thresh_pk, tweaks, is_xonly))
        tweaks.append(tagged_hash("TapTweak", internal))
        is_xonly.append(True)
    out_key = frost.get_xonly_pk(frost.thresh_pubkey_and_tweak(thresh_pk, tweaks, is_xonly))

    signers = frost.SignersContext(n, t, ids, [pubshares[i] for i in ids], thresh_pk)
    nonces = []
    for i in ids:
        secshare = run.outputs[i].secshare
        assert secshare is not None
        nonces.append(frost.nonce_gen(secshare, pubshares[i], out_key, msg, None))
    pubnonces = [pn for _, pn in nonces]
    session = frost.SessionContext(frost.nonce_agg(pubnonces), signers, tweaks, is_xonly, msg)
    psigs = []
    for k, i in enumerate(ids):
        secshare = run.outputs[i].secshare
        assert secshare is not None
        psig = frost.sign(nonces[k][0], secshare, i, session)
        assert frost.partial_sig_verify(psig, pubnonces, signers, tweaks, is_xonly, msg, k)
        psigs.append(psig)
    sig = frost.partial_sig_agg(psigs, session)
    assert coincurve.PublicKeyXOnly(out_key).verify(sig, msg)


# ---------------------------------------------------------------------------------------------
# bad input: a clear ValueError or one of the draft's errors, never anything else

EXPECTED = (ValueError, chilldkg.ProtocolError)
FIXED = run_dkg(2, 3, seed=11)
NOT_ON_CURVE = bytes.fromhex("02" + "00" * 31 + "05")  # x = 5 has no y on secp256k1


def _bad_bytes(length: int) -> st.SearchStrategy[bytes]:
    """Random bytes of about the right length, or of exactly the right length with a corrupt prefix."""
    return st.one_of(
        st.binary(max_size=length + 40),
        st.binary(min_size=length, max_size=length),
        st.binary(min_size=max(0, length - 33), max_size=max(0, length - 33)).map(lambda b: NOT_ON_CURVE + b),
        st.just(b"\xff" * length),
        st.just(b"\x00" * length),
    )


def _raises_cleanly(fn: Callable[[], object]) -> None:
    try:
        fn()
    except EXPECTED:
        pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_bad_messages_raise_clean_errors(data: st.DataObject) -> None:
    t, n = FIXED.params.t, len(FIXED.seckeys)
    k = FIXED.seckeys[0]
    s1, pmsg1 = chilldkg.participant_step1(k, FIXED.params, _det("rand", 0, 99))
    cmsg1 = data.draw(_bad_bytes(chilldkg.CoordinatorMsg1.len_bytes(t, n)), label="cmsg1")
    _raises_cleanly(lambda: chilldkg.participant_step2(k, s1, cmsg1, b"\x01" * 32))
    pmsgs = [pmsg1, *(data.draw(_bad_bytes(len(pmsg1))) for _ in range(n - 1))]
    _raises_cleanly(lambda: chilldkg.coordinator_step1(pmsgs, FIXED.params))
    _raises_cleanly(lambda: chilldkg.coordinator_investigate(pmsgs, FIXED.params))
    rec = data.draw(_bad_bytes(len(FIXED.recovery_data)), label="recovery data")
    _raises_cleanly(lambda: chilldkg.participant_recover(k, rec))
    _raises_cleanly(lambda: chilldkg.coordinator_recover(rec))
    _raises_cleanly(lambda: chilldkg.hostpubkey_gen(data.draw(_bad_bytes(32))))
    sigs = [data.draw(_bad_bytes(64)) for _ in range(n)]
    _raises_cleanly(
        lambda: chilldkg.participant_recovery_acks_verify(FIXED.recovery_data, FIXED.params, sigs)
    )


@pytest.mark.parametrize(
    ("hostpubkeys", "t", "error"),
    [
        (lambda pks: pks, 0, chilldkg.ThresholdOrCountError),
        (lambda pks: pks, 4, chilldkg.ThresholdOrCountError),
        (lambda pks: pks, -1, chilldkg.ThresholdOrCountError),
        (lambda pks: pks, True, chilldkg.ThresholdOrCountError),
        (lambda pks: [], 1, chilldkg.ThresholdOrCountError),
        (lambda pks: [pks[0], pks[1], pks[0]], 2, chilldkg.DuplicateHostPubkeyError),
        (lambda pks: [pks[0], NOT_ON_CURVE, pks[2]], 2, chilldkg.InvalidHostPubkeyError),
        (lambda pks: [pks[0], pks[1][:32], pks[2]], 2, chilldkg.InvalidHostPubkeyError),
        (lambda pks: [pks[0], b"\x00" * 33, pks[2]], 2, chilldkg.InvalidHostPubkeyError),
        (lambda pks: [pks[0], b"\x04" + pks[1][1:], pks[2]], 2, chilldkg.InvalidHostPubkeyError),
        (lambda pks: [pks[0], "not bytes", pks[2]], 2, chilldkg.InvalidHostPubkeyError),
    ],
    ids=["t0", "t>n", "t<0", "t-bool", "n0", "duplicate", "off-curve", "short", "infinity", "prefix", "str"],
)
def test_bad_session_params(hostpubkeys: Callable[[list[bytes]], list[bytes]], t: int, error: type) -> None:
    params = SessionParams(hostpubkeys(list(FIXED.params.hostpubkeys)), t)
    for fn in (
        lambda: chilldkg.params_hash(params),
        lambda: chilldkg.participant_step1(FIXED.seckeys[0], params, b"\x01" * 32),
        lambda: chilldkg.coordinator_step1([b""] * len(params.hostpubkeys), params),
    ):
        with pytest.raises(error):
            fn()


def test_bad_local_input() -> None:
    k, params = FIXED.seckeys[0], FIXED.params
    with pytest.raises(chilldkg.HostSeckeyError):
        chilldkg.hostpubkey_gen(b"\x00" * 32)
    with pytest.raises(chilldkg.HostSeckeyError):
        chilldkg.hostpubkey_gen(N.to_bytes(32, "big"))
    with pytest.raises(ValueError):
        chilldkg.hostpubkey_gen(b"\x01" * 31)
    with pytest.raises(chilldkg.RandomnessError):
        chilldkg.participant_step1(k, params, b"\x00" * 32)
    with pytest.raises(ValueError):
        chilldkg.participant_step1(k, params, b"\x01" * 31)
    with pytest.raises(chilldkg.HostSeckeyError):
        chilldkg.participant_step1(b"\x07" * 32, params, b"\x01" * 32)
    with pytest.raises(ValueError):
        chilldkg.coordinator_step1([], params)
    with pytest.raises(chilldkg.RecoveryDataError):
        chilldkg.coordinator_recover(b"")
    with pytest.raises(chilldkg.HostSeckeyError):
        chilldkg.participant_recover(b"\x07" * 32, FIXED.recovery_data)
    ack = chilldkg.participant_recovery_ack_sign(k, FIXED.recovery_data, params, b"\x02" * 32)
    acks = [
        chilldkg.participant_recovery_ack_sign(s, FIXED.recovery_data, params, b"\x02" * 32)
        for s in FIXED.seckeys
    ]
    assert acks[0] == ack
    chilldkg.participant_recovery_acks_verify(FIXED.recovery_data, params, acks)
    with pytest.raises(chilldkg.InvalidRecoveryAckError) as info:
        chilldkg.participant_recovery_acks_verify(FIXED.recovery_data, params, [acks[0], acks[2], acks[1]])
    assert info.value.participant_id == 1
    other = SessionParams(params.hostpubkeys, 3)
    with pytest.raises(chilldkg.RecoveryDataError):
        chilldkg.participant_recovery_ack_sign(k, FIXED.recovery_data, other, b"\x02" * 32)
