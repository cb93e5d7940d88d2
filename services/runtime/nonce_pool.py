"""The pool of FROST nonce commitments, as seen from KV ``presig``.

Each signer puts the public halves of the nonces it precomputed under
``frost.<key_id>.<node>.<nonce_id>`` (state ``free``). A watch mirrors the free ones per node; ``claim``
moves an entry to ``claimed`` by compare-and-set on its revision, so however many consensus instances
race for it, a nonce is handed out at most once, ever. A claimed nonce is never freed again: an attempt
that fails simply burns it. Entries live 24 h in KV (the bucket's TTL); the pool offers a nonce only
while it is younger than ``NONCE_MAX_AGE_MS`` (the TTL removes entries without telling the watch).
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from schemas import kv as K
from schemas.messages import NonceRef
from schemas.names import BUCKET_PRESIG

from .bus import Bus, CasConflict


class NoncePool:
    """Free FROST nonce commitments per node, mirrored from KV ``presig`` by a watch; claimed by CAS."""

    def __init__(self, bus: Bus, key_id: str = K.DEFAULT_KEY_ID) -> None:
        self.bus = bus
        self.key_id = key_id
        # node -> KV key -> (revision, entry) of the free ones, oldest first
        self.free: dict[str, dict[str, tuple[int, K.NonceEntry]]] = {}
        self.loaded = asyncio.Event()
        self.last_update = time.monotonic()  # when the watch last delivered anything

    async def run(self) -> None:
        kv = await self.bus.kv(BUCKET_PRESIG)
        prefix = f"frost.{self.key_id}."
        async for entry in kv.watch(f"frost.{self.key_id}.>"):
            self.last_update = time.monotonic()
            if entry is None:
                self.loaded.set()
                continue
            node = entry.key[len(prefix) :].split(".", 1)[0]
            bucket = self.free.setdefault(node, {})
            if entry.operation != "PUT":
                bucket.pop(entry.key, None)
                continue
            try:
                ne = entry.decode(K.NonceEntry)
            except (msgspec.DecodeError, msgspec.ValidationError):
                bucket.pop(entry.key, None)
                continue
            if ne.state == "free":
                bucket[entry.key] = (entry.revision, ne)
            else:
                bucket.pop(entry.key, None)

    def _drop_expired(self, node: str) -> dict[str, tuple[int, K.NonceEntry]]:
        """The node's free entries, without those too old to offer (KV drops them at its TTL, silently)."""
        bucket = self.free.get(node, {})
        oldest = int(time.time() * 1000) - K.NONCE_MAX_AGE_MS
        while bucket:
            key = next(iter(bucket))  # oldest first
            if bucket[key][1].created_ms >= oldest:
                break
            del bucket[key]
        return bucket

    def level(self, node: str) -> int:
        return len(self._drop_expired(node))

    async def claim(self, node: str, count: int, tx_id: str, attempt: int) -> list[NonceRef] | None:
        kv = await self.bus.kv(BUCKET_PRESIG)
        got: list[NonceRef] = []
        bucket = self._drop_expired(node)
        while len(got) < count and bucket:
            key = next(iter(bucket))
            revision, ne = bucket.pop(key)
            claimed = msgspec.structs.replace(ne, state="claimed", tx_id=tx_id, attempt=attempt)
            try:
                # the revision the watch saw: if anything changed the entry since, the CAS fails
                await kv.update_cas(key, claimed, revision)
            except CasConflict:
                continue
            got.append(NonceRef(nonce_id=ne.nonce_id, pubnonce=ne.pubnonce))
        if len(got) < count:
            return None  # the claimed ones stay claimed: a nonce is never handed out twice
        return got
