"""Paillier encryption for CGGMP24 (spec/main.tex, "Paillier Encryption Scheme" and "Using the Chinese
Remainder Theorem"), over gmpy2.

``enc_N(m; rho) = (1 + m N) * rho^N mod N^2``. Plaintexts are signed: ``decrypt`` returns the
representative of ``m mod N`` in ``(-N/2, N/2]`` (``N`` odd, so ``[-(N-1)/2, (N-1)/2]``), which is how the
MtA values of presigning are read back.

Public API (every integer argument may be ``int`` or ``gmpy2.mpz``; results are ``mpz``):

- ``PaillierPublicKey(n)``: ``.n``, ``.nn`` (``N^2``); ``.encrypt(m, rho)``, ``.encrypt_with_nonce(m,
  nonce)``, ``.sample_nonce()`` (a fresh ``PaillierNonce``), ``.add(c1, c2)`` (homomorphic ``C1 (+) C2``),
  ``.mul(k, c)`` (``k (.) C = C^k``, ``k`` signed), ``.is_ciphertext(c)`` (``c`` in ``Z*_{N^2}``).
- ``PaillierSecretKey(p, q)`` (``p``, ``q`` distinct safe primes, or at least primes ``3 mod 4`` for
  Pi^mod): ``.public``, ``.n``, ``.nn``, ``.p``, ``.q``, ``.phi``; ``.encrypt(m, rho)`` and
  ``.sample_nonce()`` with CRT (``rho^N mod N^2`` computed modulo ``p^2`` and ``q^2`` with reduced
  exponents, spec Algorithm "CRT"); ``.decrypt(c)`` (CRT, signed result); ``.pow_mod_nn(b, e)`` and
  ``.pow_mod_n(b, e)`` (CRT exponentiation, ``e`` signed, ``b`` must be a unit).
- ``PaillierNonce``: ``(rho, rho^N mod N^2)`` made ahead of time (off-line) so that an encryption on the
  presigning path costs one multiplication: ``key.encrypt_with_nonce(m, nonce)``. ``repr`` hides it.
- ``precompute_nonces(key, count)``: ``count`` fresh nonces for ``key`` (public or secret; CRT with the
  secret key, about 3x faster).
- ``to_signed(x, n)``, ``in_signed_range(x, bits)`` (``x`` in ``+-2^bits``, i.e.
  ``-2^bits <= x <= 2^bits``), ``sample_signed(bits)`` (uniform in ``+-2^bits``), ``sample_signed_bound(b)``
  (uniform in ``[-b, b]``), ``sample_unit(n)`` (uniform in ``Z*_n``), ``is_unit(x, n)`` (an ``int`` with
  ``0 < x < n`` and ``gcd(x, n) = 1``; ``bool`` and other types are refused).
- Peer validation, raising ``InvalidContributionError(party, check)``: ``check_paillier_modulus(n, party)``
  (an odd ``int`` of at least ``MIN_MODULUS_BITS`` and at most ``MAX_MODULUS_BITS`` bits, not a square),
  ``check_ciphertext(key, c, party, what)`` (``c``
  in ``Z*_{N^2}``: ``0 < c < N^2`` and ``gcd(c, N) = 1``).
- ``paillier_key_from_primes(p, q)``: a ``PaillierSecretKey`` after checking ``p != q`` and that the modulus
  has at least ``MIN_MODULUS_BITS`` bits (``BadInputError`` otherwise).

Nothing here does I/O; randomness comes from ``secrets``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import gmpy2
from gmpy2 import mpz

from tss.cggmp24.errors import BadInputError, InvalidContributionError
from tss.cggmp24.params import MIN_MODULUS_BITS

MAX_MODULUS_BITS = 8192
"""The longest peer modulus (Paillier or ring-Pedersen) accepted: not in the specification, a guard against
a peer making every later exponentiation arbitrarily slow (ours are 3072 bits)."""

_MPZ = type(mpz(0))


def _is_int(x: object) -> bool:
    return (isinstance(x, int) and not isinstance(x, bool)) or isinstance(x, _MPZ)


def is_unit(x: object, n: int) -> bool:
    """``x`` is an integer in ``Z*_n``: ``0 < x < n`` and ``gcd(x, n) == 1``."""
    if not _is_int(x):
        return False
    xi = mpz(x)
    return bool(0 < xi < n) and gmpy2.gcd(xi, n) == 1


def to_signed(x: int, n: int) -> mpz:
    """The representative of ``x mod n`` in ``(-n/2, n/2]``."""
    r = mpz(x) % n
    return r - n if r > n // 2 else r


def in_signed_range(x: object, bits: int) -> bool:
    """``x`` is an integer in ``+-2^bits`` (``-2^bits <= x <= 2^bits``)."""
    if not _is_int(x):
        return False
    return bool(abs(mpz(x)) <= (mpz(1) << bits))


def in_signed_bound(x: object, bound: int) -> bool:
    """``x`` is an integer with ``|x| <= bound``."""
    if not _is_int(x):
        return False
    return bool(abs(mpz(x)) <= bound)


def sample_signed_bound(bound: int) -> mpz:
    """Uniform in ``[-bound, bound]``."""
    return mpz(secrets.randbelow(2 * int(bound) + 1)) - bound


def sample_signed(bits: int) -> mpz:
    """Uniform in ``+-2^bits``."""
    return sample_signed_bound(1 << bits)


def sample_unit(n: int) -> mpz:
    """Uniform in ``Z*_n``."""
    n = mpz(n)
    while True:
        x = mpz(secrets.randbelow(int(n)))
        if x > 0 and gmpy2.gcd(x, n) == 1:
            return x


def _pow_reduced(b: mpz, e: mpz, mod: mpz, order: mpz) -> mpz:
    """``b^e mod mod`` for a unit ``b`` whose order divides ``order``: a negative exponent inverts the base,
    an exponent longer than ``order`` is reduced (a short one is not: reducing would lengthen it)."""
    if e < 0:
        b, e = gmpy2.invert(b, mod), -e
    if e.bit_length() > order.bit_length():
        e = e % order
    return gmpy2.powmod(b, e, mod)


@dataclass(frozen=True)
class PaillierNonce:
    """Encryption randomness ``rho`` and ``rho^N mod N^2``, made ahead of time. Secret: never logged."""

    rho: mpz = field(repr=False)
    rho_n: mpz = field(repr=False)


class PaillierPublicKey:
    """A Paillier public key ``N`` (validated by the caller: ``check_paillier_modulus`` and Pi^mod/Pi^fac)."""

    __slots__ = ("half", "n", "nn")

    def __init__(self, n: int) -> None:
        if not _is_int(n) or n < 3 or n % 2 == 0:
            raise BadInputError("a Paillier modulus is an odd integer")
        self.n = mpz(n)
        self.nn = self.n * self.n
        self.half = self.n // 2

    def __repr__(self) -> str:
        return f"PaillierPublicKey(bits={self.n.bit_length()})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PaillierPublicKey) and other.n == self.n

    def __hash__(self) -> int:
        return hash(("paillier", int(self.n)))

    def _pad(self, m: int) -> mpz:
        """``(1 + N)^m = 1 + (m mod N) N mod N^2``."""
        return 1 + (mpz(m) % self.n) * self.n

    def rho_to_n(self, rho: int) -> mpz:
        return gmpy2.powmod(mpz(rho), self.n, self.nn)

    def encrypt(self, m: int, rho: int) -> mpz:
        """``enc_N(m; rho)``, ``m`` signed, ``rho`` in ``Z*_N``."""
        return self._pad(m) * self.rho_to_n(rho) % self.nn

    def sample_nonce(self) -> PaillierNonce:
        rho = sample_unit(self.n)
        return PaillierNonce(rho, self.rho_to_n(rho))

    def encrypt_with_nonce(self, m: int, nonce: PaillierNonce) -> mpz:
        return self._pad(m) * nonce.rho_n % self.nn

    def add(self, c1: int, c2: int) -> mpz:
        return mpz(c1) * c2 % self.nn

    def mul(self, k: int, c: int) -> mpz:
        """``k (.) C = C^k mod N^2``; a negative ``k`` inverts ``C`` (a unit: check it first)."""
        return gmpy2.powmod(mpz(c), mpz(k), self.nn)

    def is_ciphertext(self, c: object) -> bool:
        return is_unit(c, self.nn)


class PaillierSecretKey:
    """A Paillier key with its factors ``p``, ``q``: CRT encryption, CRT decryption, CRT exponentiation."""

    __slots__ = (
        "_beta_n",
        "_beta_nn",
        "_hp",
        "_hq",
        "_phi_p2",
        "_phi_q2",
        "p",
        "p2",
        "phi",
        "public",
        "q",
        "q2",
    )

    def __init__(self, p: int, q: int) -> None:
        if not (_is_int(p) and _is_int(q)) or p == q or p < 3 or q < 3:
            raise BadInputError("Paillier factors are two distinct primes")
        self.p = mpz(p)
        self.q = mpz(q)
        self.public = PaillierPublicKey(self.p * self.q)
        self.phi = (self.p - 1) * (self.q - 1)
        self.p2 = self.p * self.p
        self.q2 = self.q * self.q
        self._phi_p2 = self.p * (self.p - 1)
        self._phi_q2 = self.q * (self.q - 1)
        self._beta_nn = gmpy2.invert(self.p2, self.q2)
        self._beta_n = gmpy2.invert(self.p, self.q)
        # L_p((1 + N)^(p-1) mod p^2) = (p - 1) q mod p = -q mod p; h_p is its inverse (likewise h_q).
        self._hp = gmpy2.invert(-self.q % self.p, self.p)
        self._hq = gmpy2.invert(-self.p % self.q, self.q)

    def __repr__(self) -> str:
        return f"PaillierSecretKey(bits={self.n.bit_length()})"

    @property
    def n(self) -> mpz:
        return self.public.n

    @property
    def nn(self) -> mpz:
        return self.public.nn

    def pow_mod_nn(self, base: int, exp: int) -> mpz:
        """``base^exp mod N^2`` by CRT; ``base`` a unit mod ``N^2``, ``exp`` any integer."""
        b, e = mpz(base), mpz(exp)
        r1 = _pow_reduced(b % self.p2, e, self.p2, self._phi_p2)
        r2 = _pow_reduced(b % self.q2, e, self.q2, self._phi_q2)
        return r1 + ((r2 - r1) * self._beta_nn % self.q2) * self.p2

    def pow_mod_n(self, base: int, exp: int) -> mpz:
        """``base^exp mod N`` by CRT; ``base`` a unit mod ``N``, ``exp`` any integer."""
        b, e = mpz(base), mpz(exp)
        r1 = _pow_reduced(b % self.p, e, self.p, self.p - 1)
        r2 = _pow_reduced(b % self.q, e, self.q, self.q - 1)
        return r1 + ((r2 - r1) * self._beta_n % self.q) * self.p

    def rho_to_n(self, rho: int) -> mpz:
        return self.pow_mod_nn(rho, self.n)

    def encrypt(self, m: int, rho: int) -> mpz:
        """``enc^crt_sk(m; rho)``."""
        return self.public._pad(m) * self.rho_to_n(rho) % self.nn

    def sample_nonce(self) -> PaillierNonce:
        rho = sample_unit(self.n)
        return PaillierNonce(rho, self.rho_to_n(rho))

    def encrypt_with_nonce(self, m: int, nonce: PaillierNonce) -> mpz:
        return self.public.encrypt_with_nonce(m, nonce)

    def decrypt_unsigned(self, c: int) -> mpz:
        """``dec(c)`` in ``[0, N)``; ``c`` must be in ``Z*_{N^2}`` (check peers' ciphertexts first)."""
        cz = mpz(c)
        if not is_unit(cz, self.nn):
            raise BadInputError("ciphertext not in Z*_{N^2}")
        cp = gmpy2.powmod(cz % self.p2, self.p - 1, self.p2)
        cq = gmpy2.powmod(cz % self.q2, self.q - 1, self.q2)
        mp = ((cp - 1) // self.p) * self._hp % self.p
        mq = ((cq - 1) // self.q) * self._hq % self.q
        return mp + ((mq - mp) * self._beta_n % self.q) * self.p

    def decrypt(self, c: int) -> mpz:
        """``dec(c)`` as a signed plaintext in ``(-N/2, N/2]``."""
        return to_signed(self.decrypt_unsigned(c), self.n)


def precompute_nonces(key: PaillierPublicKey | PaillierSecretKey, count: int) -> list[PaillierNonce]:
    """``count`` fresh encryption nonces ``(rho, rho^N mod N^2)`` for ``key`` (CRT if it is a secret key)."""
    return [key.sample_nonce() for _ in range(count)]


def paillier_key_from_primes(p: int, q: int) -> PaillierSecretKey:
    """Our own Paillier key from two fresh safe primes (``BadInputError`` if they are equal or too short)."""
    if p == q:
        raise BadInputError("the two Paillier primes are equal")
    sk = PaillierSecretKey(p, q)
    if sk.n.bit_length() < MIN_MODULUS_BITS:
        raise BadInputError("Paillier modulus shorter than MIN_MODULUS_BITS")
    return sk


def check_paillier_modulus(n: object, party: int) -> PaillierPublicKey:
    """A peer's Paillier modulus: an odd integer of at least ``MIN_MODULUS_BITS`` bits (its well-formedness
    is proven by Pi^mod and Pi^fac). Returns the public key."""
    if not _is_int(n):
        raise InvalidContributionError(party, "paillier: modulus is not an integer")
    nz = mpz(n)
    if nz.bit_length() < MIN_MODULUS_BITS:
        raise InvalidContributionError(party, "paillier: modulus too short")
    if nz.bit_length() > MAX_MODULUS_BITS:
        raise InvalidContributionError(party, "paillier: modulus too long")
    if nz % 2 == 0:
        raise InvalidContributionError(party, "paillier: modulus is even")
    if gmpy2.is_square(nz):
        raise InvalidContributionError(party, "paillier: modulus is a perfect square")
    return PaillierPublicKey(nz)


def check_ciphertext(key: PaillierPublicKey, c: object, party: int, what: str) -> mpz:
    """A ciphertext from ``party`` under ``key``: in ``Z*_{N^2}`` (else ``InvalidContributionError``)."""
    if not key.is_ciphertext(c):
        raise InvalidContributionError(party, f"paillier: {what} not in Z*_N^2")
    return mpz(c)


__all__ = [
    "MAX_MODULUS_BITS",
    "PaillierNonce",
    "PaillierPublicKey",
    "PaillierSecretKey",
    "check_ciphertext",
    "check_paillier_modulus",
    "in_signed_bound",
    "in_signed_range",
    "is_unit",
    "paillier_key_from_primes",
    "precompute_nonces",
    "sample_signed",
    "sample_signed_bound",
    "sample_unit",
    "to_signed",
]
