"""A signer node's secrets on disk, encrypted at rest: key shares, the ChillDKG host key, pooled nonces.

Layout under ``<data_dir>/nodes/<node>/``::

    kek.salt            scrypt salt when a passphrase is used (MPCW_NODE_PASSPHRASE)
    kek                 random key-encryption key (0600) when no passphrase is set: development mode
    hostkey.enc         the ChillDKG host secret key
    shares/<key>.enc    a DKG output: secret share + public data (msgpack), one file per key id
    nonces.slots        the pooled FROST secret nonces, one fixed-size slot each
                        (:mod:`services.signer.nonce_slots`); a slot is erased and synced BEFORE its
                        nonce is used

Every ``.enc`` file is ``nonce(12) || ChaCha20-Poly1305(kek, plaintext, aad=node|kind|name)``, written to a
temp file, fsynced and renamed, so a crash never leaves a torn secret. Binding the AAD to node, kind and
name means a file copied to another name or node does not decrypt; a nonce slot's AAD also binds its
slot index. Nothing here logs or raises with secret content in the message.

Upgrade: earlier versions kept each nonce in ``nonces/<id>.enc``. Opening the keystore moves such files
into slots (keeping their mtime as the creation time), syncs the slot file, and only then deletes the old
files (undecryptable ones too: they can never be used) and the emptied directory.
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
        self._nonces = NonceSlots(self.root / "nonces.slots", self._aead, node, check_name=self._check_name)
        self._import_legacy_nonces()

    def close(self) -> None:
        self._nonces.close()

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
        """Store a fresh secret nonce. Not synced, on purpose: losing a fresh nonce in an OS crash is
        harmless (its signing attempt is refused and retried with another); only *using* one must be
        durable (:meth:`take_nonce`)."""
        try:
            self._nonces.save(nonce_id, bytes(secnonce))
        except DuplicateNonce:
            raise KeystoreError(f"nonce {nonce_id!r} already exists") from None

    def has_nonce(self, nonce_id: str) -> bool:
        return nonce_id in self._nonces

    def take_nonce(self, nonce_id: str) -> bytearray:
        """Read and irrevocably erase a secret nonce: it can be used at most once, even across restarts.

        Its slot is overwritten and the slot file fdatasynced before the nonce is returned, so a crash
        after this call loses the nonce rather than allowing a second use.
        """
        got = self.take_nonces([nonce_id])[nonce_id]
        if got is None:
            raise NonceConsumed(f"nonce {nonce_id!r} is used or unknown on {self.node}")
        return got

    def take_nonces(self, nonce_ids: list[str]) -> dict[str, bytearray | None]:
        """:meth:`take_nonce` for many at once, with ONE fdatasync (group commit). An id that is used,
        unknown or undecryptable maps to None; a repeated id is taken once (the caller hands each secret
        nonce out once: ``frost.sign`` erases it)."""
        return self._nonces.take(nonce_ids)

    def sweep_nonces(self, older_than_s: float) -> int:
        """Erase secret nonces older than ``older_than_s`` (their KV entries have expired, so nobody can
        claim them any more); the number erased."""
        return self._nonces.sweep(older_than_s)

    def nonce_count(self) -> int:
        return len(self._nonces)

    def _import_legacy_nonces(self) -> None:
        """Move ``nonces/<id>.enc`` files of earlier versions into slots: copy, fdatasync the slot file,
        then delete the files and fsync the directory. A file that does not decrypt (or cannot be held
        in a slot) is deleted: it could never be used. An id already in a slot was imported by a run
        that crashed before the delete finished."""
        old_dir = self.root / "nonces"
        if not old_dir.is_dir():
            return
        old = sorted(old_dir.iterdir())
        for path in old:
            if path.suffix != ".enc" or not path.is_file():
                continue  # a write_atomic temp file never renamed: never announced, just deleted
            nonce_id = path.stem
            try:
                if self.has_nonce(nonce_id):
                    continue
                secnonce = self._open(path, "nonce", nonce_id)
                created_ms = int(path.stat().st_mtime * 1000)
                self._nonces.save(nonce_id, secnonce, created_ms=created_ms)
            except (KeystoreError, ValueError):
                continue  # invalid id, wrong length, or does not decrypt: deleted below
        self._nonces.sync()
        for path in old:
            if path.is_file():
                path.unlink()
        fsync_dir(old_dir)
        try:
            old_dir.rmdir()
        except OSError:
            return  # something else lives there: leave it
        fsync_dir(self.root)
