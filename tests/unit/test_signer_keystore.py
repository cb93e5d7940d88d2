from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from services.runtime.secrets_dir import SECRETS_DIR_ENV, secrets_dir
from services.signer.keystore import (
    ARGON2ID_MEMLIMIT,
    KDF_FILE,
    Keystore,
    KeystoreError,
    NonceConsumed,
    ShareRecord,
)


def record() -> ShareRecord:
    return ShareRecord(
        key_id="default",
        scheme="frost",
        index=2,
        secshare=b"\x11" * 32,
        threshold_pubkey=b"\x02" + b"\x22" * 32,
        pubshares=[b"\x03" * 33],
        chain_code=b"\x44" * 32,
        n=5,
        t=4,
    )


def test_share_round_trip_and_no_plaintext_on_disk(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-3")
    ks.save_share(record())
    ks.save_nonce("n1", b"\x11" * 64)
    assert Keystore(tmp_path, "node-3").load_share("default") == record()
    files = [*(tmp_path / "nodes" / "node-3").rglob("*.enc"), ks.root / "nonces.slots"]
    assert len(files) == 2
    for f in files:
        assert b"\x11" * 32 not in f.read_bytes()
        assert f.stat().st_mode & 0o077 == 0


def test_passphrase_protects_and_wrong_passphrase_fails(tmp_path: Path) -> None:
    Keystore(tmp_path, "node-1", passphrase="correct horse").save_share(record())
    assert Keystore(tmp_path, "node-1", passphrase="correct horse").load_share("default").index == 2
    with pytest.raises(KeystoreError, match="does not decrypt"):
        Keystore(tmp_path, "node-1", passphrase="wrong").load_share("default")


def test_file_moved_to_another_node_does_not_decrypt(tmp_path: Path) -> None:
    a = Keystore(tmp_path, "node-1")
    a.save_share(record())
    b = Keystore(tmp_path, "node-2")
    b.dev_kek_path.write_bytes(a.dev_kek_path.read_bytes())
    (b.root / "shares" / "default.enc").write_bytes((a.root / "shares" / "default.enc").read_bytes())
    with pytest.raises(KeystoreError):
        Keystore(tmp_path, "node-2").load_share("default")


def test_nonce_is_taken_once_even_across_restarts(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1")
    ks.save_nonce("n1", b"\x07" * 64)
    with pytest.raises(KeystoreError):
        ks.save_nonce("n1", b"\x08" * 64)
    assert ks.take_nonce("n1") == bytearray(b"\x07" * 64)
    assert ks.nonce_count() == 0
    ks.close()  # the nonce store is held by one process (one Keystore) at a time
    with pytest.raises(NonceConsumed):
        Keystore(tmp_path, "node-1").take_nonce("n1")


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "a b", "x" * 25])
def test_bad_identifiers(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        Keystore(tmp_path, "node-1").take_nonce(name)


def test_host_key_is_stable(tmp_path: Path) -> None:
    assert Keystore(tmp_path, "node-1").host_seckey() == Keystore(tmp_path, "node-1").host_seckey()


def test_take_nonces_group_commit(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1")
    ks.save_nonce("a", b"\x01" * 64)
    ks.save_nonce("b", b"\x02" * 64)
    got = ks.take_nonces(["a", "b", "a", "missing"])
    assert got == {"a": bytearray(b"\x01" * 64), "b": bytearray(b"\x02" * 64), "missing": None}
    assert ks.take_nonces(["a", "b"]) == {"a": None, "b": None}  # gone for good
    assert ks.nonce_count() == 0


# -- secrets at rest: no key-encryption key beside the shares ------------------------------------------


def test_development_kek_lives_outside_the_data_directory(tmp_path: Path) -> None:
    data = tmp_path / "cluster"
    ks = Keystore(data, "node-1")
    ks.save_share(record())
    kek = ks.dev_kek_path
    assert data.resolve() not in kek.resolve().parents
    assert kek.read_bytes() and kek.stat().st_mode & 0o777 == 0o600
    assert kek.parent.stat().st_mode & 0o777 == 0o700
    for f in data.rglob("*"):
        if f.is_file():
            assert kek.read_bytes() not in f.read_bytes(), f
            assert f.name != "kek", f


def test_a_copy_of_the_data_directory_alone_does_not_open_the_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "cluster"
    Keystore(data, "node-2").save_share(record())
    stolen = tmp_path / "elsewhere" / "copy"
    shutil.copytree(data, stolen)
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path / "attackers-empty-secrets"))  # another machine
    with pytest.raises(KeystoreError, match="not in the secrets directory") as err:
        Keystore(stolen, "node-2").load_share("default")
    assert "11" * 8 not in str(err.value)
    assert list((tmp_path / "attackers-empty-secrets").rglob("kek")) == []  # no new key was made


def test_legacy_kek_beside_the_shares_moves_to_the_secrets_directory(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1")
    ks.save_share(record())
    kek = ks.dev_kek_path.read_bytes()
    (ks.root / "kek").write_bytes(kek)  # the layout of earlier versions
    ks.dev_kek_path.unlink()
    again = Keystore(tmp_path, "node-1")
    assert again.load_share("default") == record()
    assert not (ks.root / "kek").exists()
    assert again.dev_kek_path.read_bytes() == kek


def test_passphrase_writes_nothing_secret_and_uses_argon2id(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1", passphrase="correct horse")
    ks.save_share(record())
    params = json.loads((ks.root / KDF_FILE).read_text())
    assert params["kdf"] == "argon2id" and params["opslimit"] >= 3 and params["memlimit"] >= ARGON2ID_MEMLIMIT
    assert not (secrets_dir(tmp_path, create=True) / "nodes" / "node-1" / "kek").exists()
    with pytest.raises(KeystoreError, match="protected by a passphrase"):
        Keystore(tmp_path, "node-1")


def _seal_as_before(ks: Keystore, key: bytes, path: Path, kind: str, name: str, plain: bytes) -> None:
    nonce = secrets.token_bytes(12)
    path.write_bytes(nonce + ChaCha20Poly1305(key).encrypt(nonce, plain, ks._aad(kind, name)))


def test_scrypt_keystore_is_reencrypted_under_argon2id(tmp_path: Path) -> None:
    import msgspec

    ks = Keystore(tmp_path, "node-1")  # only for the layout; then rewritten as an earlier version did
    ks.dev_kek_path.unlink()
    salt = secrets.token_bytes(16)
    (ks.root / "kek.salt").write_bytes(salt)
    old = Scrypt(salt=salt, length=32, n=2**15, r=8, p=1).derive(b"correct horse")
    host = secrets.token_bytes(32)
    _seal_as_before(ks, old, ks.root / "hostkey.enc", "hostkey", "host", host)
    share = ks.root / "shares" / "default.enc"
    _seal_as_before(ks, old, share, "share", "default", msgspec.msgpack.encode(record()))
    with pytest.raises(KeystoreError, match="wrong passphrase"):
        Keystore(tmp_path, "node-1", passphrase="wrong")
    assert (ks.root / "kek.salt").exists()  # a wrong passphrase destroys nothing
    up = Keystore(tmp_path, "node-1", passphrase="correct horse")
    assert up.load_share("default") == record() and up.host_seckey() == host
    assert not (ks.root / "kek.salt").exists() and (ks.root / KDF_FILE).exists()
    with pytest.raises(Exception):  # noqa: B017 - the old key opens nothing any more
        blob = share.read_bytes()
        ChaCha20Poly1305(old).decrypt(blob[:12], blob[12:], ks._aad("share", "default"))
    assert Keystore(tmp_path, "node-1", passphrase="correct horse").load_share("default") == record()


def test_setting_a_passphrase_reencrypts_a_development_keystore(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = Keystore(tmp_path, "node-4")
    ks.save_share(record())
    kek = ks.dev_kek_path
    with pytest.raises(KeystoreError, match="MPCW_NODE_PASSPHRASE_CONFIRM"):
        Keystore(tmp_path, "node-4", passphrase="pw")  # unconfirmed: a typo would lock the shares
    assert kek.exists() and Keystore(tmp_path, "node-4").load_share("default") == record()
    monkeypatch.setenv("MPCW_NODE_PASSPHRASE_CONFIRM", "pw")
    up = Keystore(tmp_path, "node-4", passphrase="pw")
    assert up.load_share("default") == record()
    assert not kek.exists()  # nothing left that opens the shares without the passphrase
    with pytest.raises(KeystoreError, match="protected by a passphrase"):
        Keystore(tmp_path, "node-4")


def test_mainnet_refuses_development_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPCW_NODE_PASSPHRASE", raising=False)
    with pytest.raises(KeystoreError, match=r"mainnet.*MPCW_NODE_PASSPHRASE"):
        Keystore(tmp_path, "node-1", network="mainnet")
    assert not list(tmp_path.rglob("kek"))
    Keystore(tmp_path, "node-1", passphrase="pw", network="mainnet").save_share(record())
    monkeypatch.setenv("MPCW_NODE_PASSPHRASE", "pw")
    assert Keystore(tmp_path, "node-1", network="mainnet").load_share("default") == record()


def test_node_directories_are_narrowed_to_0700(tmp_path: Path) -> None:
    (tmp_path / "nodes" / "node-1" / "shares").mkdir(parents=True, mode=0o755)
    os.chmod(tmp_path / "nodes" / "node-1", 0o755)
    ks = Keystore(tmp_path, "node-1")
    ks.save_share(record())
    for d in (ks.root, ks.root / "shares"):
        assert d.stat().st_mode & 0o777 == 0o700, d
    assert (ks.root / "shares" / "default.enc").stat().st_mode & 0o777 == 0o600


def test_share_record_repr_holds_no_secret() -> None:
    r = record()
    for text in (repr(r), str(r), f"{r}", repr([r])):
        assert "11" * 16 not in text and "\\x11" not in text and "secshare" not in text
        assert "default" in text


def test_an_interrupted_passphrase_change_is_finished_by_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = Keystore(tmp_path, "node-5")
    ks.save_share(record())
    ks.host_seckey()
    monkeypatch.setenv("MPCW_NODE_PASSPHRASE_CONFIRM", "pw")
    real_reencrypt = Keystore._reencrypt

    def crash(self: Keystore, old: ChaCha20Poly1305, new: ChaCha20Poly1305) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(Keystore, "_reencrypt", crash)
    with pytest.raises(OSError):
        Keystore(tmp_path, "node-5", passphrase="pw")
    assert (ks.root / KDF_FILE).exists() and ks.dev_kek_path.exists()
    monkeypatch.setattr(Keystore, "_reencrypt", real_reencrypt)
    up = Keystore(tmp_path, "node-5", passphrase="pw")
    assert up.load_share("default") == record() and len(up.host_seckey()) == 32
    assert not ks.dev_kek_path.exists()
