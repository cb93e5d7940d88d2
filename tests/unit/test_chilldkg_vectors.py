"""ChillDKG against every published vector of the draft BIP (``tests/vectors/chilldkg/*.json``).

One pytest id per vector case. Valid cases compare bytes; error cases compare the exception's type name
exactly, every blame attribute (``participantId``, ``participantId1``, ``participantId2``) exactly, and
the message where the vector gives one. Group fixtures (``pmsg1``, ``cmsg1``, ``pmsg2`` checkpoints)
are checked in every case that depends on them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.vectors import load_json
from tss import chilldkg
from tss.chilldkg import SessionParams

Case = tuple[dict[str, Any], dict[str, Any]]  # (group, case)


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def _params(d: dict[str, Any]) -> SessionParams:
    return SessionParams([_h(k) for k in d["hostpubkeys"]], d["t"])


def _output_dict(out: chilldkg.DKGOutput) -> dict[str, Any]:
    return {
        "secshare": out.secshare.hex().upper() if out.secshare is not None else None,
        "threshPk": out.thresh_pk.hex().upper(),
        "pubshares": [p.hex().upper() for p in out.pubshares],
    }


def _cases(filename: str) -> Iterator[Any]:
    data = load_json(f"chilldkg/{filename}")
    groups = data.get("testGroups", [data])
    count = 0
    for group in groups:
        for kind in ("validTestCases", "errorTestCases"):
            for case in group.get(kind, []):
                count += 1
                slug = re.sub(r"[^A-Za-z0-9]+", "_", case.get("comment", ""))[:60].strip("_")
                yield pytest.param(group, case, id=f"tc{case['tcId']:03d}-{slug}")
    assert count == data["totalTests"], f"{filename}: {count} cases, totalTests {data['totalTests']}"


BLAME_ATTRS = {
    "participant_id": "participantId",
    "participant_id1": "participantId1",
    "participant_id2": "participantId2",
}


def assert_raises_expected(fn: Callable[[], object], expected: dict[str, Any]) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    e = info.value
    assert type(e).__name__ == expected["type"], f"raised {type(e).__name__}: {e!r}"
    got = {json_key: getattr(e, attr) for attr, json_key in BLAME_ATTRS.items() if hasattr(e, attr)}
    want = {k: v for k, v in expected.items() if k not in ("type", "message")}
    assert got == want, "blamed party differs"
    if "message" in expected:
        assert e.args and e.args[-1] == expected["message"]
    return e


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("group", "case"), list(_cases("hostpubkey_gen_vectors.json")))
def test_hostpubkey_gen(group: dict[str, Any], case: dict[str, Any]) -> None:
    seckey = _h(case["hostseckey"])
    if "expectedError" in case:
        assert_raises_expected(lambda: chilldkg.hostpubkey_gen(seckey), case["expectedError"])
    else:
        assert chilldkg.hostpubkey_gen(seckey) == _h(case["expectedHostpubkey"])


@pytest.mark.parametrize(("group", "case"), list(_cases("params_hash_vectors.json")))
def test_params_hash(group: dict[str, Any], case: dict[str, Any]) -> None:
    params = _params(case["params"])
    if "expectedError" in case:
        assert_raises_expected(lambda: chilldkg.params_hash(params), case["expectedError"])
    else:
        assert chilldkg.params_hash(params) == _h(case["expectedParamsHash"])


@pytest.mark.parametrize(("group", "case"), list(_cases("participant_step1_vectors.json")))
def test_participant_step1(group: dict[str, Any], case: dict[str, Any]) -> None:
    seckey, params, random = _h(case["hostseckey"]), _params(case["params"]), _h(case["random"])
    if "expectedError" in case:
        assert_raises_expected(
            lambda: chilldkg.participant_step1(seckey, params, random), case["expectedError"]
        )
    else:
        _, pmsg1 = chilldkg.participant_step1(seckey, params, random)
        assert pmsg1 == _h(case["expectedPmsg1"])


def _state1(group: dict[str, Any]) -> tuple[bytes, chilldkg.ParticipantState1]:
    seckey = _h(group["hostseckey"])
    state1, pmsg1 = chilldkg.participant_step1(seckey, _params(group["params"]), _h(group["random"]))
    assert pmsg1 == _h(group["pmsg1"])  # checkpoint
    return seckey, state1


@pytest.mark.parametrize(("group", "case"), list(_cases("participant_step2_vectors.json")))
def test_participant_step2(group: dict[str, Any], case: dict[str, Any]) -> None:
    seckey, state1 = _state1(group)
    cmsg1 = _h(case["cmsg1"])
    if "expectedError" in case:
        case_seckey = _h(case.get("hostseckey", group["hostseckey"]))
        aux = _h(case.get("auxRand", group["auxRand"]))
        assert_raises_expected(
            lambda: chilldkg.participant_step2(case_seckey, state1, cmsg1, aux), case["expectedError"]
        )
    else:
        _, pmsg2 = chilldkg.participant_step2(seckey, state1, cmsg1, _h(group["auxRand"]))
        assert pmsg2 == _h(case["expectedPmsg2"])


@pytest.mark.parametrize(("group", "case"), list(_cases("participant_finalize_vectors.json")))
def test_participant_finalize(group: dict[str, Any], case: dict[str, Any]) -> None:
    seckey, state1 = _state1(group)
    state2, pmsg2 = chilldkg.participant_step2(seckey, state1, _h(group["cmsg1"]), _h(group["auxRand"]))
    assert pmsg2 == _h(group["pmsg2"])  # checkpoint
    cmsg2 = _h(case["cmsg2"])
    if "expectedError" in case:
        assert_raises_expected(lambda: chilldkg.participant_finalize(state2, cmsg2), case["expectedError"])
    else:
        out, rec = chilldkg.participant_finalize(state2, cmsg2)
        assert _output_dict(out) == case["expectedOutput"]["dkgOutput"]
        assert rec == _h(case["expectedOutput"]["recoveryData"])


@pytest.mark.parametrize(("group", "case"), list(_cases("participant_investigate_vectors.json")))
def test_participant_investigate(group: dict[str, Any], case: dict[str, Any]) -> None:
    seckey, state1 = _state1(group)
    cmsg1 = _h(group["cmsg1Pool"][case["cmsg1Index"]])
    with pytest.raises(chilldkg.UnknownFaultyParticipantOrCoordinatorError) as info:
        chilldkg.participant_step2(seckey, state1, cmsg1, _h(group["auxRand"]))
    error = info.value
    assert_raises_expected(
        lambda: chilldkg.participant_investigate(error, _h(case["cinvMsg"])), case["expectedError"]
    )


@pytest.mark.parametrize(("group", "case"), list(_cases("coordinator_step1_vectors.json")))
def test_coordinator_step1(group: dict[str, Any], case: dict[str, Any]) -> None:
    pmsgs1 = [_h(group["pmsg1Pool"][i]) for i in case["pmsg1Indices"]]
    params = _params(case["params"])
    if "expectedError" in case:
        assert_raises_expected(lambda: chilldkg.coordinator_step1(pmsgs1, params), case["expectedError"])
    else:
        _, cmsg1 = chilldkg.coordinator_step1(pmsgs1, params)
        assert cmsg1 == _h(case["expectedCmsg1"])


@pytest.mark.parametrize(("group", "case"), list(_cases("coordinator_finalize_vectors.json")))
def test_coordinator_finalize(group: dict[str, Any], case: dict[str, Any]) -> None:
    state, cmsg1 = chilldkg.coordinator_step1([_h(m) for m in group["pmsgs1"]], _params(group["params"]))
    assert cmsg1 == _h(group["cmsg1"])  # checkpoint
    pmsgs2 = [_h(group["pmsg2Pool"][i]) for i in case["pmsg2Indices"]]
    if "expectedError" in case:
        assert_raises_expected(lambda: chilldkg.coordinator_finalize(state, pmsgs2), case["expectedError"])
    else:
        cmsg2, out, rec = chilldkg.coordinator_finalize(state, pmsgs2)
        expected = case["expectedOutput"]
        assert cmsg2 == _h(expected["cmsg2"])
        assert _output_dict(out) == expected["dkgOutput"]
        assert rec == _h(expected["recoveryData"])


@pytest.mark.parametrize(("group", "case"), list(_cases("coordinator_investigate_vectors.json")))
def test_coordinator_investigate(group: dict[str, Any], case: dict[str, Any]) -> None:
    pmsgs1 = [_h(m) for m in group["pmsgs1"]]
    cinvs = chilldkg.coordinator_investigate(pmsgs1, _params(group["params"]))
    assert cinvs == [_h(m) for m in case["expectedCinvMsgs"]]


@pytest.mark.parametrize(("group", "case"), list(_cases("recover_vectors.json")))
def test_recover(group: dict[str, Any], case: dict[str, Any]) -> None:
    seckey = _h(case["hostseckey"]) if case["hostseckey"] else None
    rec = _h(case["recoveryData"])

    def run() -> tuple[chilldkg.DKGOutput, SessionParams]:
        if seckey is None:
            return chilldkg.coordinator_recover(rec)
        return chilldkg.participant_recover(seckey, rec)

    if "expectedError" in case:
        assert_raises_expected(run, case["expectedError"])
    else:
        out, params = run()
        assert _output_dict(out) == case["expectedOutput"]["dkgOutput"]
        exp_params = case["expectedOutput"]["params"]
        assert [k.hex().upper() for k in params.hostpubkeys] == exp_params["hostpubkeys"]
        assert params.t == exp_params["t"]
