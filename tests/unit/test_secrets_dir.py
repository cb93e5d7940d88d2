"""The secrets directory: outside the data directory, owner only, and where an earlier version's private
keys move to (``services.runtime.secrets_dir``, ``init_pki``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from services.localcluster.pki import init_pki
from services.runtime.pki_files import tls_files
from services.runtime.seal import IdentityKeys
from services.runtime.secrets_dir import (
    SECRETS_DIR_ENV,
    SecretsDirError,
    cluster_id,
    move_legacy_secrets,
    secrets_dir,
)


def test_init_pki_keeps_every_private_key_out_of_the_data_directory(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    init_pki(d, nodes=2)
    assert not [p for p in d.rglob("*") if p.suffix == ".key"]
    sdir = secrets_dir(d)
    assert d.resolve() not in sdir.parents and sdir.name == cluster_id(d)
    assert tls_files(d, "node-1").key == sdir / "pki" / "node-1.key"
    for p in [sdir, *sdir.rglob("*")]:
        assert p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600), p
    for p in [d, *d.rglob("*")]:
        assert p.stat().st_mode & 0o077 == 0, p
    assert IdentityKeys.load(d, "node-2").name == "node-2"


def test_a_copy_of_the_data_directory_holds_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "cluster"
    init_pki(d, nodes=1)
    shutil.copytree(d, tmp_path / "copy")
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path / "elsewhere"))
    with pytest.raises(SecretsDirError, match="restore the secrets directory"):
        IdentityKeys.load(tmp_path / "copy", "node-1")
    with pytest.raises(SecretsDirError, match="CA's key is missing"):
        init_pki(tmp_path / "copy", nodes=1)  # no new CA made up behind the operator's back


def test_legacy_private_keys_move_to_the_secrets_directory(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    init_pki(d, nodes=1)
    sdir = secrets_dir(d)
    moved = {  # put back where an earlier version kept them
        d / "pki" / "ca.key": sdir / "pki" / "ca.key",
        d / "pki" / "node-1.key": sdir / "pki" / "node-1.key",
        d / "identities" / "node-1" / "ed25519.key": sdir / "identities" / "node-1" / "ed25519.key",
        d / "nodes" / "node-1" / "kek": sdir / "nodes" / "node-1" / "kek",
    }
    (sdir / "nodes" / "node-1").mkdir(parents=True)
    (sdir / "nodes" / "node-1" / "kek").write_bytes(os.urandom(32))
    content = {old: new.read_bytes() for old, new in moved.items()}
    for old, new in moved.items():
        old.parent.mkdir(parents=True, exist_ok=True)
        old.write_bytes(content[old])
        new.unlink()
    assert sorted(move_legacy_secrets(d)) == sorted(moved)
    for old, new in moved.items():
        assert not old.exists() and new.read_bytes() == content[old]
        assert new.stat().st_mode & 0o777 == 0o600
    assert not (d / "identities").exists()  # emptied, removed
    assert move_legacy_secrets(d) == []


def test_a_conflicting_legacy_key_is_refused_and_kept(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    init_pki(d, nodes=1)
    (d / "pki" / "ca.key").write_bytes(b"another CA key")
    with pytest.raises(SecretsDirError, match="differ"):
        init_pki(d, nodes=1)
    assert (d / "pki" / "ca.key").read_bytes() == b"another CA key"


def test_the_secrets_directory_may_not_lie_inside_the_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path / "cluster" / "secrets"))
    with pytest.raises(SecretsDirError, match="inside the data directory"):
        init_pki(tmp_path / "cluster", nodes=1)


def test_cluster_id_is_made_once(tmp_path: Path) -> None:
    first = cluster_id(tmp_path, create=True)
    assert cluster_id(tmp_path, create=True) == first == cluster_id(tmp_path)
    assert len(first) == 32 and (tmp_path / "cluster.id").stat().st_mode & 0o777 == 0o600
    with pytest.raises(SecretsDirError, match="mpcw certs init"):
        cluster_id(tmp_path / "nothing")
