"""The cluster's secrets directory: every private key that must not travel with the data directory.

A copy of the data directory ``DIR`` (a backup, a stolen disk image, a ``cp -r``) must not be the wallet:
so no private key and no key-encryption key lives in it. They live in a directory of their own::

    <root>/<cluster-id>/                     0700
        pki/ca.key                           the CA's private key (PEM)
        pki/server.key                       nats-server's TLS key (PEM: nats-server reads this path)
        pki/<identity>.key                   each identity's TLS client key (PEM)
        identities/<identity>/ed25519.key    each identity's envelope-signing seed (raw 32 bytes)
        identities/<identity>/x25519.key     each identity's point-to-point decryption key (raw 32 bytes)
        nodes/<node>/kek                     a signer node's key-encryption key, when the node runs
                                             without a passphrase (development)

``<root>`` is ``$MPCW_SECRETS_DIR``, else ``$XDG_STATE_HOME/mpcw-secrets``, else
``~/.local/state/mpcw-secrets``; it may not lie inside ``DIR``. ``<cluster-id>`` is the random id in
``DIR/cluster.id`` (public: it names the secrets, it does not open them), created with the PKI.

Every file is written 0600 in 0700 directories, to a temporary name, fsynced and renamed.

Upgrade: earlier versions kept these files inside ``DIR`` (``pki/*.key``, ``identities/*/*.key``,
``nodes/*/kek``). :func:`move_legacy_secrets` moves them here (copy, fsync, then delete the original);
``init_pki`` (so ``mpcw up`` and ``mpcw certs init``) and the signer's keystore call it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

SECRETS_DIR_ENV = "MPCW_SECRETS_DIR"
CLUSTER_ID_FILE = "cluster.id"


class SecretsDirError(Exception):
    """The secrets directory cannot be found, is misplaced, or disagrees with the data directory."""


def private_dir(path: Path) -> Path:
    """``path`` (and missing parents) created 0700; an existing ``path`` is narrowed to 0700. (``mkdir``'s
    own ``parents=True`` would make the missing parents with the process's default mode.)"""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made meanwhile by another process
            p.mkdir(mode=0o700)
        os.chmod(p, 0o700)
    os.chmod(path, 0o700)
    return path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, deleted files) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_private(path: Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` 0600 (its directory 0700) through a temporary file and a rename:
    readers see the file absent or whole; ``durable`` also fsyncs the file and the directory."""
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


def secrets_root() -> Path:
    explicit = os.environ.get(SECRETS_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    state = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return (Path(state).expanduser() / "mpcw-secrets").resolve()


def cluster_id(data_dir: Path, create: bool = False) -> str:
    """The id in ``DIR/cluster.id``; with ``create``, a new random one when there is none yet."""
    path = data_dir / CLUSTER_ID_FILE
    if create and not path.exists():
        private_dir(data_dir)
        tmp = path.with_name(f"{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(16) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):  # another process made one first: theirs holds
            os.link(tmp, path)
        os.unlink(tmp)
        fsync_dir(data_dir)
    try:
        cid = path.read_text().strip()
    except FileNotFoundError:
        raise SecretsDirError(
            f"{data_dir} has no {CLUSTER_ID_FILE}: create the cluster with `mpcw certs init` or `mpcw up`"
        ) from None
    if not cid or not all(c in "0123456789abcdef" for c in cid):
        raise SecretsDirError(f"{path} is corrupt")
    return cid


def secrets_dir(data_dir: Path, create: bool = False) -> Path:
    """This cluster's secrets directory (see the module docstring); ``create`` makes the cluster id
    and the directory (0700) when missing."""
    data_dir = Path(data_dir).resolve()
    root = secrets_root()
    if root == data_dir or data_dir in root.parents:
        raise SecretsDirError(
            f"the secrets directory {root} is inside the data directory {data_dir}: a copy of the data "
            f"directory would hold every key. Point {SECRETS_DIR_ENV} elsewhere"
        )
    d = root / cluster_id(data_dir, create=create)
    if create:
        private_dir(root)
        private_dir(d)
    return d


def read_secret(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise SecretsDirError(
            f"{what} is missing: {path} (restore the secrets directory from its backup, or set "
            f"{SECRETS_DIR_ENV} to where it is)"
        ) from None


def _move(src: Path, dst: Path) -> None:
    """Move one legacy secret file: copy durably, then delete the original. A destination that exists
    with other content is a conflict the operator must resolve: nothing is deleted."""
    data = src.read_bytes()
    if dst.exists():
        if dst.read_bytes() != data:
            raise SecretsDirError(
                f"{src} (left by an earlier version) and {dst} differ: keep the right one, delete the "
                "other, and start again"
            )
    else:
        write_private(dst, data)
    src.unlink()
    fsync_dir(src.parent)


def move_legacy_secrets(data_dir: Path) -> list[Path]:
    """Move private keys that earlier versions kept inside ``DIR`` into the secrets directory (see the
    module docstring); returns the files moved (their old paths)."""
    data_dir = Path(data_dir)
    legacy: list[tuple[Path, tuple[str, ...]]] = []
    pki = data_dir / "pki"
    if pki.is_dir():
        legacy += [(p, ("pki", p.name)) for p in sorted(pki.glob("*.key")) if p.is_file()]
    ids = data_dir / "identities"
    if ids.is_dir():
        legacy += [
            (p, ("identities", p.parent.name, p.name)) for p in sorted(ids.glob("*/*.key")) if p.is_file()
        ]
    nodes = data_dir / "nodes"
    if nodes.is_dir():
        legacy += [(p, ("nodes", p.parent.name, "kek")) for p in sorted(nodes.glob("*/kek")) if p.is_file()]
    if not legacy:
        return []
    d = secrets_dir(data_dir, create=True)
    for src, rel in legacy:
        _move(src, d.joinpath(*rel))
    if ids.is_dir():
        for sub in ids.iterdir():
            with contextlib.suppress(OSError):
                sub.rmdir()  # emptied
        with contextlib.suppress(OSError):
            ids.rmdir()
    return [src for src, _ in legacy]
