"""Nonce pool entries expire: KV ``presig`` drops them after its TTL (without telling the watch), pools stop
offering them an hour before, and signers delete the secret halves nobody can claim any more."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas import kv as K
from services.runtime.nonce_pool import NoncePool
from services.signer import nonce_slots
from services.signer.keystore import Keystore

ROOT = Path(__file__).resolve().parents[2]


class FakeKV:
    def __init__(self) -> None:
        self.updates: list[str] = []

    async def update_cas(self, key: str, value: Any, revision: int) -> int:
        self.updates.append(key)
        return revision + 1


class FakeBus:
    def __init__(self) -> None:
        self.presig = FakeKV()

    async def kv(self, bucket: str) -> FakeKV:
        return self.presig


def entry(nonce_id: str, age_ms: int) -> K.NonceEntry:
    now = int(time.time() * 1000)
    return K.NonceEntry(node="node-1", nonce_id=nonce_id, pubnonce=b"\x02" * 66, created_ms=now - age_ms)


async def test_pools_neither_count_nor_hand_out_expired_nonces() -> None:
    bus = FakeBus()
    pool = NoncePool(bus)  # type: ignore[arg-type]
    old = K.NONCE_MAX_AGE_MS + 60_000
    pool.free["node-1"] = {
        f"frost.default.node-1.{n}": (i + 1, entry(n, age))
        for i, (n, age) in enumerate([("a-0", old), ("a-1", old), ("b-0", 5_000), ("b-1", 1_000)])
    }
    assert pool.level("node-1") == 2
    got = await pool.claim("node-1", 1, "tx", 1)
    assert got is not None and [r.nonce_id for r in got] == ["b-0"]
    assert bus.presig.updates == ["frost.default.node-1.b-0"]  # the expired ones were never tried
    assert pool.level("node-1") == 1 and pool.level("node-9") == 0


def test_signers_delete_secret_nonces_past_the_kv_ttl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ks = Keystore(tmp_path, "node-1")
    past = time.time() - K.NONCE_FILE_MAX_AGE_S - 60
    with monkeypatch.context() as m:  # the slot file's clock, when the old nonce was made
        m.setattr(nonce_slots, "time", SimpleNamespace(time=lambda: past))
        ks.save_nonce("old-0", b"\x01" * 64)
    ks.save_nonce("new-0", b"\x02" * 64)
    assert ks.sweep_nonces(K.NONCE_FILE_MAX_AGE_S) == 1
    assert ks.nonce_count() == 1 and not ks.has_nonce("old-0")
    assert Keystore(tmp_path, "node-1").nonce_count() == 1  # the sweep is durable
    assert ks.take_nonces(["old-0", "new-0"]) == {"old-0": None, "new-0": bytearray(b"\x02" * 64)}
    assert ks.sweep_nonces(K.NONCE_FILE_MAX_AGE_S) == 0


def test_the_ages_fit_the_bucket_ttl() -> None:
    defs = json.loads((ROOT / "nats" / "jetstream.json").read_text())
    ttl_s = {b["bucket"]: b["ttl"] for b in defs["buckets"]}
    # offered only well before KV forgets the entry; secret halves kept until it surely has
    assert K.NONCE_MAX_AGE_MS / 1000 + 600 <= ttl_s["presig"] < K.NONCE_FILE_MAX_AGE_S
    assert ttl_s["rounds"] >= 24 * 3600  # a round and its final.<tx> outlive every retry by far
    assert msgspec.json.decode(msgspec.json.encode(entry("x", 0)), type=K.NonceEntry).created_ms > 0


def test_signers_delete_answers_a_day_old(tmp_path: Path) -> None:
    """The kept answers (one file per signing attempt) do not pile up for ever."""
    from services.signer.node import ANSWER_MAX_AGE_S, sweep_answers

    old, fresh = tmp_path / "s-old-a1.psig", tmp_path / "s-new-a1.refused"
    old.write_bytes(b"x")
    fresh.write_bytes(b"y")
    then = time.time() - ANSWER_MAX_AGE_S - 60
    os.utime(old, (then, then))
    assert sweep_answers(tmp_path, ANSWER_MAX_AGE_S) == 1
    assert not old.exists() and fresh.exists()
    assert sweep_answers(tmp_path, ANSWER_MAX_AGE_S) == 0
