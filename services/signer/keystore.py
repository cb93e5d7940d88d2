"""A signer node's secrets on disk, encrypted at rest: key shares, the ChillDKG host key, pooled nonces.

Layout under ``<data_dir>/nodes/<node>/``::

    kek.salt            scrypt salt when a passphrase is used (MPCW_NODE_PASSPHRASE)
    kek                 random key-encryption key (0600) when no passphrase is set: development mode
    hostkey.enc         the ChillDKG host secret key
    shares/<key>.enc    a DKG output: secret share + public data (msgpack), one file per key id
    nonces.slots        the pooled FROST secret nonces of the running signer, one fixed-size slot
                        each, encrypted under a key only that process holds and locked by it
                        (:mod:`services.signer.nonce_slots`); wiped when the next process opens it

Every ``.enc`` file is ``nonce(12) || ChaCha20-Poly1305(kek, plaintext, aad=node|kind|name)``, written to a
temp file, fsynced and renamed, so a crash never leaves a torn secret. Binding the AAD to node, kind and
name means a file copied to another name or node does not decrypt; a nonce slot's AAD also binds its
slot index. Nothing here logs or raises with secret content in the message.

Upgrade: earlier versions kept each nonce in ``nonces/<id>.enc``, and slots under the key-encryption key.
Opening the nonce store deletes such files and wipes the old slots: a nonce pooled by an earlier process
is never used (its batch is withdrawn from KV ``presig`` when the signer starts).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from services.signer.nonce_slots import DuplicateNonce, NonceSlots, fsync_dir

PASSPHRASE_ENV = "MPCW_NODE_PASSPHRASE"


class KeystoreError(Exception):
    """A secret file is missing, corrupt or was encrypted under another key."""


class NonceConsumed(KeystoreError):
    """The pooled nonce was already used (or never existed on this node)."""


class ShareRecord(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    scheme: str
    index: int  # this node's participant index (0-based)
    secshare: bytes
    threshold_pubkey: bytes  # 33-byte compressed
    pubshares: list[bytes]
    chain_code: bytes
    n: int
    t: int
    recovery_data: bytes = b""


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file and rename it: readers see the file absent or whole. ``durable``
    also fsyncs the file and the directory, so it survives an OS crash."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


class Keystore:
    def __init__(self, data_dir: Path, node: str, passphrase: str | None = None) -> None:
        self.node = node
        self.root = Path(data_dir) / "nodes" / node
        for sub in ("", "shares"):
            (self.root / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        if passphrase is None:
            passphrase = os.environ.get(PASSPHRASE_ENV) or None
        self._aead = ChaCha20Poly1305(self._kek(passphrase))
        self._nonce_store: NonceSlots | None = None

    def close(self) -> None:
        if self._nonce_store is not None:
            self._nonce_store.close()
            self._nonce_store = None

    def open_nonces(self) -> None:
        """Take this node's nonce store for this process: lock it (:class:`NonceStoreBusy` when another
        process holds it), wipe what earlier processes pooled, delete the files of earlier versions.
        The nonce methods below open it on first use."""
        if self._nonce_store is None:
            self._nonce_store = NonceSlots(self.root / "nonces.slots", self.node, check_name=self._check_name)
            self._delete_legacy_nonces()

    @property
    def _nonces(self) -> NonceSlots:
        if self._nonce_store is None:
            self.open_nonces()
        assert self._nonce_store is not None
        return self._nonce_store

    def _kek(self, passphrase: str | None) -> bytes:
        if passphrase:
            salt_path = self.root / "kek.salt"
            if not salt_path.exists():
                write_atomic(salt_path, secrets.token_bytes(16))
            salt = salt_path.read_bytes()
            return Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(passphrase.encode())
        if (self.root / "kek.salt").exists():
            raise KeystoreError(f"{self.node}'s secrets are protected by a passphrase: set {PASSPHRASE_ENV}")
        kek_path = self.root / "kek"
        if not kek_path.exists():
            write_atomic(kek_path, secrets.token_bytes(32))
        kek = kek_path.read_bytes()
        if len(kek) != 32:
            raise KeystoreError(f"{kek_path} is corrupt")
        return kek

    # -- generic encrypted blobs ---------------------------------------------------------------
    def _aad(self, kind: str, name: str) -> bytes:
        return f"mpcw/{self.node}/{kind}/{name}".encode()

    def _seal(self, path: Path, kind: str, name: str, plaintext: bytes, durable: bool = True) -> None:
        nonce = secrets.token_bytes(12)
        write_atomic(path, nonce + self._aead.encrypt(nonce, plaintext, self._aad(kind, name)), durable)

    def _open(self, path: Path, kind: str, name: str) -> bytes:
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            raise KeystoreError(f"no {kind} {name!r} on {self.node}") from None
        try:
            return self._aead.decrypt(blob[:12], blob[12:], self._aad(kind, name))
        except Exception:
            raise KeystoreError(
                f"{kind} {name!r} on {self.node} does not decrypt (wrong key or corrupt)"
            ) from None

    # -- ChillDKG host key ---------------------------------------------------------------------
    def host_seckey(self) -> bytes:
        """The node's long-term ChillDKG host secret key, created on first use."""
        path = self.root / "hostkey.enc"
        if not path.exists():
            self._seal(path, "hostkey", "host", secrets.token_bytes(32))
        return self._open(path, "hostkey", "host")

    # -- key shares ----------------------------------------------------------------------------
    @staticmethod
    def _check_name(name: str) -> None:
        if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
            raise ValueError(f"invalid identifier {name!r}")

    def save_share(self, record: ShareRecord) -> None:
        self._check_name(record.key_id)
        self._seal(
            self.root / "shares" / f"{record.key_id}.enc",
            "share",
            record.key_id,
            msgspec.msgpack.encode(record),
        )

    def load_share(self, key_id: str) -> ShareRecord:
        self._check_name(key_id)
        raw = self._open(self.root / "shares" / f"{key_id}.enc", "share", key_id)
        return msgspec.msgpack.decode(raw, type=ShareRecord)

    def has_share(self, key_id: str) -> bool:
        self._check_name(key_id)
        return (self.root / "shares" / f"{key_id}.enc").exists()

    # -- pooled secret nonces ------------------------------------------------------------------
    def save_nonce(self, nonce_id: str, secnonce: bytes) -> None:
        """Pool a fresh secret nonce, for this process only (it dies with the process)."""
        try:
            self._nonces.save(nonce_id, bytes(secnonce))
        except DuplicateNonce:
            raise KeystoreError(f"nonce {nonce_id!r} already exists") from None

    def has_nonce(self, nonce_id: str) -> bool:
        return nonce_id in self._nonces

    def take_nonce(self, nonce_id: str) -> bytearray:
        """Read and irrevocably erase a secret nonce: it can be used at most once, even across restarts
        and restored files (no later process can decrypt it)."""
        got = self.take_nonces([nonce_id])[nonce_id]
        if got is None:
            raise NonceConsumed(f"nonce {nonce_id!r} is used or unknown on {self.node}")
        return got

    def take_nonces(self, nonce_ids: list[str]) -> dict[str, bytearray | None]:
        """:meth:`take_nonce` for many at once. An id that is used,
        unknown or undecryptable maps to None; a repeated id is taken once (the caller hands each secret
        nonce out once: ``frost.sign`` erases it)."""
        return self._nonces.take(nonce_ids)

    def sweep_nonces(self, older_than_s: float) -> int:
        """Erase secret nonces older than ``older_than_s`` (their KV entries have expired, so nobody can
        claim them any more); the number erased."""
        return self._nonces.sweep(older_than_s)

    def nonce_count(self) -> int:
        return len(self._nonces)

    def _delete_legacy_nonces(self) -> None:
        """Delete the ``nonces/<id>.enc`` files of earlier versions (and the directory): pooled by an
        earlier process, they are never used."""
        old_dir = self.root / "nonces"
        if not old_dir.is_dir():
            return
        for path in sorted(old_dir.iterdir()):
            if path.is_file():
                path.unlink()
        fsync_dir(old_dir)
        try:
            old_dir.rmdir()
        except OSError:
            return  # something else lives there: leave it
        fsync_dir(self.root)
