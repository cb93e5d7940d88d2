"""A signer node's secrets on disk, encrypted at rest: key shares, the ChillDKG host key, pooled nonces.

Layout under ``<data_dir>/nodes/<node>/`` (0700, files 0600)::

    kek.argon2id        when a passphrase is used (MPCW_NODE_PASSPHRASE): the Argon2id salt and cost
                        (JSON, not secret); the key-encryption key is derived at start and never written
    hostkey.enc         the ChillDKG host secret key
    shares/<key>.enc    a DKG output: secret share + public data (msgpack), one file per key id
    nonces.slots        the pooled FROST secret nonces of the running signer, one fixed-size slot
                        each, encrypted under a key only that process holds and locked by it
                        (:mod:`services.signer.nonce_slots`); wiped when the next process opens it

Where the key-encryption key (KEK) comes from, never from the data directory alone:

- ``MPCW_NODE_PASSPHRASE`` set: Argon2id (libsodium through PyNaCl) with RFC 9106's second recommended
  cost (t=3 passes, m=64 MiB), salt per node. Required on mainnet: a signer whose ``cluster.json`` says
  ``"network": "mainnet"`` refuses to start without a passphrase.
- otherwise (development): a random 32-byte KEK in the cluster's secrets directory
  (``<secrets>/nodes/<node>/kek``, :mod:`services.runtime.secrets_dir`), outside the data directory.

A copy of the data directory alone therefore opens nothing: without the secrets directory (or the
passphrase) the keystore refuses to start with a message naming what is missing.

Every ``.enc`` file is ``nonce(12) || ChaCha20-Poly1305(kek, plaintext, aad=node|kind|name)``, written to a
temp file, fsynced and renamed, so a crash never leaves a torn secret. Binding the AAD to node, kind and
name means a file copied to another name or node does not decrypt; a nonce slot's AAD also binds its
slot index. Nothing here logs or raises with secret content in the message.

Upgrades, done when the keystore opens:

- a development KEK that earlier versions kept at ``nodes/<node>/kek`` moves into the secrets directory;
- a passphrase keystore of earlier versions (``kek.salt``, scrypt N=2^15) is re-encrypted under the
  Argon2id KEK, and so is a development keystore when a passphrase is set for the first time, confirmed
  by ``MPCW_NODE_PASSPHRASE_CONFIRM`` (its KEK is then deleted from the secrets directory). Each file is
  re-sealed atomically; the old salt or key file goes last, so a crash half way is finished by the next
  start.
- earlier versions kept each nonce in ``nonces/<id>.enc``, and slots under the key-encryption key.
  Opening the nonce store deletes such files and wipes the old slots: a nonce pooled by an earlier process
  is never used (its batch is withdrawn from KV ``presig`` when the signer starts).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import msgspec
import nacl.pwhash
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from services.runtime.secrets_dir import SecretsDirError, fsync_dir, private_dir, secrets_dir, write_private
from services.signer.nonce_slots import DuplicateNonce, NonceSlots

PASSPHRASE_ENV = "MPCW_NODE_PASSPHRASE"
CONFIRM_ENV = "MPCW_NODE_PASSPHRASE_CONFIRM"  # moving a development keystore to a passphrase
NETWORKS_REQUIRING_PASSPHRASE = frozenset({"mainnet"})
ARGON2ID_OPSLIMIT = 3  # RFC 9106 section 4, second recommended option: t=3, m=64 MiB
ARGON2ID_MEMLIMIT = 64 * 1024 * 1024
KDF_FILE = "kek.argon2id"
LEGACY_SCRYPT_SALT = "kek.salt"


class KeystoreError(Exception):
    """A secret file is missing, corrupt or was encrypted under another key."""


class NonceConsumed(KeystoreError):
    """The pooled nonce was already used (or never existed on this node)."""


class ShareRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A DKG output as stored: its ``repr`` names the key, never the secret share."""

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

    def __repr__(self) -> str:
        return (
            f"ShareRecord(key_id={self.key_id!r}, scheme={self.scheme!r}, index={self.index}, "
            f"n={self.n}, t={self.t})"
        )


class Keystore:
    def __init__(
        self, data_dir: Path, node: str, passphrase: str | None = None, *, network: str = "regtest"
    ) -> None:
        self.node = node
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "nodes" / node
        private_dir(self.data_dir / "nodes")
        private_dir(self.root)
        private_dir(self.root / "shares")
        if passphrase is None:
            passphrase = os.environ.get(PASSPHRASE_ENV) or None
        if network in NETWORKS_REQUIRING_PASSPHRASE and not passphrase:
            raise KeystoreError(
                f"{node} runs on {network}: the development key store (a key file in the secrets "
                f"directory) is refused there; set {PASSPHRASE_ENV}"
            )
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

    # -- the key-encryption key ----------------------------------------------------------------
    @property
    def dev_kek_path(self) -> Path:
        """The development KEK's place in the cluster's secrets directory."""
        return secrets_dir(self.data_dir, create=True) / "nodes" / self.node / "kek"

    def _sealed_files(self) -> list[tuple[Path, str, str]]:
        """(path, kind, name) of every ``.enc`` file sealed under the KEK."""
        out = [(self.root / "hostkey.enc", "hostkey", "host")]
        out += [(p, "share", p.stem) for p in sorted((self.root / "shares").glob("*.enc"))]
        return [f for f in out if f[0].exists()]

    def _kek(self, passphrase: str | None) -> bytes:
        if passphrase:
            return self._passphrase_kek(passphrase)
        if (self.root / KDF_FILE).exists() or (self.root / LEGACY_SCRYPT_SALT).exists():
            raise KeystoreError(f"{self.node}'s secrets are protected by a passphrase: set {PASSPHRASE_ENV}")
        try:
            path = self.dev_kek_path
            legacy = self.root / "kek"
            if legacy.exists():  # an earlier version's key file beside the shares: move it out
                if path.exists() and path.read_bytes() != legacy.read_bytes():
                    raise KeystoreError(
                        f"{legacy} (left by an earlier version) and {path} differ: keep the one the "
                        "shares decrypt under and delete the other"
                    )
                write_private(path, legacy.read_bytes())
                legacy.unlink()
                fsync_dir(self.root)
            if not path.exists():
                if self._sealed_files():
                    raise KeystoreError(
                        f"{self.node}'s key-encryption key is not in the secrets directory ({path}): its "
                        "shares cannot be decrypted. Restore the secrets directory from its backup (or "
                        f"point MPCW_SECRETS_DIR at it), or set {PASSPHRASE_ENV} if it was made with one"
                    )
                write_private(path, secrets.token_bytes(32))
            kek = path.read_bytes()
        except SecretsDirError as exc:
            raise KeystoreError(str(exc)) from None
        if len(kek) != 32:
            raise KeystoreError(f"{path} is corrupt")
        return kek

    def _old_kek_file(self) -> Path | None:
        """What the sealed files are under when they are not under the passphrase yet: an earlier
        version's scrypt salt, or a development KEK (in the secrets directory, or where earlier versions
        kept it). Also found when a re-encryption was interrupted, so the next start finishes it."""
        if (self.root / LEGACY_SCRYPT_SALT).exists():
            return self.root / LEGACY_SCRYPT_SALT
        if not self._sealed_files():
            return None
        candidates = [self.root / "kek"]
        try:
            candidates.insert(0, secrets_dir(self.data_dir) / "nodes" / self.node / "kek")
        except SecretsDirError:
            pass  # no cluster id: no secrets directory either
        return next((p for p in candidates if p.exists()), None)

    def _passphrase_kek(self, passphrase: str) -> bytes:
        kdf_path = self.root / KDF_FILE
        old_file = self._old_kek_file()
        if old_file is not None and old_file.name != LEGACY_SCRYPT_SALT:
            if os.environ.get(CONFIRM_ENV) != passphrase:
                # nothing checks a passphrase set for the first time: a typo would lock the shares
                raise KeystoreError(
                    f"{self.node}'s secrets are under its development key ({old_file}); to re-encrypt "
                    f"them under {PASSPHRASE_ENV}, start once with {CONFIRM_ENV} set to the same "
                    "passphrase (the development key is then deleted)"
                )
        if not kdf_path.exists():
            if old_file is None and self._sealed_files():
                raise KeystoreError(
                    f"{self.node} has sealed files but neither a passphrase record ({kdf_path}) nor a "
                    "development key: restore the secrets directory or the node's data directory"
                )
            params = {
                "kdf": "argon2id",
                "salt": secrets.token_bytes(nacl.pwhash.argon2id.SALTBYTES).hex(),
                "opslimit": ARGON2ID_OPSLIMIT,
                "memlimit": ARGON2ID_MEMLIMIT,
            }
            write_private(kdf_path, json.dumps(params).encode())
        try:
            params = json.loads(kdf_path.read_bytes())
            kek = nacl.pwhash.argon2id.kdf(
                32,
                passphrase.encode(),
                bytes.fromhex(params["salt"]),
                opslimit=int(params["opslimit"]),
                memlimit=int(params["memlimit"]),
            )
        except (ValueError, KeyError, TypeError):
            raise KeystoreError(f"{kdf_path} is corrupt") from None
        if old_file is not None:
            if old_file.name == LEGACY_SCRYPT_SALT:
                old_key = Scrypt(salt=old_file.read_bytes(), length=32, n=2**15, r=8, p=1).derive(
                    passphrase.encode()
                )
            else:
                old_key = old_file.read_bytes()
            self._reencrypt(ChaCha20Poly1305(old_key), ChaCha20Poly1305(kek))
            old_file.unlink()
            fsync_dir(old_file.parent)
        return kek

    def _reencrypt(self, old: ChaCha20Poly1305, new: ChaCha20Poly1305) -> None:
        """Re-seal every sealed file from ``old`` to ``new`` (a file already under ``new`` is kept) and
        discard the pooled nonces sealed under ``old``. Refuses when a file opens under neither key:
        a wrong passphrase must not destroy anything."""
        for path, kind, name in self._sealed_files():
            blob = path.read_bytes()
            aad = self._aad(kind, name)
            try:
                new.decrypt(blob[:12], blob[12:], aad)
                continue
            except Exception:
                pass
            try:
                plain = old.decrypt(blob[:12], blob[12:], aad)
            except Exception:
                raise KeystoreError(
                    f"{kind} {name!r} on {self.node} does not decrypt (wrong passphrase or corrupt)"
                ) from None
            nonce = secrets.token_bytes(12)
            write_private(path, nonce + new.encrypt(nonce, plain, aad))
        # pooled nonces are not re-encrypted: the nonce store wipes them when it opens (under its lock)

    # -- generic encrypted blobs ---------------------------------------------------------------
    def _aad(self, kind: str, name: str) -> bytes:
        return f"mpcw/{self.node}/{kind}/{name}".encode()

    def _seal(self, path: Path, kind: str, name: str, plaintext: bytes, durable: bool = True) -> None:
        nonce = secrets.token_bytes(12)
        write_private(path, nonce + self._aead.encrypt(nonce, plaintext, self._aad(kind, name)), durable)

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
