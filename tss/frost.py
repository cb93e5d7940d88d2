"""BIP-445: FROST signing for BIP-340 Schnorr signatures.

Theory of operation
-------------------
A FROST key is a Shamir sharing of a secret key ``x`` among ``n`` participants with threshold ``t``:
participant ``id`` (0-based, ``0 <= id < n``) holds ``secshare = f(id + 1)`` for a polynomial ``f`` of
degree ``t - 1`` with ``f(0) = x``, and everybody knows ``pubshare = secshare*G`` and the threshold public
key ``thresh_pk = x*G``. Key generation is out of scope here (ChillDKG lives in ``tss.chilldkg``).

Any set of ``u >= t`` signers signs in two rounds:

1. ``nonce_gen``: each signer draws two secret nonces ``k1, k2`` and publishes ``pubnonce = k1*G || k2*G``.
   ``nonce_agg`` sums the pubnonces point-wise into ``aggnonce = R1 || R2``.
2. ``sign``: with the :class:`SessionContext` (aggnonce, signers, tweaks, message) every signer derives the
   binding value ``b = H_noncecoef(ids || aggnonce || xbytes(Q) || m)``, the final nonce
   ``R = R1 + b*R2`` and the BIP-340 challenge ``e``, and answers
   ``s_i = k1 + b*k2 + e*lambda_i*d_i`` with its Lagrange coefficient ``lambda_i``
   (:func:`derive_interpolating_value`) and its secret share ``d_i`` (negated where needed so that the
   result verifies under the x-only key). ``partial_sig_agg`` adds the ``s_i`` and the tweak term; the
   pair ``(xbytes(R), s)`` is an ordinary BIP-340 signature for the (tweaked) threshold key.

``partial_sig_verify`` checks one partial signature against the signer's pubshare and pubnonce: with it
an aggregator always finds *who* broke a session (identifiable abort). Invalid contributions raise
:class:`InvalidContributionError`, which carries the position of the offender in the list that was passed
(``signer_index``, as the BIP and its vectors do; ``None`` blames the coordinator) and the kind of
contribution (``"pubnonce"``, ``"aggnonce"``, ``"aggothernonce"``, ``"psig"``); ``signer_id`` adds the
participant identifier where the function knows it. Malformed input that is no protocol contribution
raises ``ValueError``.

Tweaking (:class:`TweakContext`, :func:`apply_tweak`) supports plain tweaks (BIP-32 public derivation)
and x-only tweaks (BIP-341 TapTweak) in any order. Messages of any length are supported.

Implementation notes
--------------------
* Names and argument orders follow the BIP's Algorithms section in snake_case (``PartialSigVerify`` is
  :func:`partial_sig_verify`, ``GetSessionValues`` is :func:`get_session_values`, ...).
* All point arithmetic is libsecp256k1 through :mod:`tss.secp256k1`; scalars are Python ints mod ``N``.
  Python integer arithmetic is not constant time: the secret-dependent scalar operations here are a
  handful of multiplications and additions, the point multiplications by secrets are libsecp256k1's
  constant-time ``ecmult_gen``.
* A ``secnonce`` is a 64-byte ``bytearray``; :func:`sign` overwrites it with zeros as soon as it has read
  it, so a second ``sign`` with the same object fails with ``ValueError`` (nonce reuse leaks the share).
* The BIP recomputes the session values in every algorithm for clarity. Here the validated signers
  context (parsed pubshares, Lagrange coefficients, serialized ids) and the session values are memoised
  in small LRU caches keyed by the full public input bytes, so a signer that signs and then verifies, or
  an aggregator that verifies ``u`` partial signatures, pays for them once. Only public data is cached.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, NamedTuple, TypeAlias

from coincurve import PublicKey

from tss.secp256k1 import (
    G,
    N,
    cbytes,
    cbytes_ext,
    cpoint,
    cpoint_ext,
    has_even_y,
    point_add,
    point_eq,
    point_mul,
    point_mul_base,
    point_neg,
    point_sum,
    point_tweak_add,
    scalar_from_bytes_checked,
    scalar_from_bytes_nonzero_checked,
    scalar_to_bytes,
    tagged_hash,
    xbytes,
)

__all__ = [
    "ContribKind",
    "InvalidContributionError",
    "PlainPk",
    "SessionContext",
    "SignersContext",
    "TweakContext",
    "XonlyPk",
    "apply_tweak",
    "derive_interpolating_value",
    "derive_thresh_pubkey",
    "deterministic_sign",
    "get_plain_pk",
    "get_plain_pubkey",
    "get_session_values",
    "get_xonly_pk",
    "get_xonly_pubkey",
    "nonce_agg",
    "nonce_gen",
    "nonce_gen_internal",
    "partial_sig_agg",
    "partial_sig_verify",
    "partial_sig_verify_internal",
    "serialize_ids",
    "sign",
    "thresh_pubkey_and_tweak",
    "tweak_ctx_init",
    "validate_signers_ctx",
]

PlainPk: TypeAlias = bytes
"""33-byte compressed point."""
XonlyPk: TypeAlias = bytes
"""32-byte x-only point (BIP-340)."""
ContribKind = Literal["aggothernonce", "aggnonce", "psig", "pubnonce"]

TAG_AUX = "BIP0445/aux"
TAG_NONCE = "BIP0445/nonce"
TAG_NONCECOEF = "BIP0445/noncecoef"
TAG_DETERMINISTIC_NONCE = "BIP0445/deterministic/nonce"
TAG_BIP340_CHALLENGE = "BIP0340/challenge"

MAX_PARTICIPANTS = 2**32 - 1  # ids are serialized as 4-byte integers


class InvalidContributionError(Exception):
    """A signer (``signer_index`` = its position in the input list) or, with ``signer_index=None``, the
    coordinator sent an invalid contribution of kind ``contrib``. ``signer_id`` is the participant
    identifier when the raising function knows it."""

    def __init__(self, signer_index: int | None, contrib: ContribKind, signer_id: int | None = None) -> None:
        self.signer_index = signer_index
        self.contrib = contrib
        self.signer_id = signer_id
        who = "coordinator" if signer_index is None else f"signer at index {signer_index}"
        if signer_id is not None:
            who += f" (id {signer_id})"
        super().__init__(f"invalid {contrib} from {who}")


# ---------------------------------------------------------------------------------------------
# input checking helpers (ValueError, never TypeError/IndexError, for malformed input)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _as_bytes(x: object, what: str, length: int | None = None) -> bytes:
    if type(x) is bytes:
        b = x
    elif isinstance(x, bytes | bytearray | memoryview):
        b = bytes(x)
    else:
        raise ValueError(f"{what} must be a byte string")
    if length is not None and len(b) != length:
        raise ValueError(f"{what} must be {length} bytes")
    return b


@lru_cache(maxsize=4096)
def _cpoint(b: bytes) -> PublicKey:
    """``cpoint`` memoised: pubshares and pubnonces are parsed once however many algorithms see them.
    Only public points pass through here; the cached objects are never mutated."""
    return cpoint(b)


def _xor_bytes(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _has_duplicates(lst: Sequence[int]) -> bool:
    return len(set(lst)) != len(lst)


# ---------------------------------------------------------------------------------------------
# Signers Context


class SignersContext(NamedTuple):
    """Public data of the signing participants (BIP-445 "Signers Context"; ``u = len(ids)``)."""

    n: int
    t: int
    ids: Sequence[int]
    pubshares: Sequence[PlainPk]
    thresh_pk: PlainPk


class _SignersInfo(NamedTuple):
    """A validated signers context with what signing needs precomputed."""

    n: int
    t: int
    ids: tuple[int, ...]
    pubshares: tuple[bytes, ...]
    thresh_pk: bytes
    lambdas: dict[int, int]  # id -> interpolating value for this signer set
    ser_ids: bytes  # serialize_ids(ids)


def derive_interpolating_value(ids: Sequence[int], my_id: int) -> int:
    """Lagrange coefficient at 0 of participant ``my_id`` in the set ``ids`` (ids shifted by one)."""
    if not all(_is_int(i) for i in ids) or not _is_int(my_id):
        raise ValueError("identifiers must be integers")
    if my_id not in ids:
        raise ValueError("my_id is not in the identifier list")
    if _has_duplicates(ids):
        raise ValueError("the identifier list contains duplicates")
    num = 1
    deno = 1
    for curr_id in ids:
        if curr_id == my_id:
            continue
        num = num * (curr_id + 1) % N
        deno = deno * (curr_id - my_id) % N
    return num * pow(deno, -1, N) % N


def derive_thresh_pubkey(ids: Sequence[int], pubshares: Sequence[PublicKey]) -> PlainPk:
    """``DeriveThreshPubkey``: interpolate the threshold public key from parsed pubshares (inputs are not
    validated, as in the BIP; :func:`validate_signers_ctx` is the caller)."""
    terms = zip(ids, pubshares, strict=True)
    q = point_sum([point_mul(p, derive_interpolating_value(ids, i)) for i, p in terms])
    if q is None:
        raise ValueError("the interpolated threshold public key is infinity")
    return cbytes(q)


def serialize_ids(ids: Sequence[int]) -> bytes:
    """``SerializeIds``: the sorted ids as 4-byte big-endian integers."""
    return b"".join(i.to_bytes(4, "big") for i in sorted(ids))


def _signers_key(signers_ctx: SignersContext) -> tuple[int, int, tuple[int, ...], tuple[bytes, ...], bytes]:
    """Type-check a signers context and turn it into a hashable tuple."""
    if not isinstance(signers_ctx, tuple) or len(signers_ctx) != 5:
        raise ValueError("signers_ctx must be a SignersContext")
    n, t, ids, pubshares, thresh_pk = signers_ctx
    if not _is_int(n) or not _is_int(t):
        raise ValueError("n and t must be integers")
    if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
        raise ValueError("ids must be a list of integers")
    if isinstance(pubshares, str | bytes) or not isinstance(pubshares, Sequence):
        raise ValueError("pubshares must be a list of byte strings")
    ids_t = tuple(ids)
    if not all(type(i) is int or _is_int(i) for i in ids_t):
        raise ValueError("ids must be a list of integers")
    pubs = tuple(pubshares)
    if not all(type(p) is bytes for p in pubs):
        pubs = tuple(_as_bytes(p, "pubshare") for p in pubs)
    tpk = thresh_pk if type(thresh_pk) is bytes else _as_bytes(thresh_pk, "thresh_pk")
    return n, t, ids_t, pubs, tpk


@lru_cache(maxsize=256)
def _validated_signers(
    n: int, t: int, ids: tuple[int, ...], pubshares: tuple[bytes, ...], thresh_pk: bytes
) -> _SignersInfo:
    if not 1 <= t <= n <= MAX_PARTICIPANTS:
        raise ValueError("the threshold must satisfy 1 <= t <= n < 2^32")
    if not t <= len(ids) <= n:
        raise ValueError("the number of signers must be between t and n")
    if len(pubshares) != len(ids):
        raise ValueError("ids and pubshares must have the same length")
    points = []
    for idx, (i, pubshare) in enumerate(zip(ids, pubshares, strict=True)):
        if not 0 <= i <= n - 1:
            raise ValueError(f"participant identifier at index {idx} is out of range")
        try:
            points.append(_cpoint(pubshare))
        except ValueError:
            # The signers context is agreed before signing: a bad pubshare is bad input, not a contribution.
            raise ValueError(f"invalid pubshare at index {idx}") from None
    if _has_duplicates(ids):
        raise ValueError("the identifier list contains duplicates")
    lambdas = {i: derive_interpolating_value(ids, i) for i in ids}
    q = point_sum([point_mul(p, lambdas[i]) for i, p in zip(ids, points, strict=True)])
    if q is None or cbytes(q) != thresh_pk:
        raise ValueError("the key material does not match the threshold public key")
    return _SignersInfo(n, t, ids, pubshares, thresh_pk, lambdas, serialize_ids(ids))


def _signers_info(signers_ctx: SignersContext) -> _SignersInfo:
    return _validated_signers(*_signers_key(signers_ctx))


def validate_signers_ctx(signers_ctx: SignersContext) -> None:
    """``ValidateSignersCtx``: ``ValueError`` unless the ids are distinct and in range, ``t <= u <= n``, the
    pubshares are points and they interpolate to ``thresh_pk``."""
    _signers_info(signers_ctx)


# ---------------------------------------------------------------------------------------------
# Tweak Context


class TweakContext(NamedTuple):
    """``(Q, gacc, tacc)``: the tweaked key, the accumulated sign and the accumulated tweak."""

    Q: PublicKey
    gacc: int
    tacc: int


def tweak_ctx_init(thresh_pk: PlainPk) -> TweakContext:
    """``TweakCtxInit``."""
    q = cpoint(_as_bytes(thresh_pk, "thresh_pk", 33))
    return TweakContext(q, 1, 0)


def get_xonly_pk(tweak_ctx: TweakContext) -> XonlyPk:
    """``GetXonlyPubkey``."""
    return xbytes(tweak_ctx.Q)


def get_plain_pk(tweak_ctx: TweakContext) -> PlainPk:
    """``GetPlainPubkey``."""
    return cbytes(tweak_ctx.Q)


get_xonly_pubkey = get_xonly_pk
get_plain_pubkey = get_plain_pk


def apply_tweak(tweak_ctx: TweakContext, tweak: bytes, is_xonly: bool) -> TweakContext:
    """``ApplyTweak``: ``Q' = g*Q + t*G`` with ``g = -1`` iff an x-only tweak meets an odd-y ``Q``."""
    tweak = _as_bytes(tweak, "tweak", 32)
    if not isinstance(is_xonly, bool):
        raise ValueError("is_xonly must be a bool")
    q, gacc, tacc = tweak_ctx
    g = -1 if is_xonly and not has_even_y(q) else 1
    try:
        twk = scalar_from_bytes_checked(tweak)
    except ValueError:
        raise ValueError("tweak is out of range") from None
    q2 = point_tweak_add(point_neg(q) if g == -1 else q, twk)
    if q2 is None:
        raise ValueError("tweaking produced the point at infinity")
    return TweakContext(q2, g * gacc % N, (twk + g * tacc) % N)


def thresh_pubkey_and_tweak(
    thresh_pk: PlainPk, tweaks: Sequence[bytes], is_xonly: Sequence[bool]
) -> TweakContext:
    """``TweakCtxInit`` followed by ``ApplyTweak`` for every tweak."""
    if isinstance(tweaks, bytes | bytearray | str) or isinstance(is_xonly, bytes | bytearray | str):
        raise ValueError("tweaks and is_xonly must be lists")
    if len(tweaks) != len(is_xonly):
        raise ValueError("tweaks and is_xonly must have the same length")
    tweak_ctx = tweak_ctx_init(thresh_pk)
    for tweak, xonly in zip(tweaks, is_xonly, strict=True):
        tweak_ctx = apply_tweak(tweak_ctx, tweak, xonly)
    return tweak_ctx


@lru_cache(maxsize=256)
def _tweaked(thresh_pk: bytes, tweaks: tuple[bytes, ...], is_xonly: tuple[bool, ...]) -> TweakContext:
    return thresh_pubkey_and_tweak(thresh_pk, tweaks, is_xonly)


def _tweak_key(
    tweaks: Sequence[bytes], is_xonly: Sequence[bool]
) -> tuple[tuple[bytes, ...], tuple[bool, ...]]:
    if isinstance(tweaks, bytes | bytearray | str) or not isinstance(tweaks, Sequence):
        raise ValueError("tweaks must be a list of 32-byte strings")
    if isinstance(is_xonly, bytes | bytearray | str) or not isinstance(is_xonly, Sequence):
        raise ValueError("is_xonly must be a list of bools")
    if not all(isinstance(x, bool) for x in is_xonly):
        raise ValueError("is_xonly must be a list of bools")
    if len(tweaks) != len(is_xonly):
        raise ValueError("tweaks and is_xonly must have the same length")
    return tuple(_as_bytes(tw, "tweak", 32) for tw in tweaks), tuple(is_xonly)


# ---------------------------------------------------------------------------------------------
# Nonce generation and aggregation


def _nonce_hash(
    rand: bytes, pubshare: bytes, thresh_pk: bytes, i: int, msg_prefixed: bytes, extra_in: bytes
) -> int:
    buf = b"".join(
        (
            rand,
            len(pubshare).to_bytes(1, "big"),
            pubshare,
            len(thresh_pk).to_bytes(1, "big"),
            thresh_pk,
            msg_prefixed,
            len(extra_in).to_bytes(4, "big"),
            extra_in,
            i.to_bytes(1, "big"),
        )
    )
    return int.from_bytes(tagged_hash(TAG_NONCE, buf), "big") % N


def _nonce_pair(k_1: int, k_2: int) -> tuple[bytearray, bytes]:
    if k_1 == 0 or k_2 == 0:  # probability ~2^-256
        raise ValueError("derived nonce is zero")
    pubnonce = cbytes(point_mul_base(k_1)) + cbytes(point_mul_base(k_2))
    return bytearray(scalar_to_bytes(k_1) + scalar_to_bytes(k_2)), pubnonce


def nonce_gen_internal(
    rand_: bytes,
    secshare: bytes | None,
    pubshare: PlainPk | None,
    thresh_pk: XonlyPk | None,
    msg: bytes | None,
    extra_in: bytes | None,
) -> tuple[bytearray, bytes]:
    """``NonceGen`` with the randomness ``rand_`` given (for tests); returns ``(secnonce, pubnonce)``."""
    rand_ = _as_bytes(rand_, "rand_", 32)
    if secshare is not None:
        rand = _xor_bytes(_as_bytes(secshare, "secshare", 32), tagged_hash(TAG_AUX, rand_))
    else:
        rand = rand_
    pk = b"" if pubshare is None else _as_bytes(pubshare, "pubshare", 33)
    tpk = b"" if thresh_pk is None else _as_bytes(thresh_pk, "thresh_pk", 32)
    if msg is None:
        msg_prefixed = b"\x00"
    else:
        m = _as_bytes(msg, "msg")
        msg_prefixed = b"\x01" + len(m).to_bytes(8, "big") + m
    extra = b"" if extra_in is None else _as_bytes(extra_in, "extra_in")
    if len(extra) > 2**32 - 1:
        raise ValueError("extra_in is too long")
    k_1 = _nonce_hash(rand, pk, tpk, 0, msg_prefixed, extra)
    k_2 = _nonce_hash(rand, pk, tpk, 1, msg_prefixed, extra)
    return _nonce_pair(k_1, k_2)


def nonce_gen(
    secshare: bytes | None = None,
    pubshare: PlainPk | None = None,
    thresh_pk: XonlyPk | None = None,
    msg: bytes | None = None,
    extra_in: bytes | None = None,
) -> tuple[bytearray, bytes]:
    """``NonceGen``: a fresh ``(secnonce, pubnonce)``; the optional arguments are defense in depth."""
    return nonce_gen_internal(secrets.token_bytes(32), secshare, pubshare, thresh_pk, msg, extra_in)


def nonce_agg(pubnonces: Sequence[bytes]) -> bytes:
    """``NonceAgg``: ``aggnonce = cbytes_ext(sum R_i1) || cbytes_ext(sum R_i2)``; an unparsable pubnonce
    raises ``InvalidContributionError(index, "pubnonce")``."""
    if isinstance(pubnonces, bytes | bytearray | str) or not isinstance(pubnonces, Sequence):
        raise ValueError("pubnonces must be a list of byte strings")
    firsts = []
    seconds = []
    for idx, pubnonce in enumerate(pubnonces):
        try:
            pn = _as_bytes(pubnonce, "pubnonce", 66)
            firsts.append(_cpoint(pn[0:33]))
            seconds.append(_cpoint(pn[33:66]))
        except ValueError:
            raise InvalidContributionError(idx, "pubnonce") from None
    return cbytes_ext(point_sum(firsts)) + cbytes_ext(point_sum(seconds))


# ---------------------------------------------------------------------------------------------
# Session Context


class SessionContext(NamedTuple):
    """BIP-445 "Session Context" (``v = len(tweaks)``)."""

    aggnonce: bytes
    signers_ctx: SignersContext
    tweaks: Sequence[bytes]
    is_xonly: Sequence[bool]
    msg: bytes


class _SessionValues(NamedTuple):
    Q: PublicKey
    gacc: int
    tacc: int
    b: int
    R: PublicKey
    e: int
    signers: _SignersInfo
    g: int  # 1 if Q has even y else -1
    r_even: bool


@lru_cache(maxsize=256)
def _session_values_cached(
    aggnonce: bytes,
    signers_key: tuple[int, int, tuple[int, ...], tuple[bytes, ...], bytes],
    tweaks: tuple[bytes, ...],
    is_xonly: tuple[bool, ...],
    msg: bytes,
) -> _SessionValues:
    signers = _validated_signers(*signers_key)
    q, gacc, tacc = _tweaked(signers.thresh_pk, tweaks, is_xonly)
    q_x = xbytes(q)
    b = int.from_bytes(tagged_hash(TAG_NONCECOEF, signers.ser_ids + aggnonce + q_x + msg), "big") % N
    if b == 0:  # probability ~2^-256
        raise ValueError("nonce coefficient is zero")
    try:
        r_1 = cpoint_ext(aggnonce[0:33])
        r_2 = cpoint_ext(aggnonce[33:66])
    except ValueError:
        raise InvalidContributionError(None, "aggnonce") from None
    r = point_add(r_1, point_mul(r_2, b))
    if r is None:
        r = G  # see BIP-445 "Dealing with Infinity in Nonce Aggregation"
    r_ser = cbytes(r)
    e = int.from_bytes(tagged_hash(TAG_BIP340_CHALLENGE, r_ser[1:] + q_x + msg), "big") % N
    if e == 0:  # probability ~2^-256
        raise ValueError("challenge is zero")
    g = 1 if has_even_y(q) else -1
    return _SessionValues(q, gacc, tacc, b, r, e, signers, g, r_ser[0] == 2)


def _session_values(session_ctx: SessionContext) -> _SessionValues:
    if not isinstance(session_ctx, tuple) or len(session_ctx) != 5:
        raise ValueError("session_ctx must be a SessionContext")
    aggnonce, signers_ctx, tweaks, is_xonly, msg = session_ctx
    aggnonce_b = _as_bytes(aggnonce, "aggnonce")
    if len(aggnonce_b) != 66:
        raise InvalidContributionError(None, "aggnonce")
    signers_key = _signers_key(signers_ctx)
    _validated_signers(*signers_key)  # ValueError before any blame on the aggnonce
    tw, xo = _tweak_key(tweaks, is_xonly)
    return _session_values_cached(aggnonce_b, signers_key, tw, xo, _as_bytes(msg, "msg"))


def get_session_values(
    session_ctx: SessionContext,
) -> tuple[PublicKey, int, int, list[int], list[bytes], int, PublicKey, int]:
    """``GetSessionValues``: ``(Q, gacc, tacc, ids, pubshares, b, R, e)``."""
    sv = _session_values(session_ctx)
    return (sv.Q, sv.gacc, sv.tacc, list(sv.signers.ids), list(sv.signers.pubshares), sv.b, sv.R, sv.e)


# ---------------------------------------------------------------------------------------------
# Signing


def sign(secnonce: bytearray, secshare: bytes, my_id: int, session_ctx: SessionContext) -> bytes:
    """``Sign``: the partial signature of participant ``my_id``.

    ``secnonce`` must be the mutable ``bytearray`` returned by :func:`nonce_gen`; it is zeroed as soon as
    it has been read (whether or not signing then succeeds), so it can never sign twice.
    """
    if not isinstance(secnonce, bytearray):
        raise ValueError("secnonce must be the bytearray returned by nonce_gen (so that it can be erased)")
    if len(secnonce) != 64:
        raise ValueError("secnonce must be 64 bytes")
    k_1_bytes = bytes(secnonce[0:32])
    k_2_bytes = bytes(secnonce[32:64])
    secnonce[:] = bytes(64)  # consume the nonce before anything else can fail
    try:
        k_1_ = scalar_from_bytes_nonzero_checked(k_1_bytes)
        k_2_ = scalar_from_bytes_nonzero_checked(k_2_bytes)
    except ValueError:
        raise ValueError("secnonce is invalid (zero: already used?)") from None
    sv = _session_values(session_ctx)
    try:
        d_ = scalar_from_bytes_nonzero_checked(_as_bytes(secshare, "secshare", 32))
    except ValueError:
        raise ValueError("secret share is out of range") from None
    if not _is_int(my_id):
        raise ValueError("my_id must be an integer")
    signers = sv.signers
    my_point = point_mul_base(d_)
    my_pubshare = cbytes(my_point)
    if my_pubshare not in signers.pubshares:
        raise ValueError("the signer's pubshare is not in the list of pubshares")
    if my_id not in signers.ids:
        raise ValueError("the signer's id is not in the list of ids")
    if signers.pubshares[signers.ids.index(my_id)] != my_pubshare:
        # Stricter than the BIP: a share listed under another id would yield a partial signature that
        # fails verification under my_id.
        raise ValueError("the signer's pubshare is not listed under its id")
    k_1 = k_1_ if sv.r_even else N - k_1_
    k_2 = k_2_ if sv.r_even else N - k_2_
    lam = signers.lambdas[my_id]
    d = sv.g * sv.gacc * d_
    s = (k_1 + sv.b * k_2 + sv.e * lam * d) % N
    psig = scalar_to_bytes(s)
    # Self-check (BIP-445 recommends it): never release a partial signature that does not verify. This
    # is PartialSigVerifyInternal's equation s*G == Re + e*lambda*g'*P, with the signer's own pubnonce
    # points k1'*G, k2'*G entering as R1 + b*R2 = (k1' + b*k2')*G: one constant-time base multiplication
    # instead of two plus a variable-base one. P = d'*G is the independently computed pubshare.
    re = point_mul_base(k_1_ + sv.b * k_2_)
    if not sv.r_even:
        re = point_neg(re)
    lhs = point_tweak_add(point_mul(my_point, -sv.e * lam * sv.g * sv.gacc), int.from_bytes(psig, "big"))
    if not point_eq(lhs, re):
        raise ValueError("partial signature failed its own verification")
    return psig


def _det_nonce_hash(
    secshare_: bytes,
    my_id: int,
    ids: Sequence[int],
    aggothernonce: bytes,
    tweaked_tpk: bytes,
    msg: bytes,
    i: int,
) -> int:
    buf = b"".join(
        (
            secshare_,
            my_id.to_bytes(4, "big"),
            len(ids).to_bytes(4, "big"),
            serialize_ids(ids),
            aggothernonce,
            tweaked_tpk,
            len(msg).to_bytes(8, "big"),
            msg,
            i.to_bytes(1, "big"),
        )
    )
    return int.from_bytes(tagged_hash(TAG_DETERMINISTIC_NONCE, buf), "big") % N


def deterministic_sign(
    secshare: bytes,
    my_id: int,
    aggothernonce: bytes | None,
    signers_ctx: SignersContext,
    tweaks: Sequence[bytes],
    is_xonly: Sequence[bool],
    msg: bytes,
    rand: bytes | None,
) -> tuple[bytes, bytes]:
    """``DeterministicSign``: stateless signing for the last signer; returns ``(pubnonce, psig)``.

    ``aggothernonce`` is the ``nonce_agg`` of all other signers' pubnonces (``None`` for a sole signer).
    """
    secshare_b = _as_bytes(secshare, "secshare", 32)
    if rand is not None:
        secshare_ = _xor_bytes(secshare_b, tagged_hash(TAG_AUX, _as_bytes(rand, "rand", 32)))
    else:
        secshare_ = secshare_b
    if not _is_int(my_id) or not 0 <= my_id <= MAX_PARTICIPANTS:
        raise ValueError("my_id must be an integer in [0, 2^32)")
    signers = _signers_info(signers_ctx)
    tw, xo = _tweak_key(tweaks, is_xonly)
    tweaked_tpk = get_xonly_pk(_tweaked(signers.thresh_pk, tw, xo))
    m = _as_bytes(msg, "msg")
    other = b"" if aggothernonce is None else _as_bytes(aggothernonce, "aggothernonce")
    k_1 = _det_nonce_hash(secshare_, my_id, signers.ids, other, tweaked_tpk, m, 0)
    k_2 = _det_nonce_hash(secshare_, my_id, signers.ids, other, tweaked_tpk, m, 1)
    secnonce, pubnonce = _nonce_pair(k_1, k_2)
    if aggothernonce is None:
        aggnonce = pubnonce
    else:
        try:
            aggnonce = nonce_agg([pubnonce, other])
        except InvalidContributionError:
            raise InvalidContributionError(None, "aggothernonce") from None
    session_ctx = SessionContext(aggnonce, signers_ctx, tweaks, is_xonly, m)
    return pubnonce, sign(secnonce, secshare_b, my_id, session_ctx)


# ---------------------------------------------------------------------------------------------
# Partial signature verification and aggregation


def _partial_sig_verify_internal(
    psig: bytes, my_id: int, pubnonce: bytes, pubshare: bytes, sv: _SessionValues
) -> bool:
    signers = sv.signers
    if not isinstance(psig, bytes | bytearray) or len(psig) != 32:
        return False
    s = int.from_bytes(psig, "big")
    if s >= N:
        return False
    if not _is_int(my_id) or my_id not in signers.ids:
        return False
    if not isinstance(pubshare, bytes | bytearray) or bytes(pubshare) not in signers.pubshares:
        return False
    if not isinstance(pubnonce, bytes | bytearray) or len(pubnonce) != 66:
        return False
    try:
        r_1 = _cpoint(bytes(pubnonce[0:33]))
        r_2 = _cpoint(bytes(pubnonce[33:66]))
        p = _cpoint(bytes(pubshare))
    except ValueError:
        return False
    # s*G == Re + e*lambda*g*gacc*P  <=>  s*G - e*lambda*g*gacc*P == +-(R_1 + b*R_2)
    re_ = point_add(r_1, point_mul(r_2, sv.b))
    re = re_ if sv.r_even else point_neg(re_)
    lhs = point_tweak_add(point_mul(p, -sv.e * signers.lambdas[my_id] * sv.g * sv.gacc), s)
    return point_eq(lhs, re)


def partial_sig_verify_internal(
    psig: bytes, my_id: int, pubnonce: bytes, pubshare: PlainPk, session_ctx: SessionContext
) -> bool:
    """``PartialSigVerifyInternal``."""
    return _partial_sig_verify_internal(psig, my_id, pubnonce, pubshare, _session_values(session_ctx))


def partial_sig_verify(
    psig: bytes,
    pubnonces: Sequence[bytes],
    signers_ctx: SignersContext,
    tweaks: Sequence[bytes],
    is_xonly: Sequence[bool],
    msg: bytes,
    i: int,
) -> bool:
    """``PartialSigVerify``: does ``psig`` of the signer at index ``i`` verify? An unparsable pubnonce of any
    signer raises ``InvalidContributionError(index, "pubnonce")``."""
    signers = _signers_info(signers_ctx)
    if isinstance(pubnonces, bytes | bytearray | str) or not isinstance(pubnonces, Sequence):
        raise ValueError("pubnonces must be a list of byte strings")
    if len(pubnonces) != len(signers.ids):
        raise ValueError("pubnonces and ids must have the same length")
    if not _is_int(i) or not 0 <= i < len(signers.ids):
        raise ValueError("signer index out of range")
    tw, xo = _tweak_key(tweaks, is_xonly)
    try:
        aggnonce = nonce_agg(pubnonces)
    except InvalidContributionError as exc:
        idx = exc.signer_index
        raise InvalidContributionError(idx, "pubnonce", None if idx is None else signers.ids[idx]) from None
    session_ctx = SessionContext(aggnonce, signers_ctx, tw, xo, msg)
    sv = _session_values(session_ctx)
    return _partial_sig_verify_internal(psig, signers.ids[i], pubnonces[i], signers.pubshares[i], sv)


def partial_sig_agg(psigs: Sequence[bytes], session_ctx: SessionContext) -> bytes:
    """``PartialSigAgg``: the BIP-340 signature ``xbytes(R) || s``; an out-of-range partial signature
    raises ``InvalidContributionError(index, "psig")``."""
    sv = _session_values(session_ctx)
    ids = sv.signers.ids
    if isinstance(psigs, bytes | bytearray | str) or not isinstance(psigs, Sequence):
        raise ValueError("psigs must be a list of byte strings")
    if len(psigs) != len(ids):
        raise ValueError("psigs and ids must have the same length")
    s = 0
    for idx, psig in enumerate(psigs):
        try:
            s += scalar_from_bytes_checked(_as_bytes(psig, "psig", 32))
        except ValueError:
            raise InvalidContributionError(idx, "psig", ids[idx]) from None
    s = (s + sv.e * sv.g * sv.tacc) % N
    return xbytes(sv.R) + scalar_to_bytes(s)
