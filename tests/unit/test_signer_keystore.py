from __future__ import annotations

from pathlib import Path

import pytest

from services.signer.keystore import Keystore, KeystoreError, NonceConsumed, ShareRecord


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
    (b.root / "kek").write_bytes((a.root / "kek").read_bytes())
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
