"""Pi^mod: Paillier-Blum modulus (spec/main.tex, section "Pi^mod: Paillier-Blum Modulus").

Statement ``N``; the prover knows primes ``p, q = 3 (mod 4)`` with ``N = p q``. ``M = 128`` iterations:

- commit: ``w`` uniform in ``Z_N`` with Jacobi symbol ``(w / N) = -1``;
- challenge: ``y_1..y_m`` uniform in ``Z_N`` from the transcript ``("pi_mod", session id, prover, N, w)``;
- response: ``a_i, b_i`` in ``{0, 1}`` with ``y'_i = (-1)^(a_i) w^(b_i) y_i`` a quadratic residue, ``x_i``
  the principal 4th root of ``y'_i``, ``z_i = y_i^(N^-1 mod phi(N)) mod N``;
- verify: ``N`` odd and not prime; ``w`` in ``Z*_N``; for every ``i``: ``x_i``, ``z_i`` in ``[0, N)``,
  ``a_i, b_i`` bits, ``z_i^N = y_i`` and ``x_i^4 = (-1)^(a_i) w^(b_i) y_i (mod N)``.

A modulus with three or more prime factors, or not Blum, fails with probability ``1 - 2^-128`` (at most
half the ``y_i`` can be made residues). Pi^mod does not exclude a small factor: Pi^fac does.

Public API: ``prove(session_id, prover, key: PaillierSecretKey) -> ModProof`` (``BadInputError`` if the
factors are not ``3 mod 4``); ``verify(session_id, prover, n: int, proof: ModProof | bytes) -> None``
raising ``InvalidProofError(prover, "pi_mod: ...")``; ``ModProof.to_bytes()`` / ``ModProof.from_bytes(data,
prover)`` (``w``, then ``x_i, a_i, b_i, z_i`` for each ``i``).
"""

from __future__ import annotations

from dataclasses import dataclass

import gmpy2
from gmpy2 import mpz

from tss.cggmp24.errors import BadInputError
from tss.cggmp24.paillier import PaillierSecretKey, sample_unit
from tss.cggmp24.params import M
from tss.cggmp24.proof_codec import Reader, Writer
from tss.cggmp24.transcript import Transcript
from tss.cggmp24.zk_checks import fail, is_int, need_count, need_int, need_proof, need_unit

PROTOCOL = "pi_mod"


@dataclass(frozen=True)
class ModProof:
    w: int
    x: tuple[int, ...]
    a: tuple[int, ...]
    b: tuple[int, ...]
    z: tuple[int, ...]

    def to_bytes(self) -> bytes:
        wr = Writer().integer(self.w)
        for i in range(len(self.x)):
            wr.integer(self.x[i]).bit(self.a[i]).bit(self.b[i]).integer(self.z[i])
        return wr.encode()

    @staticmethod
    def from_bytes(data: bytes, prover: int) -> ModProof:
        r = Reader(data, prover, PROTOCOL)
        w = r.integer()
        xs, as_, bs, zs = [], [], [], []
        for _ in range(M):
            xs.append(r.integer())
            as_.append(r.bit())
            bs.append(r.bit())
            zs.append(r.integer())
        r.done()
        return ModProof(w, tuple(xs), tuple(as_), tuple(bs), tuple(zs))


def challenge(session_id: bytes, prover: int, n: int, w: int) -> list[int]:
    """``ChallengeNI_mod(sid, prover, N, w)``: ``y_1..y_m`` in ``Z_N``."""
    tr = Transcript(PROTOCOL, session_id, prover)
    tr.append_int("N", n)
    tr.append_int("w", w)
    return tr.challenge_ints("y", int(n), M)


def _fourth_root_mod_prime(v: mpz, p: mpz) -> mpz:
    """The principal 4th root of a quadratic residue ``v`` modulo a prime ``p = 3 (mod 4)``."""
    k = (p + 1) // 4
    return gmpy2.powmod(v % p, k * k % (p - 1), p)


def prove(session_id: bytes, prover: int, key: PaillierSecretKey) -> ModProof:
    """``ProveNI_mod((sid, N), (p, q))``."""
    p, q, n = key.p, key.q, key.n
    if p % 4 != 3 or q % 4 != 3:
        raise BadInputError("pi_mod needs primes 3 mod 4")
    while True:
        w = sample_unit(n)
        if gmpy2.jacobi(w, n) == -1:
            break
    ys = challenge(session_id, prover, n, w)
    n_inv_p = gmpy2.invert(n, p - 1)
    n_inv_q = gmpy2.invert(n, q - 1)
    beta = gmpy2.invert(p, q)
    xs, as_, bs, zs = [], [], [], []
    for y in ys:
        yz = mpz(y)
        if gmpy2.gcd(yz, n) != 1:
            raise BadInputError("pi_mod challenge not a unit (probability 2^-1500)")
        found = False
        for a in (0, 1):
            for b in (0, 1):
                v = yz * (w if b else 1) * (-1 if a else 1) % n
                if gmpy2.legendre(v, p) == 1 and gmpy2.legendre(v, q) == 1:
                    found = True
                    break
            if found:
                break
        if not found:
            raise BadInputError("pi_mod: no residue among (-1)^a w^b y: not a Blum modulus")
        xp, xq = _fourth_root_mod_prime(v, p), _fourth_root_mod_prime(v, q)
        xs.append(xp + ((xq - xp) * beta % q) * p)
        zp, zq = gmpy2.powmod(yz % p, n_inv_p, p), gmpy2.powmod(yz % q, n_inv_q, q)
        zs.append(zp + ((zq - zp) * beta % q) * p)
        as_.append(a)
        bs.append(b)
    return ModProof(w, tuple(xs), tuple(as_), tuple(bs), tuple(zs))


def verify(session_id: bytes, prover: int, n: int, proof: ModProof | bytes) -> None:
    """``VerifyNI_mod``; raises ``InvalidProofError(prover, "pi_mod: ...")``."""
    nz = need_int(n, prover, PROTOCOL, "N")
    if nz < 3 or nz % 2 == 0:
        raise fail(prover, PROTOCOL, "N is even")
    if gmpy2.is_prime(nz):
        raise fail(prover, PROTOCOL, "N is prime")
    proof = need_proof(proof, ModProof, ModProof.from_bytes, prover, PROTOCOL)
    w = need_unit(proof.w, nz, prover, PROTOCOL, "w")
    xs = need_count(proof.x, M, prover, PROTOCOL, "x")
    as_ = need_count(proof.a, M, prover, PROTOCOL, "a")
    bs = need_count(proof.b, M, prover, PROTOCOL, "b")
    zs = need_count(proof.z, M, prover, PROTOCOL, "z")
    ys = challenge(session_id, prover, nz, w)
    for i in range(M):
        x = need_int(xs[i], prover, PROTOCOL, f"x[{i}]")
        z = need_int(zs[i], prover, PROTOCOL, f"z[{i}]")
        if not (0 <= x < nz and 0 <= z < nz):
            raise fail(prover, PROTOCOL, f"x or z out of range (iteration {i})")
        a, b = as_[i], bs[i]
        if not (is_int(a) and is_int(b) and a in (0, 1) and b in (0, 1)):
            raise fail(prover, PROTOCOL, f"a or b not a bit (iteration {i})")
        y = mpz(ys[i])
        if gmpy2.powmod(z, nz, nz) != y:
            raise fail(prover, PROTOCOL, f"z^N != y (iteration {i})")
        rhs = y * (w if b else 1) % nz
        if a:
            rhs = (-rhs) % nz
        if gmpy2.powmod(x, 4, nz) != rhs:
            raise fail(prover, PROTOCOL, f"x^4 != (-1)^a w^b y (iteration {i})")


__all__ = ["PROTOCOL", "ModProof", "challenge", "prove", "verify"]
