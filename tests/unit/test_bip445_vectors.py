"""Every BIP-445 conformance vector in ``tests/vectors/bip445`` as its own pytest case.

Layout of the files: ``test_vectors_summary.md`` beside them. Error cases check the exception type and,
for ``InvalidContributionError``, the blamed position (``signer_index``) and the contribution kind. The
vectors' ``ValueError`` message strings are those of the reference implementation; our messages are our
own, so only the type is compared for ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.vectors import load_json
from tss.frost import (
    InvalidContributionError,
    SessionContext,
    SignersContext,
    deterministic_sign,
    get_xonly_pk,
    nonce_agg,
    nonce_gen_internal,
    partial_sig_agg,
    partial_sig_verify,
    sign,
    thresh_pubkey_and_tweak,
)
from tss.secp256k1 import schnorr_verify

Case = tuple[str, dict[str, Any], dict[str, Any]]  # (id, group (shared inputs), case)


def _h(x: str | None) -> bytes | None:
    return None if x is None else bytes.fromhex(x)


def _hx(x: str) -> bytes:
    return bytes.fromhex(x)


def _cases(filename: str, *arrays: str) -> list[Case]:
    data = load_json(f"bip445/{filename}")
    out: list[Case] = []
    groups: list[dict[str, Any]] = data.get("test_groups", [data])
    for group in groups:
        for array in arrays:
            for tc in group.get(array, []):
                tg = f"{group['tg_id']}-" if "tg_id" in group else ""
                label = f"{filename.removesuffix('_vectors.json')}-{tg}{array}-tc{tc['tc_id']}"
                out.append((label, group, tc))
    return out


def _params(cases: list[Case]) -> Any:
    values = [(g, tc) for _, g, tc in cases]
    return pytest.mark.parametrize(("group", "tc"), values, ids=[c[0] for c in cases])


def _expect_error(tc: dict[str, Any], fn: Callable[[], object]) -> None:
    err = tc["error"]
    if err["type"] == "InvalidContributionError":
        with pytest.raises(InvalidContributionError) as info:
            fn()
        assert info.value.signer_index == err["signer_index"]
        assert info.value.contrib == err["contrib"]
    elif err["type"] == "ValueError":
        with pytest.raises(ValueError) as vinfo:
            fn()
        assert not isinstance(vinfo.value, InvalidContributionError)
    else:  # pragma: no cover - the vectors only use these two
        raise AssertionError(f"unknown error type {err['type']}")


def _signers(group: dict[str, Any], tc: dict[str, Any]) -> SignersContext:
    pubshares = [_hx(group["pubshares"][i]) for i in tc["pubshare_indices"]]
    return SignersContext(group["n"], group["t"], tc["ids"], pubshares, _hx(group["thresh_pk"]))


def _tweaks(group: dict[str, Any], tc: dict[str, Any]) -> tuple[list[bytes], list[bool]]:
    if "tweak_indices" in tc:
        return [_hx(group["tweaks"][i]) for i in tc["tweak_indices"]], tc["is_xonly"]
    return [_hx(x) for x in tc.get("tweaks", [])], tc.get("is_xonly", [])


def _secnonce(group: dict[str, Any], tc: dict[str, Any]) -> bytearray:
    # A fresh copy per case: sign() erases the bytearray it is given.
    return bytearray(_hx(group["secnonces"][tc["secnonce_index"]]))


# ---------------------------------------------------------------------------------------------
# nonce_gen / nonce_agg


@_params(_cases("nonce_gen_vectors.json", "valid_tests"))
def test_nonce_gen(group: dict[str, Any], tc: dict[str, Any]) -> None:
    secnonce, pubnonce = nonce_gen_internal(
        _hx(tc["rand_"]), _h(tc["secshare"]), _h(tc["pubshare"]), _h(tc["thresh_pk"]), _h(tc["msg"]),
        _h(tc["extra_in"]),
    )
    assert isinstance(secnonce, bytearray)
    assert (bytes(secnonce), pubnonce) == (_hx(tc["expected"][0]), _hx(tc["expected"][1]))


@_params(_cases("nonce_agg_vectors.json", "valid_tests", "error_tests"))
def test_nonce_agg(group: dict[str, Any], tc: dict[str, Any]) -> None:
    pubnonces = [_hx(group["pubnonces"][i]) for i in tc["pubnonce_indices"]]
    if "error" in tc:
        _expect_error(tc, lambda: nonce_agg(pubnonces))
    else:
        assert nonce_agg(pubnonces) == _hx(tc["expected"])


# ---------------------------------------------------------------------------------------------
# sign / partial_sig_verify


@_params(_cases("sign_verify_vectors.json", "valid_tests"))
def test_sign_verify_valid(group: dict[str, Any], tc: dict[str, Any]) -> None:
    signers = _signers(group, tc)
    pubnonces = [_hx(group["pubnonces"][i]) for i in tc["pubnonce_indices"]]
    aggnonce = _hx(tc["aggnonce"])
    assert nonce_agg(pubnonces) == aggnonce  # the vector is self-consistent
    msg = _hx(tc["msg"])
    session_ctx = SessionContext(aggnonce, signers, [], [], msg)
    secnonce = _secnonce(group, tc)
    psig = sign(secnonce, _hx(group["secshares"][tc["secshare_index"]]), tc["my_id"], session_ctx)
    assert psig == _hx(tc["expected"])
    assert secnonce == bytearray(64)  # consumed
    assert partial_sig_verify(psig, pubnonces, signers, [], [], msg, tc["ids"].index(tc["my_id"]))


@_params(_cases("sign_verify_vectors.json", "sign_error_tests"))
def test_sign_error(group: dict[str, Any], tc: dict[str, Any]) -> None:
    session_ctx = SessionContext(_hx(tc["aggnonce"]), _signers(group, tc), [], [], _hx(tc["msg"]))
    secnonce = _secnonce(group, tc)
    secshare = _hx(group["secshares"][tc["secshare_index"]])
    _expect_error(tc, lambda: sign(secnonce, secshare, tc["my_id"], session_ctx))


@_params(_cases("sign_verify_vectors.json", "verify_fail_tests"))
def test_verify_fail(group: dict[str, Any], tc: dict[str, Any]) -> None:
    pubnonces = [_hx(group["pubnonces"][i]) for i in tc["pubnonce_indices"]]
    ok = partial_sig_verify(
        _hx(tc["psig"]), pubnonces, _signers(group, tc), [], [], _hx(tc["msg"]), tc["signer_index"]
    )
    assert ok is False


@_params(_cases("sign_verify_vectors.json", "verify_error_tests"))
def test_verify_error(group: dict[str, Any], tc: dict[str, Any]) -> None:
    pubnonces = [_hx(group["pubnonces"][i]) for i in tc["pubnonce_indices"]]
    _expect_error(
        tc,
        lambda: partial_sig_verify(
            _hx(tc["psig"]), pubnonces, _signers(group, tc), [], [], _hx(tc["msg"]), tc["signer_index"]
        ),
    )


# ---------------------------------------------------------------------------------------------
# tweaks


@_params(_cases("tweak_vectors.json", "valid_tests", "error_tests"))
def test_tweak(group: dict[str, Any], tc: dict[str, Any]) -> None:
    signers = _signers(group, tc)
    msg = _hx(tc["msg"])
    secshare = _hx(group["secshares"][tc["secshare_index"]])
    tweaks, is_xonly = _tweaks(group, tc)
    session_ctx = SessionContext(_hx(tc["aggnonce"]), signers, tweaks, is_xonly, msg)
    secnonce = _secnonce(group, tc)
    if "error" in tc:
        _expect_error(tc, lambda: sign(secnonce, secshare, tc["my_id"], session_ctx))
        return
    pubnonces = [_hx(group["pubnonces"][i]) for i in tc["pubnonce_indices"]]
    assert nonce_agg(pubnonces) == _hx(tc["aggnonce"])
    psig = sign(secnonce, secshare, tc["my_id"], session_ctx)
    assert psig == _hx(tc["expected"])
    assert partial_sig_verify(psig, pubnonces, signers, tweaks, is_xonly, msg, tc["ids"].index(tc["my_id"]))


# ---------------------------------------------------------------------------------------------
# deterministic_sign


@_params(_cases("det_sign_vectors.json", "valid_tests", "error_tests"))
def test_det_sign(group: dict[str, Any], tc: dict[str, Any]) -> None:
    secshare = _hx(group["secshares"][tc["secshare_index"]])
    tweaks, is_xonly = _tweaks(group, tc)

    def run() -> tuple[bytes, bytes]:
        return deterministic_sign(
            secshare, tc["my_id"], _h(tc["aggothernonce"]), _signers(group, tc), tweaks, is_xonly,
            _hx(tc["msg"]), _h(tc["rand"]),
        )

    if "error" in tc:
        _expect_error(tc, run)
        return
    pubnonce, psig = run()
    assert (pubnonce, psig) == (_hx(tc["expected"][0]), _hx(tc["expected"][1]))


# ---------------------------------------------------------------------------------------------
# partial_sig_agg


@_params(_cases("sig_agg_vectors.json", "valid_tests", "error_tests"))
def test_sig_agg(group: dict[str, Any], tc: dict[str, Any]) -> None:
    signers = _signers(group, tc)
    tweaks, is_xonly = _tweaks(group, tc)
    msg = _hx(tc["msg"])
    session_ctx = SessionContext(_hx(tc["aggnonce"]), signers, tweaks, is_xonly, msg)
    psigs = [_hx(p) for p in tc["psigs"]]
    if "error" in tc:
        _expect_error(tc, lambda: partial_sig_agg(psigs, session_ctx))
        return
    sig = partial_sig_agg(psigs, session_ctx)
    assert sig == _hx(tc["expected"])
    tweaked = get_xonly_pk(thresh_pubkey_and_tweak(signers.thresh_pk, tweaks, is_xonly))
    assert schnorr_verify(msg, tweaked, sig)
