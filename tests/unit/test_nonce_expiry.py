"""Nonce pool entries expire: KV ``presig`` drops them after its TTL (without telling the watch), pools stop
offering them an hour before, and signers delete the secret halves nobody can claim any more."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas import kv as K
from services.runtime import nonce_pool
from services.runtime.bus import CasConflict, KvEntry
from services.runtime.nonce_pool import NoncePool
from services.signer import nonce_slots
from services.signer.keystore import Keystore

ROOT = Path(__file__).resolve().parents[2]


class FakeKV:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.taken: set[str] = set()  # claim keys another consensus instance created first

    async def create(self, key: str, value: Any) -> int:
        await asyncio.sleep(0)  # a round trip: other claims run meanwhile
        if key in self.taken:
            raise CasConflict("presig", key, None)
        self.created.append(key)
        return len(self.created)


class FakeBus:
    service = "consensus"

    def __init__(self) -> None:
        self.presig = FakeKV()

    async def kv(self, bucket: str) -> FakeKV:
        return self.presig


def batch_entry(batch_id: str, age_ms: int, count: int = 2, node: str = "node-1") -> KvEntry:
    now = int(time.time() * 1000)
    batch = K.NonceBatch(
        node=node,
        batch_id=batch_id,
        created_ms=now - age_ms,
        nonces=[K.NonceCommitment(f"{batch_id}-{k}", b"\x02" * 66) for k in range(count)],
    )
    return KvEntry(K.nonce_batch_key("default", node, batch_id), msgspec.msgpack.encode(batch), 1, "PUT")


def claim_entry(batch_id: str, node: str = "node-1") -> KvEntry:
    claim = K.NonceClaim(node=node, batch_id=batch_id, by="consensus", claimed_ms=0)
    return KvEntry(K.nonce_claim_key("default", node, batch_id), msgspec.msgpack.encode(claim), 1, "PUT")


async def test_pools_neither_count_nor_hand_out_expired_nonces() -> None:
    bus = FakeBus()
    pool = NoncePool(bus)  # type: ignore[arg-type]
    pool.apply(batch_entry("a", K.NONCE_MAX_AGE_MS + 60_000))
    pool.apply(batch_entry("b", 5_000))
    assert pool.level("node-1") == 2
    got = await pool.claim("node-1", 1, "tx", 1)
    assert got is not None and [r.nonce_id for r in got] == ["b-0"]
    assert bus.presig.created == ["frost.default.node-1.c.b"]  # the expired batch was never tried
    assert pool.level("node-1") == 1 and pool.level("node-9") == 0


async def test_a_claimed_batch_is_never_offered_again() -> None:
    bus = FakeBus()
    pool = NoncePool(bus)  # type: ignore[arg-type]
    pool.apply(claim_entry("a"))  # a claim seen before its batch (the watch's order is the bucket's)
    for b in ("a", "b", "c", "d"):
        pool.apply(batch_entry(b, 1_000, count=3))
    assert list(pool.free["node-1"]) == ["b", "c", "d"] and pool.level("node-1") == 9
    pool.apply(claim_entry("c"))  # another process claimed c
    bus.presig.taken.add("frost.default.node-1.c.b")  # ... and b, unknown to this pool until it tries
    got = await pool.claim("node-1", 2, "tx", 1)
    assert got is not None and [r.nonce_id for r in got] == ["d-0", "d-1"]
    assert bus.presig.created == ["frost.default.node-1.c.d"]
    assert pool.level("node-1") == 1  # d-2, this process's own
    got = await pool.claim("node-1", 2, "tx2", 1)
    assert got is None  # d-2 went to it, then nothing was left
    pool.apply(batch_entry("d", 1_000, count=3))  # a watch re-created after a reconnect replays it
    assert pool.level("node-1") == 0
    pool.apply(batch_entry("e", 1_000, count=3))
    pool.apply(KvEntry(K.nonce_batch_key("default", "node-1", "e"), b"", 2, "DEL"))
    assert pool.level("node-1") == 0
    pool.apply(batch_entry("f", 1_000, count=3))
    assert pool.level("node-1") == 3


async def test_a_withdrawn_batch_is_dropped_even_once_claimed() -> None:
    """A restarted signer deletes its batches (their nonces died with its process): a pool no longer
    hands out their nonces, not even the ones of a batch it claimed already."""
    bus = FakeBus()
    pool = NoncePool(bus)  # type: ignore[arg-type]
    for b in ("a", "b"):
        pool.apply(batch_entry(b, 1_000, count=3))
    got = await pool.claim("node-1", 1, "tx", 1)
    assert got is not None and [r.nonce_id for r in got] == ["a-0"]
    assert pool.level("node-1") == 5  # a-1, a-2 held by this process, b unclaimed
    for b in ("a", "b"):
        pool.apply(KvEntry(K.nonce_batch_key("default", "node-1", b), b"", 9, "DEL"))
    assert pool.level("node-1") == 0
    assert await pool.claim("node-1", 1, "tx2", 1) is None
    pool.apply(batch_entry("c", 1_000, count=3))  # the restarted signer's fresh batch
    got = await pool.claim("node-1", 1, "tx3", 1)
    assert got is not None and [r.nonce_id for r in got] == ["c-0"]


async def test_nonces_of_a_claimed_batch_expire_too(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = NoncePool(FakeBus())  # type: ignore[arg-type]
    pool.apply(batch_entry("a", 1_000, count=3))
    assert await pool.claim("node-1", 1, "tx", 1) is not None
    assert pool.level("node-1") == 2  # held by this process
    later = int(time.time() * 1000) + K.NONCE_MAX_AGE_MS
    monkeypatch.setattr(nonce_pool, "_now_ms", lambda: later)
    assert pool.level("node-1") == 0 and await pool.claim("node-1", 1, "tx2", 1) is None


async def test_concurrent_claims_share_one_batch_claim() -> None:
    bus = FakeBus()
    pool = NoncePool(bus)  # type: ignore[arg-type]
    for b in ("a", "b", "c"):
        pool.apply(batch_entry(b, 1_000, count=8))
    got = await asyncio.gather(*(pool.claim("node-1", 1, f"t{i}", 1) for i in range(10)))
    ids = [r.nonce_id for g in got if g is not None for r in g]
    assert len(ids) == 10 == len(set(ids))
    assert bus.presig.created == ["frost.default.node-1.c.a", "frost.default.node-1.c.b"]
    assert pool.level("node-1") == 14


def test_a_batch_under_another_nodes_name_is_ignored() -> None:
    pool = NoncePool(FakeBus())  # type: ignore[arg-type]
    forged = batch_entry("x", 1_000, node="node-2")
    pool.apply(KvEntry(K.nonce_batch_key("default", "node-1", "x"), forged.value, 1, "PUT"))
    renamed = batch_entry("y", 1_000)
    pool.apply(KvEntry(K.nonce_batch_key("default", "node-1", "z"), renamed.value, 1, "PUT"))
    pool.apply(KvEntry("frost.default.node-1.x", b"junk", 1, "PUT"))  # not a pool key
    pool.apply(KvEntry(K.nonce_batch_key("default", "node-1", "w"), b"junk", 1, "PUT"))  # undecodable
    assert pool.level("node-1") == 0 and pool.level("node-2") == 0


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
    assert ks.take_nonces(["old-0", "new-0"]) == {"old-0": None, "new-0": bytearray(b"\x02" * 64)}
    assert ks.sweep_nonces(K.NONCE_FILE_MAX_AGE_S) == 0


def test_the_ages_fit_the_bucket_ttl() -> None:
    defs = json.loads((ROOT / "nats" / "jetstream.json").read_text())
    ttl_s = {b["bucket"]: b["ttl"] for b in defs["buckets"]}
    # offered only well before KV forgets the entry; secret halves kept until it surely has
    assert K.NONCE_MAX_AGE_MS / 1000 + 600 <= ttl_s["presig"] < K.NONCE_FILE_MAX_AGE_S
    assert ttl_s["rounds"] >= 24 * 3600  # a round and its final.<tx> outlive every retry by far
