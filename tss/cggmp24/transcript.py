"""The Fiat-Shamir transcript of every CGGMP24 proof: one injective, domain-separated encoding.

A proof's challenge is derived from everything the verifier must agree on: the protocol (``"pi_aff_g"``,
``"pi_mod"``, ...), the session id, the prover's index, every public input and every first-message value,
in the order the proof appends them. TSSHOCK (2023) broke libraries whose transcripts were ambiguous
(``"1" || "23"`` equal to ``"12" || "3"``) or left the session or prover out; here every item is written as

    kind (1 byte) || len(label) (2 bytes) || label || len(value) (4 bytes) || value

after a fixed domain tag and the three binding values, so two different sequences of appends can never
produce the same byte string. Integers carry their sign (``0x00`` non-negative, ``0x01`` negative) before
their magnitude, so ``-x`` and ``x`` differ.

Challenges are read with SHAKE-256 over the transcript so far plus a label and a counter; an integer
challenge in ``[0, bound)`` is drawn by rejection sampling (uniform, no modulo bias). Drawing a challenge
does not change the transcript: draw several with different labels, or append more and draw again.
"""

from __future__ import annotations

import hashlib

DOMAIN = b"mpcw/cggmp24/transcript/v1"

_KIND_BYTES = 0x01
_KIND_INT = 0x02
_KIND_POINT = 0x03
_KIND_STR = 0x04
_KIND_CHALLENGE = 0x7F


def _item(kind: int, label: str, value: bytes) -> bytes:
    lab = label.encode()
    if len(lab) > 0xFFFF:
        raise ValueError("transcript label too long")
    if len(value) > 0xFFFFFFFF:
        raise ValueError("transcript value too long")
    return bytes([kind]) + len(lab).to_bytes(2, "big") + lab + len(value).to_bytes(4, "big") + value


def encode_int(x: int) -> bytes:
    """Sign byte then big-endian magnitude (minimal length; zero is the sign byte alone)."""
    mag = abs(int(x))
    return bytes([1 if x < 0 else 0]) + mag.to_bytes((mag.bit_length() + 7) // 8, "big")


class Transcript:
    """An append-only transcript bound to ``(protocol, session_id, prover)``.

    ``protocol`` names the proof or protocol step (the figure's name, e.g. ``"pi_mod"``); ``session_id``
    is the protocol session's identifier (including the joint randomness where the specification binds
    it, e.g. ``sid || rho``); ``prover`` is the index of the party that proves.
    """

    __slots__ = ("_h",)

    def __init__(self, protocol: str, session_id: bytes, prover: int) -> None:
        self._h = hashlib.sha256()  # running hash of the encoded items (the encoding is injective)
        self._h.update(_item(_KIND_STR, "domain", DOMAIN))
        self._h.update(_item(_KIND_STR, "protocol", protocol.encode()))
        self._h.update(_item(_KIND_BYTES, "session_id", bytes(session_id)))
        self._h.update(_item(_KIND_INT, "prover", encode_int(prover)))

    def copy(self) -> Transcript:
        t = Transcript.__new__(Transcript)
        t._h = self._h.copy()
        return t

    def append_bytes(self, label: str, value: bytes) -> None:
        self._h.update(_item(_KIND_BYTES, label, bytes(value)))

    def append_int(self, label: str, value: int) -> None:
        self._h.update(_item(_KIND_INT, label, encode_int(value)))

    def append_ints(self, label: str, values: list[int] | tuple[int, ...]) -> None:
        """A list of integers, its length bound too."""
        self.append_int(f"{label}#len", len(values))
        for i, v in enumerate(values):
            self.append_int(f"{label}[{i}]", v)

    def append_point(self, label: str, point_bytes: bytes) -> None:
        """A curve point in its 33-byte compressed encoding (infinity as 33 zero bytes)."""
        if len(point_bytes) != 33:
            raise ValueError("a point is appended in its 33-byte encoding")
        self._h.update(_item(_KIND_POINT, label, bytes(point_bytes)))

    # ---- challenges ---------------------------------------------------------------------------------

    def _stream(self, label: str, nbytes: int, counter: int) -> bytes:
        seed = self._h.copy()
        seed.update(_item(_KIND_CHALLENGE, label, counter.to_bytes(4, "big")))
        return hashlib.shake_256(seed.digest()).digest(nbytes)

    def challenge_int(self, label: str, bound: int) -> int:
        """A uniform integer in ``[0, bound)``, ``bound >= 1``."""
        if bound < 1:
            raise ValueError("challenge bound must be positive")
        bits = (bound - 1).bit_length()
        nbytes = (bits + 7) // 8 + 1
        mask = (1 << bits) - 1
        for counter in range(1 << 16):
            x = int.from_bytes(self._stream(label, nbytes, counter), "big") & mask
            if x < bound:
                return x
        raise AssertionError("rejection sampling did not terminate")  # probability < 2^-65536

    def challenge_signed(self, label: str, bound: int) -> int:
        """A uniform integer in ``[-bound, bound]`` (the specification's challenges ``e <- +-q``)."""
        return self.challenge_int(label, 2 * bound + 1) - bound

    def challenge_ints(self, label: str, bound: int, count: int) -> list[int]:
        """``count`` independent uniform integers in ``[0, bound)`` (e.g. Pi^mod's ``y_i`` in Z_N)."""
        return [self.challenge_int(f"{label}[{i}]", bound) for i in range(count)]

    def challenge_bits(self, label: str, count: int) -> list[int]:
        """``count`` independent challenge bits (binary-challenge proofs such as Pi^prm)."""
        raw = self._stream(label, (count + 7) // 8, 0)
        return [(raw[i // 8] >> (i % 8)) & 1 for i in range(count)]
