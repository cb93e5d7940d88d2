"""A signer node's pooled FROST secret nonces in one preallocated file of fixed-size slots.

One nonce per 128-byte slot in ``nodes/<node>/nonces.slots`` (0600); slots start at multiples of 128, so
none crosses a 512-byte sector. A slot (format 1)::

    off  len
      0    1  marker: 0 free, 1 holds a nonce
      1    1  id length L (1..24)
      2   24  nonce id, UTF-8, zero-padded
     26    8  creation time, ms since the epoch, big-endian (for the sweep)
     34   12  AEAD nonce
     46   80  ChaCha20-Poly1305(kek, secnonce (64 bytes), aad) with its 16-byte tag
    126    2  zero

The AAD is ``mpcw/<node>/nonce/<id>/slot/<index>/<created ms>``: a record copied to another slot, name or
node (or with its time changed) does not decrypt.

Durability, which is the point of the layout:

- The file only grows, a chunk of 4096 slots at a time, by *writing* zeros and fsyncing once. Blocks are
  then allocated and written, so later writes inside the file change no metadata that ``fdatasync``
  has to commit (no size change, no unwritten extent to convert; only timestamps, which it skips): in
  the steady state a take waits for its data, not for a filesystem journal commit.
- Saving a fresh nonce is one ``pwrite`` into a free slot, not synced: losing a fresh nonce in a crash is
  harmless (its attempt is refused and retried with another).
- Taking nonces reads and decrypts each slot, overwrites it with zeros, then ONE ``fdatasync`` for the
  batch, and only then returns the secrets: after a crash a returned nonce is gone for good. A slot only
  partly zeroed fails its tag (or no longer parses as a record) and is never usable again.
- A slot goes back on the free list only after its erase was synced, and leaves it only to be written by
  a save, so a save never lands on a slot a take or sweep is erasing.

On open the file is scanned (headers only, nothing decrypted) to rebuild the index id -> slot and the
free list. An id found in two slots (which saving never produces) is erased in both: which copy was
taken could not be told. Not thread-safe: meant for one asyncio thread, callers serialise take and sweep
against each other; and only one process may change a node's file (its signer): another opening it
(a test reading it, say) must not save, take or sweep.
"""

from __future__ import annotations

import heapq
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

SLOT_SIZE = 128
CHUNK_SLOTS = 4096  # the file grows by this many slots (512 KiB) at a time
MAX_ID_LEN = 24  # bytes of UTF-8; ids are `<12 hex>-<k>`
SECNONCE_LEN = 64  # BIP-445 secnonce: k1 || k2

_MARKER_USED = 1
_ID_OFF = 2
_CREATED_OFF = _ID_OFF + MAX_ID_LEN
_NONCE_OFF = _CREATED_OFF + 8
_CT_OFF = _NONCE_OFF + 12
_CT_LEN = SECNONCE_LEN + 16
_RECORD_LEN = _CT_OFF + _CT_LEN
_ZERO_SLOT = bytes(SLOT_SIZE)

assert _RECORD_LEN <= SLOT_SIZE and 512 % SLOT_SIZE == 0


class DuplicateNonce(Exception):
    """A nonce with this id is already stored."""


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class NonceSlots:
    """The slot file of one node. ``check_name`` validates an id (raises ValueError); ids longer than
    :data:`MAX_ID_LEN` bytes are refused here as well."""

    def __init__(
        self, path: Path, aead: ChaCha20Poly1305, node: str, *, check_name: Callable[[str], None]
    ) -> None:
        self.path = Path(path)
        self.node = node
        self._aead = aead
        self._check_name = check_name
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        try:
            os.fchmod(fd, 0o600)
            if created:
                fsync_dir(self.path.parent)
            self._index: dict[str, tuple[int, int]] = {}  # id -> (slot, created ms)
            self._free: list[int] = []  # a heap: the lowest free slot is used first
            self._nslots = 0
            self._scan()
        except BaseException:
            self._file.close()
            raise

    @property
    def _fd(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        self._file.close()

    # -- queries -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, nonce_id: str) -> bool:
        self._check_id(nonce_id)
        return nonce_id in self._index

    def ids(self) -> list[str]:
        """The ids of the stored nonces (public data), in slot order."""
        return [nid for nid, _ in sorted(self._index.items(), key=lambda kv: kv[1][0])]

    def _peek(self, nonce_id: str) -> bytearray | None:
        """For tests only (the e2e secret scan): decrypt a stored nonce WITHOUT taking it."""
        hit = self._index.get(nonce_id)
        return None if hit is None else self._read(hit[0], nonce_id, hit[1])

    # -- changes -------------------------------------------------------------------------------------
    def save(self, nonce_id: str, secnonce: bytes, created_ms: int | None = None) -> None:
        """Write a fresh nonce into a free slot (one pwrite, not synced: see the module docstring)."""
        self._check_id(nonce_id)
        if len(secnonce) != SECNONCE_LEN:
            raise ValueError(f"a secret nonce is {SECNONCE_LEN} bytes")
        if nonce_id in self._index:
            raise DuplicateNonce(f"nonce {nonce_id!r} already exists")
        created = int(time.time() * 1000) if created_ms is None else created_ms
        slot = self._alloc()
        try:
            self._pwrite(self._record(slot, nonce_id, created, bytes(secnonce)), slot)
        except BaseException:
            heapq.heappush(self._free, slot)  # nothing indexed points at it: the next save overwrites it
            raise
        self._index[nonce_id] = (slot, created)

    def take(self, nonce_ids: Iterable[str]) -> dict[str, bytearray | None]:
        """Read, erase and (one fdatasync for the batch) irrevocably remove these nonces, then return
        them. An unknown, already taken or undecryptable id maps to None; a repeated id is taken once.
        If the erase cannot be synced the error propagates and nothing is returned."""
        ids = list(nonce_ids)
        for nid in ids:
            self._check_id(nid)
        out: dict[str, bytearray | None] = {}
        erased: list[int] = []
        try:
            for nid in ids:
                if nid in out:
                    continue
                hit = self._index.pop(nid, None)
                if hit is None:
                    out[nid] = None
                    continue
                slot, created = hit
                out[nid] = self._read(slot, nid, created)
                self._pwrite(_ZERO_SLOT, slot)
                erased.append(slot)
            if erased:
                os.fdatasync(self._fd)
        except BaseException:
            for got in out.values():  # not durably erased: never handed out (the slots stay leaked
                if got is not None:  # until a restart rescans them, still unused)
                    got[:] = bytes(len(got))
            raise
        for slot in erased:
            heapq.heappush(self._free, slot)
        return out

    def sweep(self, older_than_s: float) -> int:
        """Erase (one fdatasync) the nonces created more than ``older_than_s`` ago; how many."""
        limit_ms = int((time.time() - older_than_s) * 1000)
        old = [(nid, slot) for nid, (slot, created) in self._index.items() if created < limit_ms]
        for nid, slot in old:
            del self._index[nid]
            self._pwrite(_ZERO_SLOT, slot)
        if old:
            os.fdatasync(self._fd)
        for _, slot in old:
            heapq.heappush(self._free, slot)
        return len(old)

    def sync(self) -> None:
        """fdatasync the slot file (saves are not synced on their own)."""
        os.fdatasync(self._fd)

    # -- internals -----------------------------------------------------------------------------------
    def _check_id(self, nonce_id: str) -> None:
        self._check_name(nonce_id)
        if len(nonce_id.encode()) > MAX_ID_LEN:
            raise ValueError(f"nonce id longer than {MAX_ID_LEN} bytes: {nonce_id[:40]!r}")

    def _aad(self, nonce_id: str, slot: int, created_ms: int) -> bytes:
        return f"mpcw/{self.node}/nonce/{nonce_id}/slot/{slot}/{created_ms}".encode()

    def _record(self, slot: int, nonce_id: str, created_ms: int, secnonce: bytes) -> bytes:
        raw_id = nonce_id.encode()
        nonce = secrets.token_bytes(12)
        ct = self._aead.encrypt(nonce, secnonce, self._aad(nonce_id, slot, created_ms))
        rec = (
            bytes([_MARKER_USED, len(raw_id)])
            + raw_id.ljust(MAX_ID_LEN, b"\0")
            + created_ms.to_bytes(8, "big")
            + nonce
            + ct
        )
        return rec.ljust(SLOT_SIZE, b"\0")

    def _parse_header(self, raw: bytes) -> tuple[str, int] | None:
        """(id, created ms) of a slot that claims to hold a nonce; None for a free or malformed one."""
        if len(raw) < SLOT_SIZE or raw[0] != _MARKER_USED or not 1 <= raw[1] <= MAX_ID_LEN:
            return None
        raw_id = raw[_ID_OFF : _ID_OFF + raw[1]]
        try:
            nonce_id = raw_id.decode()
            self._check_id(nonce_id)
        except ValueError:  # UnicodeDecodeError is one
            return None
        return nonce_id, int.from_bytes(raw[_CREATED_OFF:_NONCE_OFF], "big")

    def _read(self, slot: int, nonce_id: str, created_ms: int) -> bytearray | None:
        """Decrypt a slot's nonce without erasing it; None unless the slot holds exactly this record."""
        raw = os.pread(self._fd, SLOT_SIZE, slot * SLOT_SIZE)
        if self._parse_header(raw) != (nonce_id, created_ms):
            return None
        try:  # the ciphertext has a fixed length, so a plaintext that decrypts is SECNONCE_LEN bytes
            return bytearray(
                self._aead.decrypt(
                    raw[_NONCE_OFF:_CT_OFF], raw[_CT_OFF:_RECORD_LEN], self._aad(nonce_id, slot, created_ms)
                )
            )
        except InvalidTag:
            return None

    def _pwrite(self, data: bytes, slot: int) -> None:
        if os.pwrite(self._fd, data, slot * SLOT_SIZE) != len(data):
            raise OSError(f"short write to {self.path}")

    def _alloc(self) -> int:
        if not self._free:
            self._grow()
        return heapq.heappop(self._free)

    def _grow(self) -> None:
        """Append a chunk of zeroed slots, written (not a hole, not fallocated) and fsynced (the size
        changes, so this one is a full fsync). A torn tail from a crash mid-growth is overwritten."""
        first = self._nslots
        zeros = bytes(CHUNK_SLOTS * SLOT_SIZE)
        if os.pwrite(self._fd, zeros, first * SLOT_SIZE) != len(zeros):
            raise OSError(f"short write growing {self.path}")
        os.fsync(self._fd)
        self._nslots = first + CHUNK_SLOTS
        for slot in range(first, self._nslots):
            heapq.heappush(self._free, slot)

    def _scan(self) -> None:
        size = os.fstat(self._fd).st_size
        self._nslots = size // SLOT_SIZE
        seen: dict[str, list[int]] = {}
        index: dict[str, tuple[int, int]] = {}
        free: list[int] = []
        step = CHUNK_SLOTS * SLOT_SIZE
        for start in range(0, self._nslots * SLOT_SIZE, step):
            block = os.pread(self._fd, min(step, self._nslots * SLOT_SIZE - start), start)
            for off in range(0, len(block), SLOT_SIZE):
                slot = (start + off) // SLOT_SIZE
                head = self._parse_header(block[off : off + SLOT_SIZE])
                if head is None:
                    free.append(slot)  # free, or garbage that can never decrypt: the next save overwrites it
                    continue
                nonce_id, created = head
                seen.setdefault(nonce_id, []).append(slot)
                index[nonce_id] = (slot, created)
        twice = [slot for slots in seen.values() if len(slots) > 1 for slot in slots]
        if twice:
            for slot in twice:
                self._pwrite(_ZERO_SLOT, slot)
            os.fdatasync(self._fd)
            for nonce_id, slots in seen.items():
                if len(slots) > 1:
                    del index[nonce_id]
            free.extend(twice)
        heapq.heapify(free)
        self._index, self._free = index, free
