"""CGGMP24 auxiliary-information generation (the spec's "Provisioning Protocol", with the CGGMP24 change
that the ring-Pedersen modulus ``N-hat`` is separate from the Paillier modulus ``N``) as a round state
machine on :mod:`tss.cggmp24.rounds` (message handling, rejections, echo and blame are described there).

Rounds for party ``i`` of ``n`` (indices ``0..n-1``); the four safe primes are passed in (generate them
ahead of time with :mod:`tss.cggmp24.safe_prime`, in worker processes)::

    start    N_i = p_i q_i (Paillier), N-hat_i = p-hat_i q-hat_i, t_i = r^2, s_i = t_i^lambda (ring-Pedersen);
             psi-hat_i = Pi^prm((sid, i), (N-hat_i, s_i, t_i)); rho_i, u_i random (32 bytes);
             V_i = H(hash_com, sid, n, i, N_i, N-hat_i, s_i, t_i, psi-hat_i, rho_i, u_i)
             -> broadcast V_i                                                         (slot COMMIT)
    echo     all V_j in -> broadcast h_i = H(echo, sid, V_0..V_{n-1})                 (slot ECHO)
    round 2  all h_j in; abort naming every j with h_j != h_i
             -> broadcast (N_i, N-hat_i, s_i, t_i, psi-hat_i, rho_i, u_i)              (slot OPENING)
    round 3  for each j != i: the opening matches V_j; N_j and N-hat_j have >= 3071 bits (odd, not
             squares); s_j, t_j in Z*_{N-hat_j}, not +-1, s_j != t_j; Pi^prm verifies for (sid, j).
             rho = XOR rho_j; psi_i = Pi^mod((sid || rho, i), N_i);
             -> to each j != i: (psi_i, phi_i^j = Pi^fac((sid || rho, i), R_j, N_i))  (slot PROOFS)
    output   for each j != i: Pi^mod((sid || rho, j), N_j) and Pi^fac((sid || rho, j), R_i, N_j) verify.

Every failed check blames its sender. The output is an :class:`AuxInfoResult`: our Paillier secret key,
our ring-Pedersen trapdoor, and every party's Paillier public key and ring-Pedersen parameters (one
parameters object per party: its fixed-base tables are built once and reused by presigning).

Public API: ``start_aux_info(session_id, me, n, primes) -> (state, messages)`` with ``primes = (p, q,
p_hat, q_hat)``; ``aux_info_round(state, inbox) -> (state, messages)`` (never raises on network input);
``waiting_for(state)``; ``state.phase`` is ``"done"`` with ``state.result``, or ``"failed"`` with
``state.blame`` / ``state.error``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final

from tss.cggmp24 import pi_fac, pi_mod, pi_prm
from tss.cggmp24.errors import BadInputError, InvalidContributionError
from tss.cggmp24.paillier import (
    PaillierPublicKey,
    PaillierSecretKey,
    check_paillier_modulus,
    paillier_key_from_primes,
)
from tss.cggmp24.proof_codec import Reader as IntReader
from tss.cggmp24.proof_codec import Writer
from tss.cggmp24.ring_pedersen import (
    RingPedersenParams,
    RingPedersenSecret,
    check_ring_pedersen_params,
    ring_pedersen_from_primes,
)
from tss.cggmp24.rounds import (
    PROTOCOL_AUX_INFO,
    Message,
    Reader,
    RoundCore,
    Slot,
    Step,
    body,
    check_each,
    check_echo,
    drive,
    echo_hash,
    hash_out,
    new_core,
    require,
    send,
    var,
)
from tss.cggmp24.rounds import waiting_for as _waiting_for
from tss.cggmp24.transcript import Transcript

TAG: Final = "aux_info"
MIN_PARTIES: Final = 2
MAX_PARTIES: Final = 255


class SlotCode(IntEnum):
    COMMIT = 1
    ECHO = 2
    OPENING = 3
    PROOFS = 4


SLOTS: Final = (
    Slot(SlotCode.COMMIT, "commit", True),
    Slot(SlotCode.ECHO, "echo", True),
    Slot(SlotCode.OPENING, "opening", True),
    Slot(SlotCode.PROOFS, "proofs", False),
)


class Phase:
    COMMIT = "commit"
    ECHO = "echo"
    OPENING = "opening"
    PROOFS = "proofs"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class AuxInfoResult:
    """One party's aux-info output, keyed by party index (the same fields as presigning's ``AuxInfo``)."""

    index: int
    paillier: PaillierSecretKey = field(repr=False)
    paillier_keys: Mapping[int, PaillierPublicKey] = field(repr=False)
    ring_pedersen: Mapping[int, RingPedersenParams] = field(repr=False)
    own_ring_pedersen: RingPedersenSecret = field(repr=False)


@dataclass(frozen=True)
class AuxInfoState:
    core: RoundCore
    n: int
    phase: str
    paillier: PaillierSecretKey = field(repr=False)
    own_rp: RingPedersenSecret = field(repr=False)
    opening: bytes = field(repr=False)
    rho: bytes = field(default=b"", repr=False)
    paillier_keys: Mapping[int, PaillierPublicKey] = field(default_factory=dict, repr=False)
    ring_pedersen: Mapping[int, RingPedersenParams] = field(default_factory=dict, repr=False)
    result: AuxInfoResult | None = None
    blame: tuple[InvalidContributionError, ...] = ()
    error: Exception | None = None


def _hash_commitment(
    session_id: bytes, n: int, i: int, fields_: Sequence[int], prm: bytes, rho: bytes, u: bytes
) -> bytes:
    """``V_i = H(Encode[hash_com](sid, n, i, N_i, N-hat_i, s_i, t_i, psi-hat_i, rho_i, u_i))``."""
    t = Transcript(f"{TAG}/hash_com", session_id, i)
    t.append_int("n", n)
    t.append_ints("N,Nhat,s,t", list(fields_))
    t.append_bytes("prm", prm)
    t.append_bytes("rho", rho)
    t.append_bytes("u", u)
    return hash_out(t)


def start_aux_info(
    session_id: bytes, me: int, n: int, primes: tuple[int, int, int, int]
) -> tuple[AuxInfoState, list[Message]]:
    """Round 1 with our four safe primes ``(p, q, p_hat, q_hat)`` (``BadInputError`` on bad input)."""
    if not isinstance(n, int) or not MIN_PARTIES <= n <= MAX_PARTIES:
        raise BadInputError(f"n must be in [{MIN_PARTIES}, {MAX_PARTIES}]")
    if len(primes) != 4 or len(set(primes)) != 4:
        raise BadInputError("aux-info needs four distinct safe primes")
    core = new_core(PROTOCOL_AUX_INFO, session_id, me, range(n), SLOTS)
    p, q, ph, qh = primes
    paillier = paillier_key_from_primes(p, q)
    rp = ring_pedersen_from_primes(ph, qh)
    prm = pi_prm.prove(session_id, me, rp).to_bytes()
    rho, u = secrets.token_bytes(32), secrets.token_bytes(32)
    fields_ = (paillier.n, rp.params.n, rp.params.s, rp.params.t)
    v = _hash_commitment(session_id, n, me, fields_, prm, rho, u)
    opening = var(Writer().integers(list(fields_)).encode()) + rho + u + var(prm)
    state = AuxInfoState(core=core, n=n, phase=Phase.COMMIT, paillier=paillier, own_rp=rp, opening=opening)
    core, msgs = send(core, SlotCode.COMMIT, {None: v})
    return replace(state, core=core), msgs


def _on_commits(state: AuxInfoState) -> tuple[AuxInfoState, list[Message]]:
    core, msgs = send(state.core, SlotCode.ECHO, {None: echo_hash(state.core, SlotCode.COMMIT, TAG)})
    return replace(state, core=core, phase=Phase.ECHO), msgs


def _on_echoes(state: AuxInfoState) -> tuple[AuxInfoState, list[Message]]:
    check_echo(state.core, SlotCode.COMMIT, SlotCode.ECHO, TAG)
    core, msgs = send(state.core, SlotCode.OPENING, {None: state.opening})
    return replace(state, core=core, phase=Phase.OPENING), msgs


@dataclass(frozen=True)
class _Opening:
    fields_: tuple[int, int, int, int]
    rho: bytes
    u: bytes
    prm: bytes


def _parse_opening(state: AuxInfoState, j: int) -> _Opening:
    r = Reader(body(state.core, SlotCode.OPENING, j), j, f"{TAG}: opening")
    ints_blob = r.take_var()
    rho, u = r.take(32), r.take(32)
    prm = r.take_var()
    r.end()
    ir = IntReader(ints_blob, j, f"{TAG}: opening")
    vals = ir.integers(4)
    ir.done()
    return _Opening((vals[0], vals[1], vals[2], vals[3]), rho, u, prm)


def _on_openings(state: AuxInfoState) -> tuple[AuxInfoState, list[Message]]:
    sid, me, n = state.core.session_id, state.core.me, state.n
    openings: dict[int, _Opening] = {}
    keys: dict[int, PaillierPublicKey] = {}
    params: dict[int, RingPedersenParams] = {}

    def check(j: int) -> None:
        o = _parse_opening(state, j)
        v = _hash_commitment(sid, n, j, o.fields_, o.prm, o.rho, o.u)
        require(v == body(state.core, SlotCode.COMMIT, j), j, f"{TAG}: opening does not match V_j")
        openings[j] = o
        if j == me:
            keys[j], params[j] = state.paillier.public, state.own_rp.params
            return
        n_j, nh_j, s_j, t_j = o.fields_
        keys[j] = check_paillier_modulus(n_j, j)
        params[j] = check_ring_pedersen_params(nh_j, s_j, t_j, j)
        pi_prm.verify(sid, j, params[j], o.prm)

    check_each(range(n), check)
    rho = bytes(32)
    for o in openings.values():
        rho = bytes(x ^ y for x, y in zip(rho, o.rho, strict=True))
    sid_rho = sid + rho
    mod = var(pi_mod.prove(sid_rho, me, state.paillier).to_bytes())
    payloads: dict[int | None, bytes] = {
        j: mod + var(pi_fac.prove(sid_rho, me, params[j], state.paillier).to_bytes())
        for j in range(n)
        if j != me
    }
    core, msgs = send(state.core, SlotCode.PROOFS, payloads)
    return replace(
        state, core=core, phase=Phase.PROOFS, rho=rho, paillier_keys=keys, ring_pedersen=params
    ), msgs


def _on_proofs(state: AuxInfoState) -> tuple[AuxInfoState, list[Message]]:
    sid_rho, me = state.core.session_id + state.rho, state.core.me

    def check(j: int) -> None:
        r = Reader(body(state.core, SlotCode.PROOFS, j), j, f"{TAG}: proofs")
        mod, fac = r.take_var(), r.take_var()
        r.end()
        n_j = state.paillier_keys[j].n
        pi_mod.verify(sid_rho, j, n_j, mod)
        pi_fac.verify(sid_rho, j, state.own_rp, n_j, fac)

    check_each([j for j in range(state.n) if j != me], check)
    result = AuxInfoResult(
        me, state.paillier, dict(state.paillier_keys), dict(state.ring_pedersen), state.own_rp
    )
    return replace(state, phase=Phase.DONE, result=result), []


STEPS: Final[Mapping[str, Step[AuxInfoState]]] = {
    Phase.COMMIT: Step((SlotCode.COMMIT,), _on_commits),
    Phase.ECHO: Step((SlotCode.ECHO,), _on_echoes),
    Phase.OPENING: Step((SlotCode.OPENING,), _on_openings),
    Phase.PROOFS: Step((SlotCode.PROOFS,), _on_proofs),
}


def _fail(
    state: AuxInfoState, blame: Sequence[InvalidContributionError], error: Exception | None
) -> AuxInfoState:
    return replace(state, phase=Phase.FAILED, blame=(*state.blame, *blame), error=error)


def aux_info_round(state: AuxInfoState, inbox: Iterable[object] = ()) -> tuple[AuxInfoState, list[Message]]:
    """Advance the run with ``inbox``; never raises on network input."""
    return drive(state, inbox, STEPS, lambda s, c: replace(s, core=c), _fail)


def waiting_for(state: AuxInfoState) -> tuple[int, ...]:
    """The parties whose messages the current round still needs."""
    return _waiting_for(state, STEPS)


__all__ = [
    "PROTOCOL_AUX_INFO",
    "AuxInfoResult",
    "AuxInfoState",
    "Phase",
    "SlotCode",
    "aux_info_round",
    "start_aux_info",
    "waiting_for",
]
