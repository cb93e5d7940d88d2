"""The canonical byte encoding of the Paillier-side CGGMP24 proofs (Pi^prm, Pi^mod, Pi^fac, Pi^enc-elg,
Pi^aff-g).

A proof is a fixed sequence of fields; each field is one of

- a signed integer: ``sign (1 byte: 0x00 non-negative, 0x01 negative) || len (2 bytes) || magnitude``,
  the magnitude big-endian and minimal (no leading zero byte; zero has length 0 and sign 0x00), at most
  ``MAX_INT_BYTES`` bytes;
- a point: its 33-byte compressed encoding;
- a bit: one byte, 0x00 or 0x01.

The encoding is canonical (one byte string per value: ``to_bytes(from_bytes(b)) == b``); the decoder
rejects anything else (a non-minimal length, negative zero, an oversized integer, trailing or missing
bytes) with ``InvalidProofError(prover, "<protocol>: malformed encoding (...)")``, never another exception.
"""

from __future__ import annotations

from gmpy2 import mpz

from tss.cggmp24.errors import InvalidProofError

MAX_INT_BYTES = 2048  # 16384 bits: above every field of every proof here
POINT_LEN = 33


class Writer:
    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def integer(self, x: int) -> Writer:
        xi = int(x)
        mag = abs(xi)
        raw = mag.to_bytes((mag.bit_length() + 7) // 8, "big")
        if len(raw) > MAX_INT_BYTES:
            raise ValueError("integer too large for the proof encoding")
        self._parts.append(bytes([1 if xi < 0 else 0]) + len(raw).to_bytes(2, "big") + raw)
        return self

    def integers(self, xs: tuple[int, ...] | list[int]) -> Writer:
        for x in xs:
            self.integer(x)
        return self

    def point(self, p: bytes) -> Writer:
        if len(p) != POINT_LEN:
            raise ValueError("a point is encoded in 33 bytes")
        self._parts.append(bytes(p))
        return self

    def bit(self, b: int) -> Writer:
        if b not in (0, 1):
            raise ValueError("a bit is 0 or 1")
        self._parts.append(bytes([b]))
        return self

    def encode(self) -> bytes:
        return b"".join(self._parts)


class Reader:
    __slots__ = ("_data", "_pos", "_protocol", "_prover")

    def __init__(self, data: object, prover: int, protocol: str) -> None:
        self._prover = prover
        self._protocol = protocol
        if not isinstance(data, bytes | bytearray | memoryview):
            self._fail("not bytes")
        self._data = bytes(data) if isinstance(data, bytes | bytearray | memoryview) else b""
        self._pos = 0

    def _fail(self, why: str) -> None:
        raise InvalidProofError(self._prover, f"{self._protocol}: malformed encoding ({why})")

    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._data):
            self._fail("truncated")
        out: bytes = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def integer(self) -> mpz:
        head = self._take(3)
        sign, length = head[0], int.from_bytes(head[1:3], "big")
        if sign not in (0, 1):
            self._fail("bad sign byte")
        if length > MAX_INT_BYTES:
            self._fail("integer too long")
        raw = self._take(length)
        if length and raw[0] == 0:
            self._fail("non-minimal integer")
        if sign == 1 and length == 0:
            self._fail("negative zero")
        v = mpz(int.from_bytes(raw, "big"))
        return -v if sign else v

    def integers(self, count: int) -> tuple[mpz, ...]:
        return tuple(self.integer() for _ in range(count))

    def point(self) -> bytes:
        return self._take(POINT_LEN)

    def bit(self) -> int:
        b = self._take(1)[0]
        if b not in (0, 1):
            self._fail("bad bit")
        return b

    def done(self) -> None:
        if self._pos != len(self._data):
            self._fail("trailing bytes")


__all__ = ["MAX_INT_BYTES", "POINT_LEN", "Reader", "Writer"]
