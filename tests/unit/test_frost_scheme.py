"""FROST through the signing-scheme interface (:mod:`core.scheme`): what the signer and the broadcaster
call. Honest signing with real BIP-32 + taproot tweaks, blame for a bad contribution, wrong signer sets,
used or foreign nonces refused, secrets erased and never in an error. Keys come from the test-only
dealer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from core.scheme import (
    Attempt,
    InvalidPartialSignature,
    SchemeError,
    SigningScheme,
    SpendInput,
    UnknownScheme,
    scheme_for,
)
from core.schemes.frost import FROST
from tests.unit.frost_test_dealer import DealtKey, deal
from tss.secp256k1 import schnorr_verify, tagged_hash
from wallet.sighash import SighashCache, bip341_sighash
from wallet.threshold_account import ThresholdAccount
from wallet.transaction import Prevout, parse_transaction

KEY: DealtKey = deal(5, 4, rng=random.Random(445))
NODES = [f"node-{i + 1}" for i in range(5)]
SIGNERS = ("node-5", "node-1", "node-3", "node-2")  # any t of them, deliberately unsorted
ACCOUNT = ThresholdAccount(KEY.thresh_pk, bytes(range(32)), "regtest")
PATHS = [(0, 3), (1, 7)]


@dataclass(frozen=True)
class Share:
    n: int
    t: int
    threshold_pubkey: bytes
    pubshares: list[bytes]
    index: int
    secshare: bytes = field(repr=False)


def share(node: str) -> Share:
    i = NODES.index(node)
    return Share(KEY.n, KEY.t, KEY.thresh_pk, KEY.pubshares, i, KEY.secshares[i])


PUBLIC = Share(KEY.n, KEY.t, KEY.thresh_pk, KEY.pubshares, 0, b"")  # the broadcaster's view: no secret


def inputs(scheme: SigningScheme = FROST) -> list[SpendInput]:
    sighashes = [tagged_hash("test/sighash", bytes([i])) for i in range(len(PATHS))]
    return [scheme.spend_input(ACCOUNT, path, h) for path, h in zip(PATHS, sighashes, strict=True)]


@dataclass
class Round:
    """One attempt: every signer's pooled nonces (secret halves kept by the signer) and the attempt."""

    secret: dict[str, list[bytearray]]
    attempt: Attempt


def new_round(signers: Sequence[str] = SIGNERS, ids: Sequence[int] | None = None) -> Round:
    secret: dict[str, list[bytearray]] = {}
    public: dict[str, list[bytes]] = {}
    for node in signers:
        made = [FROST.make_material(share(node), f"{node}-{k}".encode()) for k in range(len(PATHS))]
        secret[node] = [s for s, _ in made]
        public[node] = [p for _, p in made]
    ids = [NODES.index(s) for s in signers] if ids is None else ids
    return Round(secret, Attempt(tuple(signers), tuple(ids), public))


def sign_all(rnd: Round, ins: list[SpendInput]) -> dict[str, list[bytes]]:
    return {s: FROST.sign_inputs(share(s), rnd.attempt, s, rnd.secret[s], ins) for s in rnd.attempt.signers}


# ---- honest -------------------------------------------------------------------------------------------


def test_the_registry_names_frost_and_refuses_others() -> None:
    assert scheme_for("frost") is FROST
    assert isinstance(FROST, SigningScheme)
    assert FROST.material.name == "nonce" and FROST.material.per_input == 1
    assert not FROST.material.bound_to_signer_set
    with pytest.raises(UnknownScheme):
        scheme_for("cggmp")
    with pytest.raises(ValueError):  # bad input is a ValueError
        scheme_for("FROST")


def test_honest_signers_give_a_signature_per_input_under_its_output_key() -> None:
    rnd, ins = new_round(), inputs()
    psigs = sign_all(rnd, ins)
    for s in SIGNERS:
        FROST.verify_partial(PUBLIC, rnd.attempt, ins, s, psigs[s])
    sigs = FROST.combine(PUBLIC, rnd.attempt, ins, psigs)
    assert len(sigs) == len(PATHS)
    for sig, inp, path in zip(sigs, ins, PATHS, strict=True):
        assert inp.output_key == ACCOUNT.key(path).output_xonly  # BIP-32 tweaks, then the taproot tweak
        assert schnorr_verify(inp.sighash, inp.output_key, sig)
        assert FROST.witness(sig) == [sig]  # P2TR key path


def test_more_than_t_signers_sign_too() -> None:
    rnd, ins = new_round(NODES), inputs()
    sigs = FROST.combine(PUBLIC, rnd.attempt, ins, sign_all(rnd, ins))
    assert all(schnorr_verify(i.sighash, i.output_key, s) for s, i in zip(sigs, ins, strict=True))


def test_sighashes_are_bip341() -> None:
    raw = bytes.fromhex(
        "02000000"
        "02" + ("11" * 32 + "00000000" + "00" + "ffffffff") + ("22" * 32 + "01000000" + "00" + "fdffffff")
        + "01" + "e803000000000000" + "2251" + "20" + "33" * 32
        + "00000000"
    )  # fmt: skip
    tx = parse_transaction(raw)
    prevouts = [Prevout(5000, ACCOUNT.key(p).script_pubkey) for p in PATHS]
    cache = SighashCache(tx, prevouts)
    assert FROST.sighashes(tx, prevouts) == [bip341_sighash(tx, prevouts, i, cache=cache) for i in (0, 1)]


# ---- blame --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flip", "order", "short", "missing", "swapped"])
def test_a_bad_partial_signature_is_blamed_on_exactly_its_signer(how: str) -> None:
    rnd, ins = new_round(), inputs()
    psigs = sign_all(rnd, ins)
    bad = psigs["node-3"]
    if how == "flip":
        bad[1] = bytes([bad[1][0] ^ 1]) + bad[1][1:]
    elif how == "order":
        bad[1] = bytes.fromhex("FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141")
    elif how == "short":
        bad[1] = bad[1][:31]
    elif how == "missing":
        del bad[1]
    else:  # its two inputs' partial signatures exchanged
        bad[0], bad[1] = bad[1], bad[0]
    with pytest.raises(InvalidPartialSignature) as exc:
        FROST.combine(PUBLIC, rnd.attempt, ins, psigs)
    assert exc.value.signer == "node-3"
    assert exc.value.input_index == (0 if how == "swapped" else 1)
    with pytest.raises(InvalidPartialSignature) as one:
        FROST.verify_partial(PUBLIC, rnd.attempt, ins, "node-3", bad)
    assert one.value.signer == "node-3"
    for s in ("node-5", "node-1", "node-2"):
        FROST.verify_partial(PUBLIC, rnd.attempt, ins, s, psigs[s])  # the honest ones are not blamed


def test_a_signer_whose_listed_pubnonce_is_not_the_one_it_used_is_blamed() -> None:
    """A signer signs with nonces other than the ones the attempt lists for it (here: it signs honestly
    in another attempt that lists different nonces for it)."""
    rnd, ins = new_round(), inputs()
    psigs = sign_all(rnd, ins)  # node-1's nonces of this attempt are used up here; it signs again:
    other = new_round()
    swapped = dict(rnd.attempt.material)
    swapped["node-1"] = other.attempt.material["node-1"]
    elsewhere = replace(rnd.attempt, material=swapped)
    psigs["node-1"] = FROST.sign_inputs(share("node-1"), elsewhere, "node-1", other.secret["node-1"], ins)
    with pytest.raises(InvalidPartialSignature) as exc:
        FROST.combine(PUBLIC, rnd.attempt, ins, psigs)
    assert exc.value.signer == "node-1"


def test_a_malformed_pubnonce_is_blamed_on_the_signer_it_is_listed_for() -> None:
    rnd, ins = new_round(), inputs()
    psigs = sign_all(rnd, ins)
    material = dict(rnd.attempt.material)
    material["node-2"] = [b"\x04" + bytes(65), material["node-2"][1]]
    with pytest.raises(InvalidPartialSignature) as exc:
        FROST.combine(PUBLIC, replace(rnd.attempt, material=material), ins, psigs)
    assert exc.value.signer == "node-2" and exc.value.input_index == 0 and "pubnonce" in exc.value.reason


def test_a_signature_for_another_output_key_fails_without_blaming_anyone() -> None:
    rnd, ins = new_round(), inputs()
    psigs = sign_all(rnd, ins)
    wrong = [replace(ins[0], output_key=ins[1].output_key), ins[1]]
    with pytest.raises(SchemeError, match="input 0: aggregate signature does not verify"):
        FROST.combine(PUBLIC, rnd.attempt, wrong, psigs)


# ---- signer sets --------------------------------------------------------------------------------------


def test_fewer_than_t_signers_is_refused() -> None:
    rnd, ins = new_round(SIGNERS[:3]), inputs()
    with pytest.raises(SchemeError, match="signer set"):
        FROST.sign_inputs(share("node-5"), rnd.attempt, "node-5", rnd.secret["node-5"], ins)
    assert not any(any(s) for s in rnd.secret["node-5"])  # erased all the same
    with pytest.raises(SchemeError, match="signer set"):
        FROST.combine(PUBLIC, rnd.attempt, ins, {})


def test_signers_listed_at_the_wrong_participant_ids_are_refused() -> None:
    # node-5 and node-1 swapped ids: the pubshares no longer interpolate... to the same key they do, so
    # the signer's own position is what catches it
    rnd, ins = new_round(ids=[0, 4, 2, 1]), inputs()
    with pytest.raises(SchemeError, match="another participant id"):
        FROST.sign_inputs(share("node-5"), rnd.attempt, "node-5", rnd.secret["node-5"], ins)
    rnd = new_round(ids=[4, 0, 2, 9])
    with pytest.raises(SchemeError, match="out of range"):
        FROST.sign_inputs(share("node-5"), rnd.attempt, "node-5", rnd.secret["node-5"], ins)
    rnd = new_round(ids=[4, 0, 2, 2])
    with pytest.raises(SchemeError, match="invalid signer set"):
        FROST.sign_inputs(share("node-5"), rnd.attempt, "node-5", rnd.secret["node-5"], ins)


def test_a_signer_outside_the_set_is_refused() -> None:
    rnd, ins = new_round(), inputs()
    with pytest.raises(SchemeError, match="not in the signer set"):
        FROST.sign_inputs(share("node-4"), rnd.attempt, "node-4", rnd.secret["node-5"], ins)
    with pytest.raises(SchemeError, match="not in the signer set"):
        FROST.verify_partial(PUBLIC, rnd.attempt, ins, "node-4", [])


def test_an_attempt_must_list_material_for_exactly_its_signers() -> None:
    rnd = new_round()
    with pytest.raises(SchemeError):
        Attempt(rnd.attempt.signers, rnd.attempt.ids, {s: rnd.attempt.material[s] for s in SIGNERS[:3]})
    with pytest.raises(SchemeError):
        Attempt((*SIGNERS, "node-5"), (4, 0, 2, 1, 4), rnd.attempt.material)
    short = dict(rnd.attempt.material)
    short["node-2"] = short["node-2"][:1]
    with pytest.raises(SchemeError, match="input 1"):
        FROST.combine(PUBLIC, replace(rnd.attempt, material=short), inputs(), sign_all(rnd, inputs()))


# ---- material -----------------------------------------------------------------------------------------


def test_material_signs_once() -> None:
    rnd, ins = new_round(), inputs()
    mine = rnd.secret["node-1"]
    FROST.sign_inputs(share("node-1"), rnd.attempt, "node-1", mine, ins)
    assert not any(any(s) for s in mine)  # erased by signing
    with pytest.raises(SchemeError, match="input 0: the nonce is used or unknown"):
        FROST.sign_inputs(share("node-1"), rnd.attempt, "node-1", mine, ins)


def test_a_nonce_not_held_is_refused_and_the_others_are_erased() -> None:
    rnd, ins = new_round(), inputs()
    mine: list[bytearray | None] = [rnd.secret["node-1"][0], None]
    with pytest.raises(SchemeError, match="input 1: the nonce is used or unknown"):
        FROST.sign_inputs(share("node-1"), rnd.attempt, "node-1", mine, ins)
    assert not any(rnd.secret["node-1"][0])


def test_a_nonce_whose_pubnonce_is_listed_wrong_is_refused_and_erased() -> None:
    """The attempt lists, for this signer, a pubnonce that is not its nonce's: signing would let the
    lister choose the nonce's commitment; the signer refuses and burns the nonce."""
    rnd, ins = new_round(), inputs()
    material = dict(rnd.attempt.material)
    material["node-1"] = list(reversed(material["node-1"]))
    attempt = replace(rnd.attempt, material=material)
    mine = rnd.secret["node-1"]
    with pytest.raises(SchemeError, match="input 0: the pubnonce listed for this signer is not its own"):
        FROST.sign_inputs(share("node-1"), attempt, "node-1", mine, ins)
    assert not any(any(s) for s in mine)


def test_one_nonce_per_input() -> None:
    rnd, ins = new_round(), inputs()
    with pytest.raises(SchemeError, match="one nonce of this signer per input"):
        FROST.sign_inputs(share("node-1"), rnd.attempt, "node-1", rnd.secret["node-1"][:1], ins)
    assert not any(rnd.secret["node-1"][0])


def test_errors_name_no_secret() -> None:
    rnd, ins = new_round(), inputs()
    material = dict(rnd.attempt.material)
    material["node-1"] = list(reversed(material["node-1"]))
    secret = [bytes(s) for s in rnd.secret["node-1"]]
    sh = share("node-1")
    with pytest.raises(SchemeError) as exc:
        FROST.sign_inputs(sh, replace(rnd.attempt, material=material), "node-1", rnd.secret["node-1"], ins)
    texts = [str(exc.value), repr(exc.value), repr(sh), repr(FROST)]
    for needle in [sh.secshare.hex(), *(s.hex() for s in secret), *(s[:32].hex() for s in secret)]:
        assert all(needle not in t for t in texts)
