"""Pi^sch (Schnorr proof of knowledge): honest proofs verify; a false statement, each tampered field, a
wrong session id, prover index or context is rejected; encodings are strict; nonces are single use."""

from __future__ import annotations

import secrets

import pytest

from tss.cggmp24 import pi_sch
from tss.cggmp24.errors import BadInputError, InvalidProofError
from tss.secp256k1 import G, cbytes, point_mul_base
from tss.secp256k1 import N as Q

SID = bytes(range(32))
CTX = b"keygen" + bytes(32)


def _statement() -> tuple[int, bytes]:
    x = secrets.randbelow(Q - 1) + 1
    return x, cbytes(point_mul_base(x))


def _split_proof(prover: int = 3) -> tuple[int, object, bytes, bytes]:
    x, _ = _statement()
    xp = point_mul_base(x)
    a, alpha = pi_sch.commit()
    e = pi_sch.challenge(SID, prover, CTX, xp, a)
    return x, xp, a, pi_sch.prove(e, alpha, x)


def test_honest_split_proof_verifies() -> None:
    _, xp, a, z = _split_proof()
    pi_sch.verify(SID, 3, CTX, xp, a, z)  # type: ignore[arg-type]


def test_honest_ni_proof_verifies() -> None:
    x, _ = _statement()
    proof = pi_sch.prove_ni(SID, 1, CTX, x)
    assert len(proof.to_bytes()) == pi_sch.PROOF_NI_LEN
    pi_sch.verify_ni(SID, 1, CTX, point_mul_base(x), proof.to_bytes())


def test_false_statement_rejected() -> None:
    _, _, a, z = _split_proof()
    with pytest.raises(InvalidProofError, match=r"pi_sch: z\*G != A \+ e\*X") as ei:
        pi_sch.verify(SID, 3, CTX, point_mul_base(12345), a, z)
    assert ei.value.party == 3


def test_tampered_response_rejected() -> None:
    _, xp, a, z = _split_proof()
    bad = ((int.from_bytes(z, "big") + 1) % Q).to_bytes(32, "big")
    with pytest.raises(InvalidProofError, match="pi_sch"):
        pi_sch.verify(SID, 3, CTX, xp, a, bad)  # type: ignore[arg-type]


def test_tampered_commitment_rejected() -> None:
    _, xp, _, z = _split_proof()
    with pytest.raises(InvalidProofError, match="pi_sch"):
        pi_sch.verify(SID, 3, CTX, xp, cbytes(G), z)  # type: ignore[arg-type]


def test_wrong_session_rejected() -> None:
    _, xp, a, z = _split_proof()
    with pytest.raises(InvalidProofError):
        pi_sch.verify(bytes(32), 3, CTX, xp, a, z)  # type: ignore[arg-type]


def test_wrong_prover_rejected() -> None:
    _, xp, a, z = _split_proof(prover=3)
    with pytest.raises(InvalidProofError) as ei:
        pi_sch.verify(SID, 4, CTX, xp, a, z)  # type: ignore[arg-type]
    assert ei.value.party == 4


def test_wrong_context_rejected() -> None:
    _, xp, a, z = _split_proof()
    with pytest.raises(InvalidProofError):
        pi_sch.verify(SID, 3, b"keygen" + bytes(31) + b"\x01", xp, a, z)  # type: ignore[arg-type]


def test_response_out_of_range_rejected() -> None:
    """z >= q is refused (canonical encoding)."""
    _, xp, a, _ = _split_proof()
    with pytest.raises(InvalidProofError, match="out of range"):
        pi_sch.verify(SID, 3, CTX, xp, a, Q.to_bytes(32, "big"))  # type: ignore[arg-type]


@pytest.mark.parametrize("cut", [0, 31, 33])
def test_response_length_checked(cut: int) -> None:
    _, xp, a, z = _split_proof()
    with pytest.raises(InvalidProofError, match="32 bytes"):
        pi_sch.verify(SID, 3, CTX, xp, a, (z + z)[:cut])  # type: ignore[arg-type]


def test_commitment_encoding_checked() -> None:
    _, xp, a, z = _split_proof()
    with pytest.raises(InvalidProofError, match="33 bytes"):
        pi_sch.verify(SID, 3, CTX, xp, a[:32], z)  # type: ignore[arg-type]
    with pytest.raises(InvalidProofError, match="not a curve point"):
        pi_sch.verify(SID, 3, CTX, xp, b"\x02" + b"\xff" * 32, z)  # type: ignore[arg-type]


def test_ni_proof_length_checked() -> None:
    x, _ = _statement()
    proof = pi_sch.prove_ni(SID, 1, CTX, x).to_bytes()
    with pytest.raises(InvalidProofError, match="65 bytes"):
        pi_sch.verify_ni(SID, 1, CTX, point_mul_base(x), proof + b"\x00")


def test_infinity_statement_rejected() -> None:
    _, _, a, z = _split_proof()
    with pytest.raises(InvalidProofError, match="infinity"):
        pi_sch.verify(SID, 3, CTX, None, a, z)


def test_nonce_is_single_use() -> None:
    x, _ = _statement()
    _a, alpha = pi_sch.commit()
    pi_sch.prove(5, alpha, x)
    assert not any(alpha)
    with pytest.raises(BadInputError, match="already used"):
        pi_sch.prove(6, alpha, x)
