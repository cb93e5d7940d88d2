"""CGGMP24 threshold presigning (the spec's "Threshold Presigning" wrapped around "Non-Threshold
Presigning"), as a round state machine (see :mod:`tss.cggmp24.rounds`).

Input for signer ``i`` of the exact signer set ``S`` (keygen indices, ascending): its :class:`KeyShare`, its
:class:`~tss.cggmp24.aux_info.AuxInfoResult` (own Paillier key; every signer's Paillier key ``N_j`` and
ring-Pedersen parameters ``R_j = (N-hat_j, s_j, t_j)``, all proven well-formed by aux-info), the session
id, and the BIP-32 ``shift`` with the child public key it gives (``child == X + shift * G`` is checked).
Shamir shares become additive ones for ``S`` (``x_i = lambda_i x'_i``, ``X_j = lambda_j X'_j``); the
shift is added to the first signer's share (``x_0 += shift``, ``X_0 += shift * G``) *before* round 1, so
the presignature can only ever sign for that child key (Groth-Shoup, ePrint 2021/1330).

Rounds (every proof's transcript is bound to the session id and to the prover's keygen index)::

    round 1  k_i, gamma_i <- Z_q; K_i = enc_i(k_i; rho_i), G_i = enc_i(gamma_i; v_i); Y_i <- E;
             A_i1 = a_i G, A_i2 = a_i Y_i + k_i G; B_i1 = b_i G, B_i2 = b_i Y_i + gamma_i G
             -> broadcast (K_i, G_i, Y_i, A_i1, A_i2, B_i1, B_i2)                     (slot R1)
             -> to each j: Pi^enc-elg for K_i and for G_i, against R_j                (slot R1_PROOFS)
    echo     -> broadcast H(echo, sid, all round-1 broadcasts)                        (slot ECHO)
    round 2  all echoes equal (else abort naming the differing ones); for each j: K_j, G_j in Z*_{N_j^2},
             both Pi^enc-elg verify against our R_i.
             Gamma_i = gamma_i G, Pi^elog(B_i1, B_i2, Y_i, Gamma_i, G); for each j:
             D_ji = gamma_i (.) K_j (+) enc_j(-beta_ij), F_ji = enc_i(-beta_ij),
             D^_ji = x_i (.) K_j (+) enc_j(-beta^_ij), F^_ji = enc_i(-beta^_ij), two Pi^aff-g against R_j
             -> to each j: (Gamma_i, Pi^elog, D_ji, F_ji, D^_ji, F^_ji, Pi^aff-g x2)    (slot R2)
    round 3  for each j: ciphertexts in range, Pi^elog and both Pi^aff-g verify (ours: R_i, CRT);
             Gamma = sum Gamma_j, Delta_i = k_i Gamma; alpha_ij = dec(D_ij), alpha^_ij = dec(D^_ij);
             delta_i = gamma_i k_i + sum_j (alpha_ij + beta_ij),
             chi_i = x_i k_i + sum_j (alpha^_ij + beta^_ij),
             S_i = chi_i Gamma, Pi^elog(A_i1, A_i2, Y_i, Delta_i, Gamma)
             -> broadcast (delta_i, S_i, Delta_i, Pi^elog)                           (slot R3)
    output   each Pi^elog verifies; delta = sum delta_j; delta G == sum Delta_j and delta X == sum S_j,
             else ``UnattributableAbortError``: the spec's presigning has no identification step here
             (a party that lied about delta_j or S_j cannot be singled out without revealing the MtA
             values); the run aborts with ``error`` set and nobody blamed.
             k~_i = k_i / delta, chi~_i = chi_i / delta, Delta~_j = Delta_j / delta, S~_j = S_j / delta.

Every peer value is checked before use (points on the curve, ciphertexts in ``Z*_{N^2}`` of the right
key, scalars below ``q``, exact lengths), and every failure is blamed on its sender. The output is a
:class:`~tss.cggmp24.signing.Presignature` (single use).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final

from tss.cggmp24 import pi_aff_g, pi_elog, pi_enc_elg, rounds
from tss.cggmp24.aux_info import AuxInfoResult
from tss.cggmp24.errors import BadInputError, InvalidContributionError, UnattributableAbortError
from tss.cggmp24.keygen import KeyShare, lagrange_coefficient
from tss.cggmp24.paillier import (
    PaillierNonce,
    PaillierPublicKey,
    PaillierSecretKey,
    check_ciphertext,
    precompute_nonces,
    sample_signed,
)
from tss.cggmp24.params import ELL_PRIME
from tss.cggmp24.pi_elog import ElogStatement
from tss.cggmp24.ring_pedersen import RingPedersenParams, RingPedersenSecret
from tss.cggmp24.rounds import (
    PROTOCOL_PRESIGNING,
    Message,
    Reader,
    RoundCore,
    SecretScalar,
    Slot,
    Step,
    body,
    check_each,
    check_echo,
    drive,
    echo_hash,
    new_core,
    require,
    send,
    var,
)
from tss.cggmp24.signing import Presignature, PresignatureCommitments
from tss.secp256k1 import (
    G,
    Point,
    cbytes,
    cpoint,
    point_add,
    point_eq,
    point_mul,
    point_mul_base,
    point_mul_secret,
    point_sum,
    point_tweak_add,
)
from tss.secp256k1 import N as Q


class SlotCode(IntEnum):
    R1 = 1
    R1_PROOFS = 2
    ECHO = 3
    R2 = 4
    R3 = 5


SLOTS: Final = (
    Slot(SlotCode.R1, "round1", True),
    Slot(SlotCode.R1_PROOFS, "round1_proofs", False),
    Slot(SlotCode.ECHO, "echo", True),
    Slot(SlotCode.R2, "round2", False),
    Slot(SlotCode.R3, "round3", True),
)

TAG: Final = "presigning"


def verifier_params(aux: AuxInfoResult) -> RingPedersenParams | RingPedersenSecret:
    """Our own ring-Pedersen parameters for verifying peers' proofs: with the trapdoor (reduced exponents)
    when it belongs to the parameters the others prove against."""
    own = aux.own_ring_pedersen
    if own is not None and own.params == aux.ring_pedersen[aux.index]:
        return own
    return aux.ring_pedersen[aux.index]


class NoncePool:
    """Paillier randomness ``(rho, rho^N mod N^2)`` computed ahead of time, filed under the modulus ``N`` it
    belongs to (so a nonce can never be used under another key, e.g. after aux-info was re-run).
    Presigning takes from it when it has some (one encryption then costs a multiplication) and samples
    fresh randomness otherwise; a nonce is removed when taken, so it is used once. The pool holds secrets:
    it is never logged (``repr`` shows counts only)."""

    __slots__ = ("_nonces",)

    def __init__(self) -> None:
        self._nonces: dict[int, list[PaillierNonce]] = {}

    def fill(self, key: PaillierPublicKey | PaillierSecretKey, count: int) -> None:
        self._nonces.setdefault(int(key.n), []).extend(precompute_nonces(key, count))

    def take(self, key: PaillierPublicKey | PaillierSecretKey) -> PaillierNonce | None:
        lst = self._nonces.get(int(key.n))
        return lst.pop() if lst else None

    def count(self, key: PaillierPublicKey | PaillierSecretKey) -> int:
        return len(self._nonces.get(int(key.n), ()))

    def __repr__(self) -> str:
        return f"NoncePool({sorted(len(v) for v in self._nonces.values())})"


def nonces_needed(me: int, signers: Sequence[int]) -> dict[int, int]:
    """How many nonces one presigning run takes, per party whose key they are for (fill the pool with
    ``pool.fill(key_of_that_party, count)``): under our own key 2 (K_i, G_i) and 6 per peer
    (F, F^, two Pi^enc-elg and two Pi^aff-g commitments), under each peer's key 4 (D, D^ and two Pi^aff-g
    commitments)."""
    peers = [j for j in signers if j != me]
    return {me: 2 + 6 * len(peers), **dict.fromkeys(peers, 4)}


def _take(pool: NoncePool | None, key: PaillierPublicKey | PaillierSecretKey) -> PaillierNonce | None:
    return pool.take(key) if pool is not None else None


def _encrypt(key: PaillierPublicKey | PaillierSecretKey, m: int, pool: NoncePool | None) -> tuple[int, int]:
    """``(enc(m; rho), rho)`` with a pooled nonce when there is one."""
    nonce = _take(pool, key)
    if nonce is None:
        nonce = key.sample_nonce()
    return int(key.encrypt_with_nonce(m, nonce)), int(nonce.rho)


class Phase:
    ROUND1 = "round1"  # round-1 messages sent; waiting for everyone's
    ECHO = "echo"
    ROUND2 = "round2"
    ROUND3 = "round3"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class _Secrets:
    """Our secrets of one run (mutable buffers inside, zeroed when the run ends)."""

    x: SecretScalar
    k: SecretScalar
    gamma: SecretScalar
    a: SecretScalar
    b: SecretScalar
    rho: int
    v: int
    betas: dict[int, tuple[int, int]] = field(default_factory=dict)  # j -> (beta_ij, beta^_ij)
    chi: list[int] = field(default_factory=list)

    def zeroize(self) -> None:
        for s in (self.x, self.k, self.gamma, self.a, self.b):
            s.zeroize()
        self.betas.clear()
        self.chi.clear()


@dataclass(frozen=True)
class PresigningState:
    core: RoundCore
    share_index: int
    aux: AuxInfoResult = field(repr=False)
    public_shares: Mapping[int, bytes] = field(repr=False)  # X_j (Lagrange-weighted, shifted)
    public_key: bytes  # the key the presignature will sign for (child key when shift != 0)
    shift: int
    phase: str
    secret: _Secrets = field(repr=False)
    round1: bytes = field(repr=False)
    round1_proofs: Mapping[int, bytes] = field(repr=False)
    nonces: NoncePool | None = field(default=None, repr=False)
    gamma_point: bytes = field(default=b"", repr=False)
    delta_i: int = field(default=0, repr=False)
    result: Presignature | None = field(default=None, repr=False)
    blame: tuple[InvalidContributionError, ...] = ()
    error: Exception | None = None


# ---------------------------------------------------------------------------------------------
# encodings


def _int_len(modulus: int) -> int:
    return (int(modulus).bit_length() + 7) // 8


def _enc_int(x: int, modulus: int) -> bytes:
    return int(x).to_bytes(_int_len(modulus), "big")


@dataclass(frozen=True)
class _Round1:
    k: int
    g: int
    y: Point
    a1: Point
    a2: Point
    b1: Point
    b2: Point


def _parse_round1(state: PresigningState, j: int) -> _Round1:
    key = state.aux.paillier_keys[j]
    r = Reader(body(state.core, SlotCode.R1, j), j, f"{TAG}: round 1")
    n2 = _int_len(key.nn)
    k = check_ciphertext(key, int.from_bytes(r.take(n2), "big"), j, "K_j")
    g = check_ciphertext(key, int.from_bytes(r.take(n2), "big"), j, "G_j")
    raw = [r.take(33) for _ in range(5)]
    r.end()
    try:
        pts = [cpoint(p) for p in raw]
    except ValueError:
        raise r.fail("not a curve point") from None
    return _Round1(int(k), int(g), *pts)


# ---------------------------------------------------------------------------------------------
# start


def presigning_start(
    session_id: bytes,
    share: KeyShare,
    aux: AuxInfoResult,
    signers: Sequence[int],
    shift: int = 0,
    child_public_key: bytes | None = None,
    nonces: NoncePool | None = None,
) -> tuple[PresigningState, list[Message]]:
    """Start presigning for the exact signer set ``signers`` (keygen indices; ``t <= |signers| <= n``).

    ``shift`` is the BIP-32 additive tweak of the child key the presignature will sign for, and
    ``child_public_key`` that key (33 bytes); ``child == X + shift * G`` is checked (``BadInputError``).
    ``shift = 0`` signs for the root key. Nothing can change the key afterwards. ``nonces`` is an optional
    pool of precomputed Paillier randomness (see :func:`nonces_needed`)."""
    signer_set = tuple(sorted(set(signers)))
    if len(signer_set) != len(tuple(signers)) or not share.t <= len(signer_set) <= share.n:
        raise BadInputError("signers must be between t and n distinct parties")
    if any(not 0 <= j < share.n for j in signer_set) or share.index not in signer_set:
        raise BadInputError("signers must be keygen indices including our own")
    if aux.index != share.index:
        raise BadInputError("aux info belongs to another party")
    if any(j not in aux.paillier_keys or j not in aux.ring_pedersen for j in signer_set):
        raise BadInputError("aux info lacks a signer's Paillier key or ring-Pedersen parameters")
    if aux.paillier_keys[share.index] != aux.paillier.public:
        raise BadInputError("our Paillier key does not match the aux info")
    if not isinstance(shift, int) or not 0 <= shift < Q:
        raise BadInputError("shift must be a scalar in [0, q)")
    child = point_tweak_add(cpoint(share.public_key), shift)
    if child is None:
        raise BadInputError("the child key is the point at infinity")
    if child_public_key is None:
        if shift != 0:
            raise BadInputError("a non-zero shift needs the child public key it derives")
        child_public_key = share.public_key
    if cbytes(child) != child_public_key:
        raise BadInputError("child public key != X + shift * G")
    core = new_core(PROTOCOL_PRESIGNING, session_id, share.index, signer_set, SLOTS)
    me = share.index
    # Shamir -> additive for this signer set; the shift goes to the first signer
    x = lagrange_coefficient(signer_set, me) * share.secret.value() % Q
    pub: dict[int, bytes] = {}
    for j in signer_set:
        xj = point_mul(share.public_share(j), lagrange_coefficient(signer_set, j))
        if j == signer_set[0] and shift:
            xj = point_tweak_add(xj, shift)
        if xj is None:
            raise BadInputError("a weighted public share is the point at infinity")
        pub[j] = cbytes(xj)
    if me == signer_set[0]:
        x = (x + shift) % Q
    if x == 0:
        raise BadInputError("additive share is zero")
    sk = aux.paillier
    k, gamma = secrets.randbelow(Q - 1) + 1, secrets.randbelow(Q - 1) + 1
    a, b = secrets.randbelow(Q - 1) + 1, secrets.randbelow(Q - 1) + 1
    big_k, rho = _encrypt(sk, k, nonces)
    big_g, v = _encrypt(sk, gamma, nonces)
    y = point_mul_base(secrets.randbelow(Q - 1) + 1)
    a1, a2 = point_mul_base(a), point_add(point_mul_secret(y, a), point_mul_base(k))
    b1, b2 = point_mul_base(b), point_add(point_mul_secret(y, b), point_mul_base(gamma))
    pts = [y, a1, a2, b1, b2]
    if any(p is None for p in pts):
        raise UnattributableAbortError("presigning: a round-1 point is the point at infinity")
    round1 = _enc_int(big_k, sk.nn) + _enc_int(big_g, sk.nn) + b"".join(cbytes(p) for p in pts)
    proofs: dict[int, bytes] = {}
    for j in signer_set:
        if j == me:
            continue
        rj = aux.ring_pedersen[j]
        st_k = pi_enc_elg.EncElgStatement(big_k, y, a1, a2)
        st_g = pi_enc_elg.EncElgStatement(big_g, y, b1, b2)
        n0, n1 = _take(nonces, sk), _take(nonces, sk)
        p0 = pi_enc_elg.prove(session_id, me, rj, sk, st_k, k, rho, a, n0).to_bytes()
        p1 = pi_enc_elg.prove(session_id, me, rj, sk, st_g, gamma, v, b, n1).to_bytes()
        proofs[j] = var(p0) + var(p1)
    sec = _Secrets(
        SecretScalar(x), SecretScalar(k), SecretScalar(gamma), SecretScalar(a), SecretScalar(b), rho, v
    )
    state = PresigningState(
        core=core,
        share_index=me,
        aux=aux,
        public_shares=pub,
        public_key=child_public_key,
        shift=shift,
        phase=Phase.ROUND1,
        secret=sec,
        round1=round1,
        round1_proofs=proofs,
        nonces=nonces,
    )
    core, msgs = send(core, SlotCode.R1, {None: round1})
    p2p: dict[int | None, bytes] = {j: p for j, p in proofs.items()}
    core, more = send(core, SlotCode.R1_PROOFS, p2p)
    return replace(state, core=core), msgs + more


# ---------------------------------------------------------------------------------------------
# handlers


def _others(state: PresigningState) -> list[int]:
    return [j for j in state.core.parties if j != state.core.me]


def _context(state: PresigningState) -> bytes:
    """What the echo binds besides the round-1 broadcasts: the key the presignature signs for and the
    shift (parties that disagree on them abort at the echo instead of blaming each other's proofs)."""
    return state.public_key + state.shift.to_bytes(32, "big")


def _on_round1(state: PresigningState) -> tuple[PresigningState, list[Message]]:
    core, msgs = send(
        state.core, SlotCode.ECHO, {None: echo_hash(state.core, SlotCode.R1, TAG, _context(state))}
    )
    return replace(state, core=core, phase=Phase.ECHO), msgs


def _on_echo(state: PresigningState) -> tuple[PresigningState, list[Message]]:
    check_echo(state.core, SlotCode.R1, SlotCode.ECHO, TAG, _context(state))
    me, sid, aux = state.core.me, state.core.session_id, state.aux
    my_rp = verifier_params(aux)
    peers: dict[int, _Round1] = {}

    def check(j: int) -> None:
        r1 = _parse_round1(state, j)
        rd = Reader(body(state.core, SlotCode.R1_PROOFS, j), j, f"{TAG}: round-1 proofs")
        p0, p1 = rd.take_var(), rd.take_var()
        rd.end()
        key_j = aux.paillier_keys[j]
        pi_enc_elg.verify(sid, j, my_rp, key_j, pi_enc_elg.EncElgStatement(r1.k, r1.y, r1.a1, r1.a2), p0)
        pi_enc_elg.verify(sid, j, my_rp, key_j, pi_enc_elg.EncElgStatement(r1.g, r1.y, r1.b1, r1.b2), p1)
        peers[j] = r1

    check_each(_others(state), check)
    sec, sk = state.secret, aux.paillier
    mine = _parse_round1(state, me)
    gamma, x = sec.gamma.value(), sec.x.value()
    gamma_pt = point_mul_base(gamma)
    elog = pi_elog.prove(sid, me, ElogStatement(mine.b1, mine.b2, mine.y, gamma_pt, G), gamma, sec.b.value())
    head = cbytes(gamma_pt) + elog.to_bytes()
    x_pt = cpoint(state.public_shares[me])
    out: dict[int | None, bytes] = {}
    for j, r1 in peers.items():
        key_j, rj = aux.paillier_keys[j], aux.ring_pedersen[j]
        beta, beta_hat = int(sample_signed(ELL_PRIME)), int(sample_signed(ELL_PRIME))
        pool = state.nonces
        e, s = _encrypt(key_j, -beta, pool)
        e_hat, s_hat = _encrypt(key_j, -beta_hat, pool)
        f, r = _encrypt(sk, -beta, pool)
        f_hat, r_hat = _encrypt(sk, -beta_hat, pool)
        d = key_j.add(key_j.mul(gamma, r1.k), e)
        d_hat = key_j.add(key_j.mul(x, r1.k), e_hat)
        st = pi_aff_g.AffGStatement(r1.k, d, f, gamma_pt)
        st_hat = pi_aff_g.AffGStatement(r1.k, d_hat, f_hat, x_pt)
        nj, ni, nj2, ni2 = _take(pool, key_j), _take(pool, sk), _take(pool, key_j), _take(pool, sk)
        psi = pi_aff_g.prove(sid, me, rj, key_j, sk, st, gamma, -beta, s, r, nj, ni).to_bytes()
        psi_hat = pi_aff_g.prove(
            sid, me, rj, key_j, sk, st_hat, x, -beta_hat, s_hat, r_hat, nj2, ni2
        ).to_bytes()
        sec.betas[j] = (beta, beta_hat)
        out[j] = (
            head
            + _enc_int(d, key_j.nn)
            + _enc_int(f, sk.nn)
            + _enc_int(d_hat, key_j.nn)
            + _enc_int(f_hat, sk.nn)
            + var(psi)
            + var(psi_hat)
        )
    core, msgs = send(state.core, SlotCode.R2, out)
    return replace(state, core=core, phase=Phase.ROUND2, gamma_point=cbytes(gamma_pt)), msgs


@dataclass(frozen=True)
class _Round2:
    gamma: Point
    d: int
    d_hat: int


def _on_round2(state: PresigningState) -> tuple[PresigningState, list[Message]]:
    me, sid, aux, sk = state.core.me, state.core.session_id, state.aux, state.aux.paillier
    my_rp = verifier_params(aux)
    mine = _parse_round1(state, me)
    got: dict[int, _Round2] = {}

    def check(j: int) -> None:
        r1 = _parse_round1(state, j)
        key_j = aux.paillier_keys[j]
        rd = Reader(body(state.core, SlotCode.R2, j), j, f"{TAG}: round 2")
        gamma_raw = rd.take(33)
        elog = rd.take(pi_elog.PROOF_LEN)
        d = check_ciphertext(sk.public, int.from_bytes(rd.take(_int_len(sk.nn)), "big"), j, "D_ij")
        f = check_ciphertext(key_j, int.from_bytes(rd.take(_int_len(key_j.nn)), "big"), j, "F_ij")
        d_hat = check_ciphertext(sk.public, int.from_bytes(rd.take(_int_len(sk.nn)), "big"), j, "D^_ij")
        f_hat = check_ciphertext(key_j, int.from_bytes(rd.take(_int_len(key_j.nn)), "big"), j, "F^_ij")
        psi, psi_hat = rd.take_var(), rd.take_var()
        rd.end()
        try:
            gamma_j = cpoint(gamma_raw)
        except ValueError:
            raise rd.fail("Gamma_j is not a curve point") from None
        pi_elog.verify(sid, j, ElogStatement(r1.b1, r1.b2, r1.y, gamma_j, G), elog)
        x_j = cpoint(state.public_shares[j])
        pi_aff_g.verify(sid, j, my_rp, sk, key_j, pi_aff_g.AffGStatement(mine.k, d, f, gamma_j), psi)
        pi_aff_g.verify(sid, j, my_rp, sk, key_j, pi_aff_g.AffGStatement(mine.k, d_hat, f_hat, x_j), psi_hat)
        got[j] = _Round2(gamma_j, int(d), int(d_hat))

    check_each(_others(state), check)
    sec = state.secret
    k, gamma, x = sec.k.value(), sec.gamma.value(), sec.x.value()
    big_gamma = point_sum([cpoint(state.gamma_point)] + [r.gamma for r in got.values()])
    if big_gamma is None:
        raise UnattributableAbortError("presigning: Gamma is the point at infinity")
    delta_pt = point_mul_secret(big_gamma, k)
    delta_i, chi_i = gamma * k, x * k
    for j, r2 in got.items():
        beta, beta_hat = sec.betas[j]
        delta_i += int(sk.decrypt(r2.d)) + beta
        chi_i += int(sk.decrypt(r2.d_hat)) + beta_hat
    delta_i %= Q
    chi_i %= Q
    s_pt = point_mul_secret(big_gamma, chi_i)
    if delta_pt is None or s_pt is None:
        raise UnattributableAbortError("presigning: Delta_i or S_i is the point at infinity")
    elog = pi_elog.prove(
        sid, me, ElogStatement(mine.a1, mine.a2, mine.y, delta_pt, big_gamma), k, sec.a.value()
    )
    sec.chi.append(chi_i)
    sec.betas.clear()
    out = delta_i.to_bytes(32, "big") + cbytes(s_pt) + cbytes(delta_pt) + elog.to_bytes()
    core, msgs = send(state.core, SlotCode.R3, {None: out})
    return replace(state, core=core, phase=Phase.ROUND3, gamma_point=cbytes(big_gamma), delta_i=delta_i), msgs


def _on_round3(state: PresigningState) -> tuple[PresigningState, list[Message]]:
    sid, me = state.core.session_id, state.core.me
    big_gamma = cpoint(state.gamma_point)
    parts: dict[int, tuple[int, Point, Point]] = {}

    def check(j: int) -> None:
        r1 = _parse_round1(state, j)
        rd = Reader(body(state.core, SlotCode.R3, j), j, f"{TAG}: round 3")
        delta_j = int.from_bytes(rd.take(32), "big")
        s_raw, d_raw, elog = rd.take(33), rd.take(33), rd.take(pi_elog.PROOF_LEN)
        rd.end()
        require(delta_j < Q, j, f"{TAG}: delta_j out of range")
        try:
            s_j, d_j = cpoint(s_raw), cpoint(d_raw)
        except ValueError:
            raise rd.fail("S_j or Delta_j is not a curve point") from None
        if j != me:
            pi_elog.verify(sid, j, ElogStatement(r1.a1, r1.a2, r1.y, d_j, big_gamma), elog)
        parts[j] = (delta_j, s_j, d_j)

    check_each(state.core.parties, check)
    delta = sum(p[0] for p in parts.values()) % Q
    if delta == 0 or not point_eq(point_mul_base(delta), point_sum([p[2] for p in parts.values()])):
        raise UnattributableAbortError("presigning: delta * G != sum Delta_j")
    if not point_eq(point_mul(cpoint(state.public_key), delta), point_sum([p[1] for p in parts.values()])):
        raise UnattributableAbortError("presigning: delta * X != sum S_j")
    inv = pow(delta, -1, Q)
    signers = state.core.parties
    commitments = PresignatureCommitments(
        gamma=state.gamma_point,
        signers=signers,
        deltas=tuple(cbytes(point_mul(parts[j][2], inv)) for j in signers),
        s_points=tuple(cbytes(point_mul(parts[j][1], inv)) for j in signers),
        shift=state.shift,
        public_key=state.public_key,
        session_id=sid,
    )
    sec = state.secret
    presig = Presignature(me, sec.k.value() * inv % Q, sec.chi[0] * inv % Q, commitments)
    sec.zeroize()
    return replace(state, phase=Phase.DONE, result=presig), []


STEPS: Final[Mapping[str, Step[PresigningState]]] = {
    Phase.ROUND1: Step((SlotCode.R1, SlotCode.R1_PROOFS), _on_round1),
    Phase.ECHO: Step((SlotCode.ECHO,), _on_echo),
    Phase.ROUND2: Step((SlotCode.R2,), _on_round2),
    Phase.ROUND3: Step((SlotCode.R3,), _on_round3),
}


def _fail(
    state: PresigningState, blame: Sequence[InvalidContributionError], error: Exception | None
) -> PresigningState:
    state.secret.zeroize()
    return replace(state, phase=Phase.FAILED, blame=(*state.blame, *blame), error=error)


def presigning_round(
    state: PresigningState, inbox: Iterable[object] = ()
) -> tuple[PresigningState, list[Message]]:
    """Advance with ``inbox``; when ``phase == "done"``, ``state.result`` is our presignature. Never
    raises on network input: failures end in ``phase == "failed"`` with ``blame`` (attributable) or
    ``error`` (``UnattributableAbortError``)."""
    return drive(state, inbox, STEPS, lambda s, c: replace(s, core=c), _fail)


def waiting_for(state: PresigningState) -> tuple[int, ...]:
    """The parties whose messages the current round still needs."""
    return rounds.waiting_for(state, STEPS)


retransmit = rounds.retransmit
