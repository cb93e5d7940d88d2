"""The slot file of pooled secret nonces (services/signer/nonce_slots.py): at most one use per nonce, even
across reopen, torn erases and copied records; growth, reuse, sweep and the import of the old layout."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from services.signer.keystore import Keystore, KeystoreError, NonceConsumed
from services.signer.nonce_slots import CHUNK_SLOTS, MAX_ID_LEN, SLOT_SIZE, NonceSlots

KEY = b"\x5a" * 32


def open_slots(path: Path, node: str = "node-1", key: bytes = KEY) -> NonceSlots:
    return NonceSlots(path, ChaCha20Poly1305(key), node, check_name=Keystore._check_name)


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


def test_take_is_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))
    s.save("a-1", sec(2))
    assert s.take(["a-0"])["a-0"] == bytearray(sec(1))
    s.close()
    again = open_slots(path)
    assert len(again) == 1 and again.ids() == ["a-1"]
    assert again.take(["a-0", "a-1"]) == {"a-0": None, "a-1": bytearray(sec(2))}
    assert slot_bytes(path, 0) == bytes(SLOT_SIZE) and slot_bytes(path, 1) == bytes(SLOT_SIZE)
    # the Keystore API over the same directory
    ks = Keystore(tmp_path, "node-1")
    ks.save_nonce("k-0", sec(3))
    assert ks.take_nonce("k-0") == bytearray(sec(3))
    with pytest.raises(NonceConsumed):
        Keystore(tmp_path, "node-1").take_nonce("k-0")


def test_record_copied_to_another_slot_name_or_node_does_not_decrypt(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))
    rec = slot_bytes(path, 0)
    s.close()
    # moved to slot 7 (the original erased): indexed there, but its AAD names slot 0
    put_slot(path, 0, bytes(SLOT_SIZE))
    put_slot(path, 7, rec)
    moved = open_slots(path)
    assert moved.ids() == ["a-0"]
    assert moved.take(["a-0"]) == {"a-0": None}
    moved.close()
    # renamed in place (same length id)
    put_slot(path, 0, rec[:2] + b"b-0" + rec[5:])
    renamed = open_slots(path)
    assert renamed.ids() == ["b-0"]
    assert renamed.take(["b-0"]) == {"b-0": None}
    renamed.close()
    # the whole file given to another node with the same key
    put_slot(path, 0, rec)
    assert open_slots(path, node="node-2").take(["a-0"]) == {"a-0": None}
    # ... or read under another key
    put_slot(path, 0, rec)
    assert open_slots(path, key=b"\x01" * 32).take(["a-0"]) == {"a-0": None}
    # the original, back in place, still decrypts: the checks above are not vacuous
    put_slot(path, 0, rec)
    assert open_slots(path).take(["a-0"]) == {"a-0": bytearray(sec(1))}


def test_an_id_found_in_two_slots_is_erased_in_both(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))
    s.close()
    put_slot(path, 3, slot_bytes(path, 0))
    again = open_slots(path)
    assert len(again) == 0 and again.take(["a-0"]) == {"a-0": None}
    assert slot_bytes(path, 0) == bytes(SLOT_SIZE) and slot_bytes(path, 3) == bytes(SLOT_SIZE)


def test_torn_erase_never_yields_the_nonce(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))
    rec = slot_bytes(path, 0)
    s.close()
    used = len(rec.rstrip(b"\0"))  # bytes past this are padding, zero already
    assert used > 100
    torn: list[bytes] = []
    for cut in range(1, SLOT_SIZE):
        torn.append(bytes(cut) + rec[cut:])  # the erase reached only the start
        torn.append(rec[:cut] + bytes(SLOT_SIZE - cut))  # ... or only the end
    torn += [rec[:40] + bytes(40) + rec[80:], rec[:60] + bytes(1) + rec[61:]]
    for raw in torn:
        if raw == rec:
            continue  # only padding was "erased"
        put_slot(path, 0, raw)
        got = open_slots(path).take(["a-0"])["a-0"]
        assert got is None, raw.hex()
    put_slot(path, 0, rec)  # control: the intact record decrypts
    assert open_slots(path).take(["a-0"])["a-0"] == bytearray(sec(1))


def test_growth_beyond_one_chunk_and_steady_size(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("x-0", sec(0))
    assert path.stat().st_size == CHUNK_SLOTS * SLOT_SIZE
    for i in range(1, CHUNK_SLOTS + 1):
        s.save(f"x-{i}", sec(i))
    assert path.stat().st_size == 2 * CHUNK_SLOTS * SLOT_SIZE
    assert len(s) == CHUNK_SLOTS + 1
    s.close()
    again = open_slots(path)
    assert len(again) == CHUNK_SLOTS + 1
    got = again.take([f"x-{i}" for i in (0, 4095, 4096)])
    assert got == {"x-0": bytearray(sec(0)), "x-4095": bytearray(sec(4095)), "x-4096": bytearray(sec(4096))}
    # the file is already written out: using it changes nothing but slot contents
    size, blocks = path.stat().st_size, path.stat().st_blocks
    for i in range(200):
        again.save(f"y-{i}", sec(i))
        again.take([f"y-{i}"])
    assert (path.stat().st_size, path.stat().st_blocks) == (size, blocks)


def test_free_slots_are_reused(tmp_path: Path) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    for i in range(3):
        s.save(f"a-{i}", sec(i))
    s.take(["a-1"])
    s.save("b-0", sec(9))  # the lowest free slot: a-1's
    assert slot_bytes(path, 1)[2:5] == b"b-0"
    s.close()
    again = open_slots(path)
    assert again.ids() == ["a-0", "b-0", "a-2"]
    again.take(["a-0"])
    again.save("c-0", sec(10))
    assert slot_bytes(path, 0)[2:5] == b"c-0"
    assert again.take(["c-0", "b-0"]) == {"c-0": bytearray(sec(10)), "b-0": bytearray(sec(9))}


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
    assert s.sweep(3600) == 0
    s.close()
    again = open_slots(path)  # the creation time survives a reopen (and the sweep was durable)
    assert again.ids() == ["new-0"]
    again.save("old-2", sec(4), created_ms=old_ms)
    again.close()
    third = open_slots(path)
    assert third.sweep(3600) == 1
    assert third.take(["old-0", "old-2", "new-0"]) == {
        "old-0": None,
        "old-2": None,
        "new-0": bytearray(sec(3)),
    }


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


def test_take_whose_sync_fails_hands_nothing_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "n.slots"
    s = open_slots(path)
    s.save("a-0", sec(1))

    def fail(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(OSError):
        s.take(["a-0"])
    monkeypatch.undo()
    assert s.take(["a-0"]) == {"a-0": None}  # not twice from this process
    s.save("b-0", sec(2))
    assert slot_bytes(path, 0) == bytes(SLOT_SIZE)  # the un-synced slot is not handed to a save
    assert slot_bytes(path, 1)[2:5] == b"b-0"


def legacy_file(ks: Keystore, nonce_id: str, secnonce: bytes, mtime: float | None = None) -> Path:
    """A nonce stored as the previous version did: nonces/<id>.enc, AAD mpcw/<node>/nonce/<id>."""
    d = ks.root / "nonces"
    d.mkdir(exist_ok=True)
    nonce = secrets.token_bytes(12)
    blob = nonce + ChaCha20Poly1305(ks._kek(None)).encrypt(
        nonce, secnonce, f"mpcw/{ks.node}/nonce/{nonce_id}".encode()
    )
    path = d / f"{nonce_id}.enc"
    path.write_bytes(blob)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_legacy_nonce_files_are_imported_then_deleted(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1")
    ks.close()
    old_t = time.time() - 7200
    legacy_file(ks, "aaaaaaaaaaaa-0", sec(1), mtime=old_t)
    legacy_file(ks, "aaaaaaaaaaaa-1", sec(2))
    copied = legacy_file(ks, "aaaaaaaaaaaa-2", sec(3))
    copied.rename(copied.with_name("aaaaaaaaaaaa-3.enc"))  # another name: its AAD no longer matches
    (ks.root / "nonces" / "aaaaaaaaaaaa-4.enc").write_bytes(secrets.token_bytes(92))  # garbage
    (ks.root / "nonces" / "aaaaaaaaaaaa-5.enc.tmp").write_bytes(b"x")  # a write never renamed
    legacy_file(ks, "c" * (MAX_ID_LEN + 1), sec(4))  # cannot live in a slot
    legacy_file(ks, "aaaaaaaaaaaa-6", sec(6)[:32])  # wrong length

    up = Keystore(tmp_path, "node-1")
    assert not (ks.root / "nonces").exists()
    assert up.nonce_count() == 2
    assert up.has_nonce("aaaaaaaaaaaa-0") and up.has_nonce("aaaaaaaaaaaa-1")
    assert not up.has_nonce("aaaaaaaaaaaa-3") and not up.has_nonce("aaaaaaaaaaaa-4")
    assert sec(1) not in (ks.root / "nonces.slots").read_bytes()
    up.close()
    again = Keystore(tmp_path, "node-1")  # the import was durable and is not repeated
    assert again.nonce_count() == 2
    assert again.sweep_nonces(3600) == 1  # the old file's mtime became its creation time
    assert again.take_nonces(["aaaaaaaaaaaa-0", "aaaaaaaaaaaa-1"]) == {
        "aaaaaaaaaaaa-0": None,
        "aaaaaaaaaaaa-1": bytearray(sec(2)),
    }


def test_legacy_import_interrupted_before_the_delete(tmp_path: Path) -> None:
    ks = Keystore(tmp_path, "node-1")
    ks.save_nonce("aaaaaaaaaaaa-0", sec(1))  # as if imported, then a crash before the old file went
    ks.close()
    legacy_file(ks, "aaaaaaaaaaaa-0", sec(1))
    up = Keystore(tmp_path, "node-1")
    assert up.nonce_count() == 1 and not (ks.root / "nonces").exists()
    assert up.take_nonce("aaaaaaaaaaaa-0") == bytearray(sec(1))
    assert Keystore(tmp_path, "node-1").nonce_count() == 0


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
    assert not ks.has_nonce("a-0") and ks.nonce_count() == 0
    assert not (ks.root / "nonces").exists()  # the old directory is no longer made
