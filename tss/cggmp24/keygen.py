"""CGGMP24 threshold (t-of-n) key generation, the spec's "Threshold Key Generation", as a round state
machine (see :mod:`tss.cggmp24.rounds` for message handling, rejections and blame).

Rounds for party ``i`` (indices ``0..n-1``; party ``j``'s Shamir evaluation point is ``j + 1``)::

    start    sample f_i (degree t-1), S_i = (s_ik * G)_k, sigma_ij = f_i(j+1), rid_i, (A_i, tau_i) =
             Commit_sch, chain-code share c_i, u_i;  V_i = H(hash_com, sid, i, rid_i, S_i, A_i, u_i, c_i)
             -> broadcast V_i                                                        (slot COMMIT)
    echo     all V_j in -> broadcast h_i = H(echo, sid, V_0..V_{n-1})                (slot ECHO)
    round 2  all h_j in; abort naming every j with h_j != h_i
             -> broadcast (rid_i, u_i, c_i, A_i, S_i)                                 (slot DECOMMIT)
             -> to each j != i: sigma_ij                                             (slot SHARE)
    round 3  for each j: the opening matches V_j, S_j has t points, sigma_ji * G == F_j(i+1);
             rid = XOR rid_j, c = XOR c_j, X_j = F(j+1), x_i = sum_j sigma_ji;
             -> broadcast psi_i = Prove_sch(e_i; tau_i, x_i), e_i = Challenge(sid, i, rid, X_i, A_i)
                                                                                     (slot SCHNORR)
    output   every psi_j verifies against X_j and A_j; Y = sum_j S_j0.

Every failed check blames its sender (``InvalidContributionError`` / ``InvalidProofError`` in
``state.blame``); a point-to-point share can only be blamed by its receiver. The run's output is a
:class:`KeyShare`.

:mod:`tss.cggmp24.key_refresh` runs the same machine with ``f_i(0) = 0`` (no constant commitment) and
adds the result to an existing share.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Final

from tss.cggmp24 import pi_sch, rounds
from tss.cggmp24.errors import BadInputError, InvalidContributionError, UnattributableAbortError
from tss.cggmp24.rounds import (
    PROTOCOL_KEY_REFRESH,
    PROTOCOL_KEYGEN,
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
    hash_out,
    new_core,
    require,
    send,
)
from tss.cggmp24.transcript import Transcript
from tss.secp256k1 import N as Q
from tss.secp256k1 import (
    Point,
    cbytes,
    cpoint,
    lincomb,
    point_add,
    point_eq,
    point_mul_base,
    point_sum,
)


class SlotCode(IntEnum):
    COMMIT = 1
    ECHO = 2
    DECOMMIT = 3
    SHARE = 4
    SCHNORR = 5


SLOTS: Final = (
    Slot(SlotCode.COMMIT, "commit", True),
    Slot(SlotCode.ECHO, "echo", True),
    Slot(SlotCode.DECOMMIT, "decommit", True),
    Slot(SlotCode.SHARE, "share", False),
    Slot(SlotCode.SCHNORR, "schnorr", True),
)

MIN_PARTIES: Final = 2
MAX_PARTIES: Final = 255


@dataclass(frozen=True)
class KeyShare:
    """One party's output of key generation (or refresh).

    ``public_shares[j] = x_j * G`` for every party ``j`` (Shamir share at the point ``j + 1``);
    ``public_key = sum_j lambda_j * public_shares[j]`` for any ``t`` of them. ``chain_code`` is the joint
    BIP-32 chain code (32 bytes). The secret share is a :class:`SecretScalar` (``zeroize()`` it when the
    share is retired), excluded from ``repr``."""

    index: int
    t: int
    n: int
    secret: SecretScalar = field(repr=False)
    public_key: bytes
    public_shares: tuple[bytes, ...] = field(repr=False)
    chain_code: bytes = field(repr=False)

    def public_share(self, j: int) -> Point:
        return cpoint(self.public_shares[j])

    def zeroize(self) -> None:
        self.secret.zeroize()


class Phase:
    COMMIT = "commit"  # our V sent; waiting for every V
    ECHO = "echo"  # our echo sent; waiting for every echo
    DECOMMIT = "decommit"  # opening and shares sent; waiting for every opening and our shares
    PROVE = "prove"  # Schnorr response sent; waiting for every response
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class DealingState:
    """One party's run of keygen or refresh (the protocol is ``core.protocol``)."""

    core: RoundCore
    t: int
    n: int
    hd: bool
    phase: str
    coeffs: tuple[SecretScalar, ...] = field(repr=False)
    tau: bytearray = field(repr=False)
    opening: bytes = field(repr=False)
    outgoing_shares: Mapping[int, bytes] = field(repr=False)
    previous: KeyShare | None = field(default=None, repr=False)  # key refresh: the share being refreshed
    rid: bytes = field(default=b"", repr=False)
    public_shares: tuple[bytes, ...] = field(default=(), repr=False)
    chain_code: bytes = field(default=b"", repr=False)
    new_secret: SecretScalar | None = field(default=None, repr=False)
    result: KeyShare | None = None
    blame: tuple[InvalidContributionError, ...] = ()
    error: Exception | None = None


def _tag(state: DealingState) -> str:
    return "keygen" if state.core.protocol == PROTOCOL_KEYGEN else "key_refresh"


def _hash_commitment(
    tag: str, session_id: bytes, i: int, rid: bytes, points: Sequence[bytes], a: bytes, u: bytes, c: bytes
) -> bytes:
    """``V_i = H(Encode[hash_com](sid, i, rid_i, S_i, A_i, u_i, c_i))``."""
    t = Transcript(f"{tag}/hash_com", session_id, i)
    t.append_bytes("rid", rid)
    t.append_int("S#len", len(points))
    for k, p in enumerate(points):
        t.append_point(f"S[{k}]", p)
    t.append_point("A", a)
    t.append_bytes("u", u)
    t.append_bytes("c", c)
    return hash_out(t)


def _n_points(t: int, zero_constant: bool) -> int:
    return t - 1 if zero_constant else t


def start_dealing(
    protocol: int, session_id: bytes, me: int, t: int, n: int, hd: bool, previous: KeyShare | None
) -> tuple[DealingState, list[Message]]:
    if not (isinstance(n, int) and isinstance(t, int)) or not MIN_PARTIES <= n <= MAX_PARTIES:
        raise BadInputError(f"n must be in [{MIN_PARTIES}, {MAX_PARTIES}]")
    if not 2 <= t <= n:
        raise BadInputError("threshold t must satisfy 2 <= t <= n")
    zero_constant = protocol == PROTOCOL_KEY_REFRESH
    core = new_core(protocol, session_id, me, range(n), SLOTS)
    coeffs = [0 if (k == 0 and zero_constant) else secrets.randbelow(Q - 1) + 1 for k in range(t)]
    points = [cbytes(point_mul_base(c)) for c in coeffs[(1 if zero_constant else 0) :]]
    shares = {j: _eval_poly(coeffs, j + 1).to_bytes(32, "big") for j in range(n) if j != me}
    rid, u = secrets.token_bytes(32), secrets.token_bytes(32)
    c = secrets.token_bytes(32) if hd else b""
    a, tau = pi_sch.commit()
    tag = "keygen" if protocol == PROTOCOL_KEYGEN else "key_refresh"
    v = _hash_commitment(tag, session_id, me, rid, points, a, u, c)
    opening = rid + u + c + a + b"".join(points)
    state = DealingState(
        core=core,
        t=t,
        n=n,
        hd=hd,
        phase=Phase.COMMIT,
        coeffs=tuple(SecretScalar(x) for x in coeffs),
        tau=tau,
        opening=opening,
        outgoing_shares=shares,
        previous=previous,
        new_secret=SecretScalar(_eval_poly(coeffs, me + 1)),  # our own share of our own polynomial
    )
    core, msgs = send(core, SlotCode.COMMIT, {None: v})
    return replace(state, core=core), msgs


def _eval_poly(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % Q
    return acc


def _eval_commitments(points: Sequence[Point], x: int, zero_constant: bool) -> Point:
    """``F(x) = sum_k x^k * S_k`` (the powers start at 1 when the constant term is the fixed zero)."""
    start = 1 if zero_constant else 0
    return lincomb([(p, pow(x, k + start, Q)) for k, p in enumerate(points)])


# ---------------------------------------------------------------------------------------------
# handlers


def _context(state: DealingState) -> bytes:
    """What the echo binds besides the commitments: ``t``, ``n``, whether a chain code is made and, for a
    refresh, the key and public shares being refreshed. Parties started with different parameters abort at
    the echo instead of blaming each other's well-formed messages."""
    out = bytes([state.t, state.n, state.hd])
    if state.previous is not None:
        out += state.previous.public_key + b"".join(state.previous.public_shares) + state.previous.chain_code
    return out


def _on_commits(state: DealingState) -> tuple[DealingState, list[Message]]:
    echo = echo_hash(state.core, SlotCode.COMMIT, _tag(state), _context(state))
    core, msgs = send(state.core, SlotCode.ECHO, {None: echo})
    return replace(state, core=core, phase=Phase.ECHO), msgs


def _on_echoes(state: DealingState) -> tuple[DealingState, list[Message]]:
    check_echo(state.core, SlotCode.COMMIT, SlotCode.ECHO, _tag(state), _context(state))
    core, msgs = send(state.core, SlotCode.DECOMMIT, {None: state.opening})
    p2p: dict[int | None, bytes] = {j: v for j, v in state.outgoing_shares.items()}
    core, shares = send(core, SlotCode.SHARE, p2p)
    msgs.extend(shares)
    for c in state.coeffs:
        c.zeroize()
    return replace(state, core=core, phase=Phase.DECOMMIT, coeffs=(), outgoing_shares={}), msgs


@dataclass(frozen=True)
class _Opening:
    rid: bytes
    u: bytes
    c: bytes
    a: bytes
    point_bytes: tuple[bytes, ...]
    points: tuple[Point, ...]


def _parse_opening(state: DealingState, j: int) -> _Opening:
    tag = _tag(state)
    r = Reader(body(state.core, SlotCode.DECOMMIT, j), j, f"{tag}: decommitment")
    rid, u = r.take(32), r.take(32)
    c = r.take(32) if state.hd else b""
    a = r.take(33)
    k = _n_points(state.t, state.core.protocol == PROTOCOL_KEY_REFRESH)
    pbs = tuple(r.take(33) for _ in range(k))
    r.end()
    try:
        cpoint(a)
        pts = tuple(cpoint(p) for p in pbs)
    except ValueError:
        raise r.fail("not a curve point") from None
    return _Opening(rid, u, c, a, pbs, pts)


def _on_openings(state: DealingState) -> tuple[DealingState, list[Message]]:
    tag, me, n = _tag(state), state.core.me, state.n
    zero_constant = state.core.protocol == PROTOCOL_KEY_REFRESH
    openings: dict[int, _Opening] = {}
    received: dict[int, int] = {}

    def check(j: int) -> None:
        o = _parse_opening(state, j)
        v = _hash_commitment(tag, state.core.session_id, j, o.rid, o.point_bytes, o.a, o.u, o.c)
        require(v == body(state.core, SlotCode.COMMIT, j), j, f"{tag}: decommitment does not open V_j")
        openings[j] = o
        if j == me:
            return
        r = Reader(body(state.core, SlotCode.SHARE, j), j, f"{tag}: share")
        sigma = int.from_bytes(r.take(32), "big")
        r.end()
        require(sigma < Q, j, f"{tag}: share out of range")
        require(
            point_eq(point_mul_base(sigma), _eval_commitments(o.points, me + 1, zero_constant)),
            j,
            f"{tag}: share does not match the VSS commitments (sigma_ji * G != F_j(i+1))",
        )
        received[j] = sigma

    check_each(range(n), check)
    rid = bytes(32)
    chain = bytes(32) if state.hd else b""
    for o in openings.values():
        rid = bytes(x ^ y for x, y in zip(rid, o.rid, strict=True))
        if state.hd:
            chain = bytes(x ^ y for x, y in zip(chain, o.c, strict=True))
    k = _n_points(state.t, zero_constant)
    summed = [point_sum([openings[j].points[m] for j in range(n)]) for m in range(k)]
    deltas = [_eval_commitments(summed, j + 1, zero_constant) for j in range(n)]
    assert state.new_secret is not None
    x = (state.new_secret.value() + sum(received.values())) % Q
    state.new_secret.zeroize()
    prev = state.previous
    if prev is not None:  # refresh: new share = old share + share of zero
        x = (x + prev.secret.value()) % Q
        new_points = [point_add(prev.public_share(j), deltas[j]) for j in range(n)]
        chain = prev.chain_code
    else:
        new_points = deltas
    if any(p is None for p in new_points) or x == 0:
        raise UnattributableAbortError(f"{tag}: a public share is the point at infinity")
    public_shares = tuple(cbytes(p) for p in new_points)
    ctx = tag.encode() + rid
    e = pi_sch.challenge(state.core.session_id, me, ctx, new_points[me], openings[me].a)
    z = pi_sch.prove(e, state.tau, x)
    core, msgs = send(state.core, SlotCode.SCHNORR, {None: z})
    state = replace(
        state,
        core=core,
        phase=Phase.PROVE,
        rid=rid,
        chain_code=chain,
        public_shares=public_shares,
        new_secret=SecretScalar(x),
    )
    return state, msgs


def _on_proofs(state: DealingState) -> tuple[DealingState, list[Message]]:
    tag, me = _tag(state), state.core.me
    ctx = tag.encode() + state.rid

    def check(j: int) -> None:
        a = _parse_opening(state, j).a
        z = body(state.core, SlotCode.SCHNORR, j)
        pi_sch.verify(state.core.session_id, j, ctx, cpoint(state.public_shares[j]), a, z)

    check_each([j for j in range(state.n) if j != me], check)
    if state.previous is not None:
        public_key = state.previous.public_key
    else:
        y = point_sum([_parse_opening(state, j).points[0] for j in range(state.n)])
        if y is None:
            raise UnattributableAbortError(f"{tag}: the public key is the point at infinity")
        public_key = cbytes(y)
    assert state.new_secret is not None
    share = KeyShare(
        index=me,
        t=state.t,
        n=state.n,
        secret=state.new_secret,
        public_key=public_key,
        public_shares=state.public_shares,
        chain_code=state.chain_code,
    )
    _check_consistent(share)
    return replace(state, phase=Phase.DONE, result=share), []


def _check_consistent(share: KeyShare) -> None:
    """The first t public shares interpolate to the public key (true by construction when every check
    passed; a cheap guard against a bug)."""
    ids = list(range(share.t))
    y = lincomb([(share.public_share(j), lagrange_coefficient(ids, j)) for j in ids])
    if y is None or cbytes(y) != share.public_key:
        raise UnattributableAbortError("public shares do not interpolate to the public key")


def lagrange_coefficient(signers: Sequence[int], j: int) -> int:
    """``lambda_j = prod_{m != j} I(m) / (I(m) - I(j))`` at zero, with ``I(m) = m + 1``."""
    num, den = 1, 1
    for m in signers:
        if m != j:
            num = num * (m + 1) % Q
            den = den * (m - j) % Q
    return num * pow(den, -1, Q) % Q


STEPS: Final[Mapping[str, Step[DealingState]]] = {
    Phase.COMMIT: Step((SlotCode.COMMIT,), _on_commits),
    Phase.ECHO: Step((SlotCode.ECHO,), _on_echoes),
    Phase.DECOMMIT: Step((SlotCode.DECOMMIT, SlotCode.SHARE), _on_openings),
    Phase.PROVE: Step((SlotCode.SCHNORR,), _on_proofs),
}


def _fail(
    state: DealingState, blame: Sequence[InvalidContributionError], error: Exception | None
) -> DealingState:
    if state.new_secret is not None:
        state.new_secret.zeroize()
    for c in state.coeffs:
        c.zeroize()
    state.tau[:] = bytes(len(state.tau))
    return replace(state, phase=Phase.FAILED, blame=(*state.blame, *blame), error=error, outgoing_shares={})


def dealing_round(state: DealingState, inbox: Iterable[object] = ()) -> tuple[DealingState, list[Message]]:
    """Advance a keygen or refresh run with ``inbox``; never raises on network input."""
    return drive(state, inbox, STEPS, lambda s, c: replace(s, core=c), _fail)


def waiting_for(state: DealingState) -> tuple[int, ...]:
    """The parties whose messages the current round still needs."""
    return rounds.waiting_for(state, STEPS)


retransmit = rounds.retransmit


# ---------------------------------------------------------------------------------------------
# keygen entry points


def keygen_start(
    session_id: bytes, index: int, t: int, n: int, hd: bool = True
) -> tuple[DealingState, list[Message]]:
    """Start party ``index`` (``0 <= index < n``) of a t-of-n key generation; returns the first
    broadcast. ``hd`` adds the joint BIP-32 chain code. ``BadInputError`` on bad parameters."""
    return start_dealing(PROTOCOL_KEYGEN, session_id, index, t, n, hd, None)


def keygen_round(state: DealingState, inbox: Iterable[object] = ()) -> tuple[DealingState, list[Message]]:
    """Advance with ``inbox``; when ``state.phase == "done"``, ``state.result`` is the :class:`KeyShare`."""
    if state.core.protocol != PROTOCOL_KEYGEN:
        raise BadInputError("not a keygen state")
    return dealing_round(state, inbox)
