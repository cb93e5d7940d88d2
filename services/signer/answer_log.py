"""A signer's kept answers to signing attempts: the partial signatures (or the refusal) it published for
each session, so a redelivered attempt gets exactly the same answer and never needs a nonce twice.

On disk: records appended to ``<node dir>/answers.log``, and the previous generation in
``answers.old.log``. Not synced, on purpose: losing the last answers in an OS crash only means that a
redelivered attempt finds its nonces used, is refused, and consensus retries with fresh ones. Once
``answers.log`` passes ``max_bytes`` it becomes ``answers.old.log`` (the generation before is dropped),
so at least ``max_bytes`` of answers are always kept (a few minutes of full load, days of normal use;
redeliveries come within seconds) while disk and memory stay bounded. Both generations are also held in
memory, by session id.

One open file and one ``write`` per batch of answers: creating a file per answer (the earlier layout)
cost more CPU in the kernel than signing, under load.

A record is a 4-byte big-endian length and a msgpack ``[kind, answer]``. A crash can leave a torn last
record; reading stops there and the file is cut back to the last whole record, so later appends follow
a whole one.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from schemas.messages import PartialSignatures, SigningRefused

Answer = PartialSignatures | SigningRefused
MAX_BYTES = 8 << 20  # one generation (about 25,000 answers of one input)


class _Record(msgspec.Struct, array_like=True):
    kind: str  # "psig" | "refused"
    answer: bytes  # the msgpack of the PartialSignatures or SigningRefused


_DECODER = msgspec.msgpack.Decoder(_Record)


def _encode(answer: Answer) -> bytes:
    kind = "psig" if isinstance(answer, PartialSignatures) else "refused"
    body = msgspec.msgpack.encode(_Record(kind, msgspec.msgpack.encode(answer)))
    return len(body).to_bytes(4, "big") + body


def _decode(rec: _Record) -> Answer:
    if rec.kind == "psig":
        return msgspec.msgpack.decode(rec.answer, type=PartialSignatures)
    if rec.kind == "refused":
        return msgspec.msgpack.decode(rec.answer, type=SigningRefused)
    raise ValueError(f"unknown answer kind {rec.kind!r}")


def _read(path: Path) -> tuple[dict[str, Answer], int]:
    """The answers in ``path`` and the length of its whole records."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, 0
    out: dict[str, Answer] = {}
    pos = 0
    while pos + 4 <= len(raw):
        size = int.from_bytes(raw[pos : pos + 4], "big")
        end = pos + 4 + size
        if end > len(raw):
            break
        try:
            answer = _decode(_DECODER.decode(raw[pos + 4 : end]))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError):
            break
        out[answer.session_id] = answer
        pos = end
    return out, pos


class AnswerLog:
    def __init__(self, root: Path, max_bytes: int = MAX_BYTES) -> None:
        self.path = root / "answers.log"
        self.old_path = root / "answers.old.log"
        self.max_bytes = max_bytes
        self._old, _ = _read(self.old_path)
        self._cur, whole = _read(self.path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self._fd, whole)  # a torn tail from a crash goes
        os.lseek(self._fd, whole, os.SEEK_SET)
        self._size = whole

    def get(self, session_id: str) -> Answer | None:
        return self._cur.get(session_id) or self._old.get(session_id)

    def add(self, answers: list[Answer]) -> None:
        if not answers:
            return
        data = b"".join(_encode(a) for a in answers)
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)
        for a in answers:
            self._cur[a.session_id] = a
        if self._size >= self.max_bytes:
            self._rotate()

    def _rotate(self) -> None:
        os.close(self._fd)
        os.replace(self.path, self.old_path)
        self._old, self._cur = self._cur, {}
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._size = 0

    def __len__(self) -> int:
        return len(self._cur.keys() | self._old.keys())

    def close(self) -> None:
        os.close(self._fd)
