"""A signer process's pooled FROST secret nonces in one preallocated file of fixed-size slots, encrypted
under a key that exists only in that process's memory.

A pooled nonce lives exactly as long as the signer process that made it. The process generates a random
ChaCha20-Poly1305 key when it opens the store and never writes it anywhere, so when the process ends
every nonce it pooled becomes undecryptable, and a copy of the file (a backup, a snapshot, an old file
put back) is useless: it can never release a nonce a second time. On open, the file is locked (``flock``,
exclusive: a second process opening a node's store is refused with :class:`NonceStoreBusy`) and every
slot an earlier process left is overwritten with zeros before anything else happens.

Why not a durable erase alone (the previous design): the only record that a nonce was used was its erased
slot, so restoring an older copy of the file brought used secret nonces back, and a coordinator knowing
an old nonce id could get a second partial signature with it (BIP-445: two signatures with one nonce
reveal the share).

One nonce per 128-byte slot in ``nodes/<node>/nonces.slots`` (0600); slots start at multiples of 128. A
slot::

    off  len
      0    1  marker: 0 free, 1 holds a nonce
      1    1  id length L (1..24)
      2   24  nonce id, UTF-8, zero-padded
     26    8  creation time, ms since the epoch, big-endian (for the sweep)
     34   12  AEAD nonce
     46   80  ChaCha20-Poly1305(process key, secnonce (64 bytes), aad) with its 16-byte tag
    126    2  zero

The AAD is ``mpcw/<node>/nonce/<id>/slot/<index>/<created ms>``: a record copied to another slot or name
(or with its time changed) does not decrypt. The process keeps the index id -> slot in memory and never
reads it back from the file.

Nothing is synced: durability is not needed any more (a crash loses the key, hence every pooled nonce,
which is harmless: an attempt naming one is refused as "nonce unknown" and consensus retries with other
nonces). Taking a nonce drops it from the index and overwrites its slot with zeros (one ``pwrite``), so
neither the process nor its file holds it after use. The file grows a chunk of 4096 zeroed slots at a
time and is reused from the lowest free slot.

Not thread-safe: meant for one asyncio thread; callers serialise take and sweep against each other.
"""

from __future__ import annotations

import fcntl
import heapq
import os
import secrets
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from services.runtime.secrets_dir import fsync_dir

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
_WIPE_BLOCK = CHUNK_SLOTS * SLOT_SIZE

assert _RECORD_LEN <= SLOT_SIZE and 512 % SLOT_SIZE == 0


class DuplicateNonce(Exception):
    """A nonce with this id is already stored."""


class NonceStoreBusy(Exception):
    """Another process holds this node's nonce store (a second signer for the same node?)."""


class NonceSlots:
    """The slot file of one node, held (locked) by this process. ``check_name`` validates an id (raises
    ValueError); ids longer than :data:`MAX_ID_LEN` bytes are refused here as well."""

    def __init__(self, path: Path, node: str, *, check_name: Callable[[str], None]) -> None:
        self.path = Path(path)
        self.node = node
        self._check_name = check_name
        self._aead = ChaCha20Poly1305(ChaCha20Poly1305.generate_key())  # this process's only: never stored
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        self._file = os.fdopen(fd, "r+b", buffering=0)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise NonceStoreBusy(
                    f"{self.path} is held by another process: only one signer of {node} may run"
                ) from None
            os.fchmod(fd, 0o600)
            if created:
                fsync_dir(self.path.parent)
            self._index: dict[str, tuple[int, int]] = {}  # id -> (slot, created ms)
            self._free: list[int] = []  # a heap: the lowest free slot is used first
            self._nslots = 0
            self._wipe()
        except BaseException:
            self._file.close()
            raise

    @property
    def _fd(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        """Release the store (and its lock). The nonces pooled by this instance die with its key."""
        self._index.clear()
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
        """For tests only: decrypt a stored nonce WITHOUT taking it (works only inside this process)."""
        hit = self._index.get(nonce_id)
        return None if hit is None else self._read(hit[0], nonce_id, hit[1])

    # -- changes -------------------------------------------------------------------------------------
    def save(self, nonce_id: str, secnonce: bytes, created_ms: int | None = None) -> None:
        """Write a fresh nonce into a free slot (one pwrite)."""
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
        """Remove these nonces from the store (index and slot) and return them. An unknown, already
        taken or undecryptable id maps to None; a repeated id is taken once. If erasing a slot fails the
        error propagates and nothing is returned (what was removed by then stays removed)."""
        ids = list(nonce_ids)
        for nid in ids:
            self._check_id(nid)
        out: dict[str, bytearray | None] = {}
        try:
            for nid in ids:
                if nid in out:
                    continue
                hit = self._index.pop(nid, None)  # first: whatever happens next, never handed out again
                if hit is None:
                    out[nid] = None
                    continue
                slot, created = hit
                out[nid] = self._read(slot, nid, created)
                self._pwrite(_ZERO_SLOT, slot)
                heapq.heappush(self._free, slot)
        except BaseException:
            for got in out.values():
                if got is not None:
                    got[:] = bytes(len(got))
            raise
        return out

    def sweep(self, older_than_s: float) -> int:
        """Erase the nonces created more than ``older_than_s`` ago; how many."""
        limit_ms = int((time.time() - older_than_s) * 1000)
        old = [(nid, slot) for nid, (slot, created) in self._index.items() if created < limit_ms]
        for nid, slot in old:
            del self._index[nid]
            self._pwrite(_ZERO_SLOT, slot)
            heapq.heappush(self._free, slot)
        return len(old)

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
        """Append a chunk of zeroed slots (written, not a hole: later writes allocate nothing)."""
        first = self._nslots
        zeros = bytes(CHUNK_SLOTS * SLOT_SIZE)
        if os.pwrite(self._fd, zeros, first * SLOT_SIZE) != len(zeros):
            raise OSError(f"short write growing {self.path}")
        self._nslots = first + CHUNK_SLOTS
        for slot in range(first, self._nslots):
            heapq.heappush(self._free, slot)

    def _wipe(self) -> None:
        """Overwrite everything an earlier process left (its nonces died with its key; a file of an earlier
        version holds nonces under the persistent key-encryption key) and make that durable."""
        size = os.fstat(self._fd).st_size
        self._nslots = size // SLOT_SIZE
        if size:
            for start in range(0, size, _WIPE_BLOCK):
                chunk = bytes(min(_WIPE_BLOCK, size - start))
                if os.pwrite(self._fd, chunk, start) != len(chunk):
                    raise OSError(f"short write wiping {self.path}")
            os.fdatasync(self._fd)
        self._free = list(range(self._nslots))  # ascending: already a heap
