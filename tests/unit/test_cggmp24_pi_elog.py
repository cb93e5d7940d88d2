"""Pi^elog (dlog with an ElGamal commitment): honest proofs verify; a false statement, each tampered proof
field and each changed public input, a wrong session id or prover index is rejected; strict encodings."""

from __future__ import annotations

import secrets

import pytest

from tss.cggmp24 import pi_elog
from tss.cggmp24.errors import InvalidProofError
from tss.cggmp24.pi_elog import ElogStatement
from tss.secp256k1 import G, point_add, point_mul, point_mul_base
from tss.secp256k1 import N as Q

SID = bytes(range(32))


def _rand() -> int:
    return secrets.randbelow(Q - 1) + 1


def _honest(h_is_g: bool = False) -> tuple[ElogStatement, int, int]:
    y, lam = _rand(), _rand()
    x = point_mul_base(_rand())
    h = G if h_is_g else point_mul_base(_rand())
    st = ElogStatement(
        L=point_mul_base(lam), M=point_add(point_mul_base(y), point_mul(x, lam)), X=x, Y=point_mul(h, y), H=h
    )
    return st, y, lam


@pytest.mark.parametrize("h_is_g", [True, False])
def test_honest_proof_verifies(h_is_g: bool) -> None:
    st, y, lam = _honest(h_is_g)
    proof = pi_elog.prove(SID, 2, st, y, lam).to_bytes()
    assert len(proof) == pi_elog.PROOF_LEN == 163
    pi_elog.verify(SID, 2, st, proof)


def test_false_statement_rejected() -> None:
    """Y is not y*H: the third equation fails."""
    st, y, lam = _honest()
    bad = ElogStatement(st.L, st.M, st.X, point_mul(st.H, y + 1), st.H)
    proof = pi_elog.prove(SID, 2, bad, y, lam).to_bytes()
    with pytest.raises(InvalidProofError, match=r"pi_elog: u\*H != B \+ e\*Y"):
        pi_elog.verify(SID, 2, bad, proof)


def test_false_commitment_rejected() -> None:
    """M does not commit to y under X: the second equation fails."""
    st, y, lam = _honest()
    bad = ElogStatement(st.L, point_add(st.M, G), st.X, st.Y, st.H)
    proof = pi_elog.prove(SID, 2, bad, y, lam).to_bytes()
    with pytest.raises(InvalidProofError, match=r"u\*G \+ z\*X != N \+ e\*M"):
        pi_elog.verify(SID, 2, bad, proof)


def test_wrong_lambda_rejected() -> None:
    st, y, lam = _honest()
    bad = ElogStatement(point_add(st.L, G), st.M, st.X, st.Y, st.H)
    proof = pi_elog.prove(SID, 2, bad, y, lam).to_bytes()
    with pytest.raises(InvalidProofError, match=r"z\*G != A \+ e\*L"):
        pi_elog.verify(SID, 2, bad, proof)


@pytest.mark.parametrize("field", ["a", "n", "b"])
def test_tampered_commitment_point_rejected(field: str) -> None:
    st, y, lam = _honest()
    p = pi_elog.prove(SID, 2, st, y, lam)
    fields = {"a": p.a, "n": p.n, "b": p.b, "z": p.z, "u": p.u}
    fields[field] = bytes.fromhex("02" + "79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798")
    with pytest.raises(InvalidProofError, match="pi_elog"):
        pi_elog.verify(SID, 2, st, pi_elog.ElogProof(**fields).to_bytes())


@pytest.mark.parametrize("field", ["z", "u"])
def test_tampered_response_rejected(field: str) -> None:
    st, y, lam = _honest()
    p = pi_elog.prove(SID, 2, st, y, lam)
    fields = {"a": p.a, "n": p.n, "b": p.b, "z": p.z, "u": p.u}
    fields[field] = ((int.from_bytes(fields[field], "big") + 1) % Q).to_bytes(32, "big")
    with pytest.raises(InvalidProofError, match="pi_elog"):
        pi_elog.verify(SID, 2, st, pi_elog.ElogProof(**fields).to_bytes())


@pytest.mark.parametrize("field", ["L", "M", "X", "Y", "H"])
def test_changed_public_input_rejected(field: str) -> None:
    st, y, lam = _honest()
    proof = pi_elog.prove(SID, 2, st, y, lam).to_bytes()
    vals = {"L": st.L, "M": st.M, "X": st.X, "Y": st.Y, "H": st.H}
    vals[field] = point_add(vals[field], G)
    with pytest.raises(InvalidProofError, match="pi_elog"):
        pi_elog.verify(SID, 2, ElogStatement(**vals), proof)


def test_wrong_session_rejected() -> None:
    st, y, lam = _honest()
    proof = pi_elog.prove(SID, 2, st, y, lam).to_bytes()
    with pytest.raises(InvalidProofError):
        pi_elog.verify(bytes(32), 2, st, proof)


def test_wrong_prover_rejected() -> None:
    st, y, lam = _honest()
    proof = pi_elog.prove(SID, 2, st, y, lam).to_bytes()
    with pytest.raises(InvalidProofError) as ei:
        pi_elog.verify(SID, 1, st, proof)
    assert ei.value.party == 1


@pytest.mark.parametrize("delta", [-1, 1])
def test_length_checked(delta: int) -> None:
    st, y, lam = _honest()
    proof = pi_elog.prove(SID, 2, st, y, lam).to_bytes()
    bad = proof[:delta] if delta < 0 else proof + b"\x00"
    with pytest.raises(InvalidProofError, match="163 bytes"):
        pi_elog.verify(SID, 2, st, bad)


def test_scalar_out_of_range_rejected() -> None:
    st, y, lam = _honest()
    p = pi_elog.prove(SID, 2, st, y, lam)
    bad = pi_elog.ElogProof(p.a, p.n, p.b, p.z, Q.to_bytes(32, "big")).to_bytes()
    with pytest.raises(InvalidProofError, match="out of range"):
        pi_elog.verify(SID, 2, st, bad)


def test_point_not_on_curve_rejected() -> None:
    st, y, lam = _honest()
    p = pi_elog.prove(SID, 2, st, y, lam)
    bad = pi_elog.ElogProof(b"\x02" + b"\xff" * 32, p.n, p.b, p.z, p.u).to_bytes()
    with pytest.raises(InvalidProofError, match="not a curve point"):
        pi_elog.verify(SID, 2, st, bad)
