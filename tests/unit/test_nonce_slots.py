"""The slot file of pooled secret nonces (services/signer/nonce_slots.py): at most one use per nonce, a
nonce lives only as long as the process (the store) that pooled it, so a reopened, restored or copied file
yields nothing; one process at a time; growth, reuse, sweep, and the files of earlier versions wiped."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from services.signer.keystore import Keystore, KeystoreError, NonceConsumed
from services.signer.nonce_slots import CHUNK_SLOTS, MAX_ID_LEN, SLOT_SIZE, NonceSlots, NonceStoreBusy


def open_slots(path: Path, node: str = "node-1") -> NonceSlots:
    return NonceSlots(path, node, check_name=Keystore._check_name)


def sec(i: int) -> bytes:
    return bytes([i % 251 + 1]) * 32 + bytes([i % 241 + 2]) * 32


def slot_bytes(path: Path, slot: int) -> bytes:
    return path.read_bytes()[slot * SLOT_SIZE : (slot + 1) * SLOT_SIZE]


def put_slot(path: Path, slot: int, raw: bytes) -> None:
    assert len(raw) == SLOT_SIZE
    with path.open("r+b") as f:
        f.seek(slot * SLOT_SIZE)
        f.write(raw)


def test_save_take_round_trip_and_second_take_is_none(tmp_path: Path) -> None:
    s = open_slots(tmp_path / "n.slots")
    s.save("abc123def456-0", sec(1))
    s.save("abc123def456-1", sec(2))
    assert len(s) == 2 and "abc123def456-0" in s
    assert s.take(["abc123def456-0"]) == {"abc123def456-0": bytearray(sec(1))}
    assert s.take(["abc123def456-0"]) == {"abc123def456-0": None}
    assert len(s) == 1 and "abc123def456-0" not in s
    assert s._peek("abc123def456-1") == bytearray(sec(2)) and len(s) == 1  # a peek takes nothing
    assert s.take(["abc123def456-1", "abc123def456-1", "nope"]) == {
        "abc123def456-1": bytearray(sec(2)),
        "nope": None,
    }
    assert len(s) == 0


def test_a_reopened_store_holds_nothing_and_the_old_slots_are_wiped(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))
    s.save("a-1", sec(2))
    assert s.take(["a-0"])["a-0"] == bytearray(sec(1))
    assert slot_bytes(path, 1) != bytes(SLOT_SIZE)  # a-1 is in its slot
    s.close()
    again = open_slots(path)
    assert len(again) == 0 and again.ids() == []
    assert again.take(["a-0", "a-1"]) == {"a-0": None, "a-1": None}
    assert path.read_bytes() == bytes(path.stat().st_size)  # every slot overwritten
    again.save("a-1", sec(3))  # the same id pooled again by this process is a new nonce
    assert again.take(["a-1"]) == {"a-1": bytearray(sec(3))}


def test_a_restored_copy_of_the_file_never_yields_a_nonce(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    for i in range(3):
        s.save(f"a-{i}", sec(i))
    backup = tmp_path / "backup.slots"
    shutil.copyfile(path, backup)  # while the nonces are pooled
    assert s.take(["a-0"])["a-0"] == bytearray(sec(0))  # used
    s.close()
    shutil.copyfile(backup, path)  # the old copy put back
    restored = open_slots(path)
    assert len(restored) == 0
    assert restored.take(["a-0", "a-1", "a-2"]) == {"a-0": None, "a-1": None, "a-2": None}
    assert path.read_bytes() == bytes(path.stat().st_size)
    # the copy's records cannot be decrypted by anything: the key they were sealed under is gone
    raw = backup.read_bytes()
    for i in range(3):
        assert sec(i) not in raw and sec(i).hex().encode() not in raw


def test_one_process_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))
    with pytest.raises(NonceStoreBusy, match="only one signer of node-1"):
        open_slots(path)
    assert s.take(["a-0"])["a-0"] == bytearray(sec(1))  # the refused opener wiped nothing
    s.close()
    open_slots(path).close()  # released with the store


def test_a_record_swapped_in_from_another_slot_does_not_decrypt(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1), created_ms=1000)
    s.save("a-1", sec(2), created_ms=1000)
    rec0, rec1 = slot_bytes(path, 0), slot_bytes(path, 1)
    # slot 1's record relabelled as a-0 and put in slot 0: the header matches, its AAD does not
    put_slot(path, 0, rec1[:2] + b"a-0" + rec1[5:])
    assert s._peek("a-0") is None
    put_slot(path, 0, rec1)  # as it was: the header names another id
    assert s._peek("a-0") is None
    put_slot(path, 0, rec0)  # control: the original decrypts
    assert s.take(["a-0"]) == {"a-0": bytearray(sec(1))}
    # the same record under another node's name does not decrypt either
    other = open_slots(tmp_path / "m.slots", node="node-2")
    other._aead = s._aead  # even with this process's key
    other.save("a-1", sec(9), created_ms=1000)
    put_slot(tmp_path / "m.slots", 0, rec1)
    assert other._peek("a-1") is None


def test_a_torn_slot_never_yields_the_nonce(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))
    rec = slot_bytes(path, 0)
    torn: list[bytes] = []
    for cut in range(1, SLOT_SIZE):
        torn.append(bytes(cut) + rec[cut:])
        torn.append(rec[:cut] + bytes(SLOT_SIZE - cut))
    torn += [rec[:40] + bytes(40) + rec[80:], rec[:60] + bytes(1) + rec[61:]]
    for raw in torn:
        if raw == rec:
            continue  # only padding changed
        put_slot(path, 0, raw)
        assert s._peek("a-0") is None, raw.hex()
    put_slot(path, 0, rec)
    assert s.take(["a-0"])["a-0"] == bytearray(sec(1))


def test_growth_beyond_one_chunk_and_steady_size(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("x-0", sec(0))
    assert path.stat().st_size == CHUNK_SLOTS * SLOT_SIZE
    for i in range(1, CHUNK_SLOTS + 1):
        s.save(f"x-{i}", sec(i))
    assert path.stat().st_size == 2 * CHUNK_SLOTS * SLOT_SIZE
    assert len(s) == CHUNK_SLOTS + 1
    got = s.take([f"x-{i}" for i in (0, 4095, 4096)])
    assert got == {"x-0": bytearray(sec(0)), "x-4095": bytearray(sec(4095)), "x-4096": bytearray(sec(4096))}
    # the file is already written out: using it changes nothing but slot contents
    size, blocks = path.stat().st_size, path.stat().st_blocks
    for i in range(200):
        s.save(f"y-{i}", sec(i))
        s.take([f"y-{i}"])
    assert (path.stat().st_size, path.stat().st_blocks) == (size, blocks)
    s.close()
    again = open_slots(path)  # a restart keeps the file's size (its slots are free) and wipes it
    assert len(again) == 0 and path.stat().st_size == size
    for i in range(10):
        again.save(f"z-{i}", sec(i))
    assert path.stat().st_size == size and slot_bytes(path, 9)[2:5] == b"z-9"


def test_free_slots_are_reused(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    for i in range(3):
        s.save(f"a-{i}", sec(i))
    s.take(["a-1"])
    s.save("b-0", sec(9))  # the lowest free slot: a-1's
    assert slot_bytes(path, 1)[2:5] == b"b-0"
    assert s.ids() == ["a-0", "b-0", "a-2"]
    s.take(["a-0"])
    s.save("c-0", sec(10))
    assert slot_bytes(path, 0)[2:5] == b"c-0"
    assert s.take(["c-0", "b-0"]) == {"c-0": bytearray(sec(10)), "b-0": bytearray(sec(9))}


def test_sweep_and_count(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    old_ms = int((time.time() - 7200) * 1000)
    s.save("old-0", sec(1), created_ms=old_ms)
    s.save("old-1", sec(2), created_ms=old_ms)
    s.save("new-0", sec(3))
    assert len(s) == 3
    assert s.sweep(3600) == 2
    assert len(s) == 1 and s.ids() == ["new-0"]
    assert slot_bytes(path, 0) == bytes(SLOT_SIZE) and slot_bytes(path, 1) == bytes(SLOT_SIZE)
    assert s.sweep(3600) == 0
    assert s.take(["old-0", "new-0"]) == {"old-0": None, "new-0": bytearray(sec(3))}


def test_invalid_and_overlong_ids_are_refused(tmp_path: Path) -> None:
    s = open_slots(tmp_path / "n.slots")
    s.save("a" * MAX_ID_LEN, sec(1))
    assert s.take(["a" * MAX_ID_LEN])["a" * MAX_ID_LEN] == bytearray(sec(1))
    too_long = "b" * (MAX_ID_LEN + 1)
    with pytest.raises(ValueError, match="longer than"):
        s.save(too_long, sec(1))
    with pytest.raises(ValueError, match="longer than"):
        s.take([too_long])
    with pytest.raises(ValueError, match="longer than"):
        _ = too_long in s
    for bad in ["", "../x", "a/b", ".hidden", "a b"]:
        with pytest.raises(ValueError):
            s.save(bad, sec(1))
    with pytest.raises(ValueError):
        s.save("ok-0", b"\x01" * 63)
    s.save("c-0", sec(2))
    with pytest.raises(ValueError):  # an invalid id in a batch takes nothing
        s.take(["c-0", "a/b"])
    assert "c-0" in s and len(s) == 1
    assert not (tmp_path / "n.slots").read_bytes().count(too_long.encode())


def test_no_secret_in_the_clear_and_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    secs = {f"s-{i}": secrets.token_bytes(64) for i in range(50)}
    for nid, v in secs.items():
        s.save(nid, v)
    raw = path.read_bytes()
    for v in secs.values():
        assert v not in raw and v[:32] not in raw and v[32:] not in raw
        assert v.hex().encode() not in raw
    assert b"s-7" in raw  # ids are public and stored as such: the search looks at the right file
    assert path.stat().st_mode & 0o777 == 0o600
    ct = slot_bytes(path, 0)[34:126]
    s.take(["s-0"])
    assert ct not in path.read_bytes()  # the erase leaves no ciphertext either


def test_take_whose_erase_fails_hands_nothing_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))

    def fail(fd: int, data: bytes, offset: int) -> int:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "pwrite", fail)
    with pytest.raises(OSError):
        s.take(["a-0"])
    monkeypatch.undo()
    assert s.take(["a-0"]) == {"a-0": None}  # not later either


def test_the_files_of_earlier_versions_are_wiped(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1")
    ks.close()
    # nonces/<id>.enc (under the key-encryption key), and slots written under it too
    d = ks.root / "nonces"
    d.mkdir()
    nonce = secrets.token_bytes(12)
    aead = ChaCha20Poly1305(ks._kek(None))
    (d / "aaaaaaaaaaaa-0.enc").write_bytes(
        nonce + aead.encrypt(nonce, sec(1), b"mpcw/node-1/nonce/aaaaaaaaaaaa-0")
    )
    (d / "aaaaaaaaaaaa-1.enc.tmp").write_bytes(b"x")
    old_slot = (
        b"\x01\x03b-0".ljust(26, b"\0") + (1000).to_bytes(8, "big") + nonce
        + aead.encrypt(nonce, sec(2), b"mpcw/node-1/nonce/b-0/slot/0/1000")
    ).ljust(SLOT_SIZE, b"\0")  # fmt: skip
    (ks.root / "nonces.slots").write_bytes(old_slot + bytes(SLOT_SIZE * 3))
    up = Keystore(tmp_path, "node-1")
    assert up.nonce_count() == 0 and not up.has_nonce("aaaaaaaaaaaa-0") and not up.has_nonce("b-0")
    assert not d.exists()
    assert (ks.root / "nonces.slots").read_bytes() == bytes(SLOT_SIZE * 4)


def test_keystore_nonce_api(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1")
    assert not ks.has_nonce("a-0") and ks.nonce_count() == 0
    ks.save_nonce("a-0", sec(1))
    with pytest.raises(KeystoreError, match="already exists"):
        ks.save_nonce("a-0", sec(2))
    assert ks.has_nonce("a-0") and ks.nonce_count() == 1
    with pytest.raises(ValueError):
        ks.has_nonce("a/0")
    assert ks.take_nonce("a-0") == bytearray(sec(1))
    with pytest.raises(NonceConsumed):
        ks.take_nonce("a-0")
    assert not ks.has_nonce("a-0") and ks.nonce_count() == 0
    assert not (ks.root / "nonces").exists()  # the old directory is no longer made
    with pytest.raises(NonceStoreBusy):  # a second keystore of the node cannot take the store
        Keystore(tmp_path, "node-1").open_nonces()
