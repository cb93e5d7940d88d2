"""Property tests for ``tss.frost`` over random t-of-n keys from the test-only dealer.

* any signer set of size >= t signs a message (any length) that coincurve's BIP-340 verifier accepts,
  untweaked and with BIP-32-like plain tweaks followed by a BIP-341 TapTweak (x-only), also when the
  last signer uses ``deterministic_sign``;
* a corrupted partial signature or pubnonce is blamed on exactly the signer that sent it;
* fewer than t signers cannot sign (the API refuses);
* a secnonce signs at most once;
* garbage input raises ``ValueError`` / ``InvalidContributionError`` only, never anything else.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from coincurve import PublicKeyXOnly
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.frost_test_dealer import DealtKey, deal
from tss.frost import (
    InvalidContributionError,
    SessionContext,
    SignersContext,
    apply_tweak,
    deterministic_sign,
    get_plain_pk,
    get_xonly_pk,
    nonce_agg,
    nonce_gen,
    partial_sig_agg,
    partial_sig_verify,
    sign,
    tweak_ctx_init,
    validate_signers_ctx,
)
from tss.secp256k1 import N, tagged_hash

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def setups(draw: st.DrawFn) -> tuple[DealtKey, list[int]]:
    """A random t-of-n key (1 <= t <= n <= 7) and a signer set of size >= t in random order."""
    n = draw(st.integers(1, 7))
    t = draw(st.integers(1, n))
    key = deal(n, t, rng=random.Random(draw(st.integers(0, 2**64))))
    u = draw(st.integers(t, n))
    ids = draw(st.permutations(range(n)))[:u]
    return key, list(ids)


def signers_ctx(key: DealtKey, ids: list[int], t: int | None = None) -> SignersContext:
    pubshares = [key.pubshares[i] for i in ids]
    return SignersContext(key.n, key.t if t is None else t, ids, pubshares, key.thresh_pk)


def bip32_like_tweaks(key: DealtKey, count: int) -> tuple[list[bytes], list[bool], bytes]:
    """``count`` plain tweaks derived from the current plain key (like BIP-32 public derivation), then the
    BIP-341 TapTweak of the resulting x-only key. Returns (tweaks, is_xonly, final x-only key)."""
    ctx = tweak_ctx_init(key.thresh_pk)
    tweaks: list[bytes] = []
    for i in range(count):
        tw = tagged_hash("test/bip32-like", get_plain_pk(ctx) + i.to_bytes(4, "big"))
        tweaks.append(tw)
        ctx = apply_tweak(ctx, tw, False)
    taptweak = tagged_hash("TapTweak", get_xonly_pk(ctx))
    tweaks.append(taptweak)
    ctx = apply_tweak(ctx, taptweak, True)
    return tweaks, [False] * count + [True], get_xonly_pk(ctx)


def run_signing(
    key: DealtKey,
    ids: list[int],
    msg: bytes,
    tweaks: list[bytes],
    is_xonly: list[bool],
    det_last: bool = False,
) -> tuple[SignersContext, list[bytes], SessionContext, list[bytes]]:
    ctx = signers_ctx(key, ids)
    nonces = {i: nonce_gen(key.secshares[i], key.pubshares[i], None, msg, None) for i in ids}
    last = ids[-1]
    if det_last:
        others = [nonces[i][1] for i in ids[:-1]]
        aggother = nonce_agg(others) if others else None
        pn, psig_last = deterministic_sign(
            key.secshares[last], last, aggother, ctx, tweaks, is_xonly, msg, None
        )
        nonces[last] = (bytearray(64), pn)
    pubnonces = [nonces[i][1] for i in ids]
    session = SessionContext(nonce_agg(pubnonces), ctx, tweaks, is_xonly, msg)
    psigs = []
    for i in ids:
        if det_last and i == last:
            psigs.append(psig_last)
        else:
            psigs.append(sign(nonces[i][0], key.secshares[i], i, session))
    return ctx, pubnonces, session, psigs


# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(setups(), st.binary(max_size=80), st.booleans())
def test_any_quorum_signs_valid_bip340(setup: tuple[DealtKey, list[int]], msg: bytes, det_last: bool) -> None:
    key, ids = setup
    ctx, pubnonces, session, psigs = run_signing(key, ids, msg, [], [], det_last)
    for idx in range(len(ids)):
        assert partial_sig_verify(psigs[idx], pubnonces, ctx, [], [], msg, idx)
    sig = partial_sig_agg(psigs, session)
    assert PublicKeyXOnly(key.thresh_pk[1:]).verify(sig, msg)


@SETTINGS
@given(setups(), st.binary(min_size=32, max_size=32), st.integers(0, 3), st.booleans())
def test_tweaked_bip32_then_taproot(
    setup: tuple[DealtKey, list[int]], msg: bytes, n_plain: int, det_last: bool
) -> None:
    key, ids = setup
    tweaks, is_xonly, output_key = bip32_like_tweaks(key, n_plain)
    ctx, pubnonces, session, psigs = run_signing(key, ids, msg, tweaks, is_xonly, det_last)
    for idx in range(len(ids)):
        assert partial_sig_verify(psigs[idx], pubnonces, ctx, tweaks, is_xonly, msg, idx)
    sig = partial_sig_agg(psigs, session)
    assert PublicKeyXOnly(output_key).verify(sig, msg)
    assert not PublicKeyXOnly(key.thresh_pk[1:]).verify(sig, msg)


@SETTINGS
@given(setups(), st.data())
def test_corrupted_psig_blamed_on_its_sender(setup: tuple[DealtKey, list[int]], data: st.DataObject) -> None:
    key, ids = setup
    msg = b"m" * 32
    ctx, pubnonces, session, psigs = run_signing(key, ids, msg, [], [])
    bad = data.draw(st.integers(0, len(ids) - 1))
    delta = data.draw(st.integers(1, N - 1))
    psigs[bad] = ((int.from_bytes(psigs[bad], "big") + delta) % N).to_bytes(32, "big")
    verdicts = [partial_sig_verify(psigs[i], pubnonces, ctx, [], [], msg, i) for i in range(len(ids))]
    assert verdicts == [i != bad for i in range(len(ids))]
    assert not PublicKeyXOnly(key.thresh_pk[1:]).verify(partial_sig_agg(psigs, session), msg)
    # an out-of-range psig is caught by aggregation itself, blaming the same position
    psigs[bad] = N.to_bytes(32, "big")
    with pytest.raises(InvalidContributionError) as info:
        partial_sig_agg(psigs, session)
    assert (info.value.signer_index, info.value.contrib, info.value.signer_id) == (bad, "psig", ids[bad])


@SETTINGS
@given(setups(), st.data())
def test_corrupted_pubnonce_blamed_on_its_sender(
    setup: tuple[DealtKey, list[int]], data: st.DataObject
) -> None:
    key, ids = setup
    msg = b"n" * 32
    ctx = signers_ctx(key, ids)
    nonces = [nonce_gen() for _ in ids]
    bad = data.draw(st.integers(0, len(ids) - 1))
    # (a) a signer broadcasts a well-formed pubnonce that is not the one it signs with
    sent = [pn for _, pn in nonces]
    sent[bad] = nonce_gen()[1]
    session = SessionContext(nonce_agg(sent), ctx, [], [], msg)
    psigs = [sign(nonces[i][0], key.secshares[j], j, session) for i, j in enumerate(ids)]
    verdicts = [partial_sig_verify(psigs[i], sent, ctx, [], [], msg, i) for i in range(len(ids))]
    assert verdicts == [i != bad for i in range(len(ids))]
    # (b) a malformed pubnonce is blamed by nonce aggregation and by verification of anyone's psig
    garbage = data.draw(
        st.sampled_from([b"", b"\x04" + bytes(65), b"\x02" + b"\xff" * 32 + sent[bad][33:], sent[bad][:65]])
    )
    sent[bad] = garbage
    with pytest.raises(InvalidContributionError) as info:
        nonce_agg(sent)
    assert (info.value.signer_index, info.value.contrib) == (bad, "pubnonce")
    other = (bad + 1) % len(ids)
    with pytest.raises(InvalidContributionError) as info:
        partial_sig_verify(psigs[other], sent, ctx, [], [], msg, other)
    assert (info.value.signer_index, info.value.contrib, info.value.signer_id) == (bad, "pubnonce", ids[bad])


@SETTINGS
@given(setups(), st.data())
def test_fewer_than_t_signers_refused(setup: tuple[DealtKey, list[int]], data: st.DataObject) -> None:
    key, ids = setup
    if key.t == 1:
        return  # nothing below t = 1 but the empty set, covered below
    few = ids[: data.draw(st.integers(0, key.t - 1))]
    secnonce, pubnonce = nonce_gen()
    ctx = signers_ctx(key, few)
    with pytest.raises(ValueError):
        validate_signers_ctx(ctx)
    session = SessionContext(nonce_agg([pubnonce] * max(1, len(few))), ctx, [], [], b"x")
    with pytest.raises(ValueError):
        sign(secnonce, key.secshares[ids[0]], ids[0], session)
    with pytest.raises(ValueError):
        partial_sig_agg([bytes(32)] * len(few), session)
    if few:
        # lying about t does not help: fewer than t shares do not interpolate to the key
        with pytest.raises(ValueError):
            validate_signers_ctx(signers_ctx(key, few, t=len(few)))


def test_empty_signer_set_refused() -> None:
    key = deal(3, 1, rng=random.Random(0))
    with pytest.raises(ValueError):
        validate_signers_ctx(signers_ctx(key, []))


def test_secnonce_is_consumed() -> None:
    key = deal(3, 2, rng=random.Random(1))
    ctx = signers_ctx(key, [0, 1])
    n0, n1 = nonce_gen(), nonce_gen()
    session = SessionContext(nonce_agg([n0[1], n1[1]]), ctx, [], [], b"msg")
    secnonce = n0[0]
    assert isinstance(secnonce, bytearray) and any(secnonce)
    sign(secnonce, key.secshares[0], 0, session)
    assert secnonce == bytearray(64)
    with pytest.raises(ValueError):
        sign(secnonce, key.secshares[0], 0, session)
    with pytest.raises(ValueError):  # an immutable copy cannot be erased, so it is refused
        sign(bytes(n1[0]), key.secshares[1], 1, session)  # type: ignore[arg-type]
    # a failed sign attempt consumes the nonce too
    with pytest.raises(ValueError):
        sign(n1[0], bytes(32), 1, session)
    assert n1[0] == bytearray(64)


def test_sign_self_check_catches_a_faulty_psig(monkeypatch: pytest.MonkeyPatch) -> None:
    """A computation fault in the released bytes is caught by sign's own verification."""
    import tss.frost as frost_mod

    key = deal(3, 2, rng=random.Random(2))
    ctx = signers_ctx(key, [0, 2])
    n0, n2 = nonce_gen(), nonce_gen()
    session = SessionContext(nonce_agg([n0[1], n2[1]]), ctx, [], [], b"msg")
    real = frost_mod.scalar_to_bytes
    monkeypatch.setattr(frost_mod, "scalar_to_bytes", lambda x: real(x ^ 1))
    with pytest.raises(ValueError, match="own verification"):
        sign(n0[0], key.secshares[0], 0, session)


# ---------------------------------------------------------------------------------------------
# garbage in: only ValueError / InvalidContributionError out

JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.text(max_size=4),
    st.binary(max_size=70),
    st.lists(st.integers(-3, 9), max_size=4),
    st.lists(st.binary(max_size=67), max_size=4),
    st.just(b"\x00" * 33),
    st.just(b"\x02" + b"\xff" * 32),
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    return draw(st.one_of(st.just(value), JUNK))


def _only_expected_errors(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except (ValueError, InvalidContributionError):
        pass


KEY = deal(4, 3, rng=random.Random(7))
IDS = [0, 1, 3]
GOOD_CTX = signers_ctx(KEY, IDS)
GOOD_NONCES = [nonce_gen() for _ in IDS]
GOOD_PUBNONCES = [pn for _, pn in GOOD_NONCES]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_garbage_input_never_crashes(data: st.DataObject) -> None:
    d = data.draw
    ids = d(mutated(list(IDS)))
    pubshares = d(mutated([KEY.pubshares[i] for i in IDS]))
    if isinstance(pubshares, list) and pubshares and d(st.booleans()):
        pubshares[0] = d(JUNK)
    ctx = SignersContext(d(mutated(KEY.n)), d(mutated(KEY.t)), ids, pubshares, d(mutated(KEY.thresh_pk)))
    pubnonces = d(mutated(list(GOOD_PUBNONCES)))
    if isinstance(pubnonces, list) and pubnonces and d(st.booleans()):
        pubnonces[d(st.integers(0, len(pubnonces) - 1))] = d(JUNK)
    tweaks = d(mutated([b"\x01" * 32]))
    is_xonly = d(mutated([True]))
    msg = d(mutated(b"msg"))
    aggnonce = d(mutated(nonce_agg(GOOD_PUBNONCES)))
    session = SessionContext(aggnonce, ctx, tweaks, is_xonly, msg)
    _only_expected_errors(validate_signers_ctx, ctx)
    _only_expected_errors(nonce_agg, pubnonces)
    _only_expected_errors(
        nonce_gen, d(mutated(None)), d(mutated(None)), d(mutated(None)), d(mutated(None)), d(mutated(None))
    )
    _only_expected_errors(sign, d(mutated(bytearray(GOOD_NONCES[0][0]))), d(mutated(KEY.secshares[0])),
                          d(mutated(0)), session)
    _only_expected_errors(partial_sig_verify, d(mutated(bytes(32))), pubnonces, ctx, tweaks, is_xonly, msg,
                          d(mutated(0)))
    _only_expected_errors(partial_sig_agg, d(mutated([bytes(32)] * 3)), session)
    _only_expected_errors(deterministic_sign, d(mutated(KEY.secshares[0])), d(mutated(0)),
                          d(mutated(None)), ctx, tweaks, is_xonly, msg, d(mutated(None)))
    _only_expected_errors(apply_tweak, tweak_ctx_init(KEY.thresh_pk), d(JUNK), d(JUNK))
    _only_expected_errors(tweak_ctx_init, d(JUNK))
