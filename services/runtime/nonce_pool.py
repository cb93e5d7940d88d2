"""The pool of FROST nonce commitments, as seen from KV ``presig``.

Each signer puts the public halves of the nonces it precomputed, up to ``NONCE_BATCH_MAX`` in one entry,
under ``frost.<key_id>.<node>.b.<batch>``. A nonce is claimed by *creating* ``frost.<key_id>.<node>.c.
<nonce_id>`` (create-only: the server's compare-and-set on "no such key"), so however many consensus
instances race for it, a nonce is handed out at most once, ever. A claimed nonce is never freed again: an
attempt that fails simply burns it. Entries live 24 h in KV (the bucket's TTL); the pool offers a nonce
only while its batch is younger than ``NONCE_MAX_AGE_MS`` (the TTL removes entries without telling the
watch), and a claim outlives that.

A pool that ``follow_claims`` (presig, ``mpcw presig pool-status``) watches every entry, so its levels
count other instances' claims too. Consensus does not: it reads the claims once at start, then watches
only the batches; it knows its own claims, and one made by another consensus instance since shows up as a
failed create, after which the next nonce is tried. That keeps a claim's echo off consensus's connection.
"""

from __future__ import annotations

import asyncio
import time

import msgspec

from schemas import kv as K
from schemas.messages import NonceRef
from schemas.names import BUCKET_PRESIG

from .bus import Bus, CasConflict, KvEntry

_SWEEP_EVERY = 4096  # claims noted between two sweeps of what the pool remembers


def _now_ms() -> int:
    return int(time.time() * 1000)


class NoncePool:
    """Free FROST nonce commitments per node, mirrored from KV ``presig`` by a watch; claimed by create."""

    def __init__(self, bus: Bus, key_id: str = K.DEFAULT_KEY_ID, *, follow_claims: bool = True) -> None:
        self.bus = bus
        self.key_id = key_id
        self.follow_claims = follow_claims
        # node -> nonce id -> (pubnonce, batch created_ms), oldest first
        self.free: dict[str, dict[str, tuple[bytes, int]]] = {}
        # (node, nonce id) -> when this pool learnt it is claimed (ms); forgotten once its nonce is too
        # old to be offered anyway
        self.claimed: dict[tuple[str, str], int] = {}
        self.batches: dict[str, tuple[str, list[str], int]] = {}  # KV key -> (node, nonce ids, created_ms)
        self.loaded = asyncio.Event()
        self.last_update = time.monotonic()  # when the watch last delivered anything
        self._noted = 0

    async def run(self) -> None:
        kv = await self.bus.kv(BUCKET_PRESIG)
        key = self.key_id
        if self.follow_claims:
            watched = f"frost.{key}.>"
        else:
            async for entry in kv.watch(f"frost.{key}.*.c.*"):  # the claims so far, once
                if entry is None:
                    break
                self.apply(entry)
            watched = f"frost.{key}.*.b.*"
        async for entry in kv.watch(watched):
            self.last_update = time.monotonic()
            if entry is None:
                self.loaded.set()
                continue
            self.apply(entry)

    def apply(self, entry: KvEntry) -> None:
        """One KV entry (or its deletion) into the mirror."""
        parsed = K.parse_presig_key(entry.key)
        if parsed is None or parsed[0] != self.key_id:
            return
        _, node, kind, ident = parsed
        if kind == "c":
            if entry.operation == "PUT":  # a claim's deletion frees nothing: a claim is for ever
                self._note_claimed(node, ident)
            return
        if entry.operation != "PUT":
            gone = self.batches.pop(entry.key, None)
            if gone is not None:
                bucket = self.free.get(gone[0], {})
                for nonce_id in gone[1]:
                    bucket.pop(nonce_id, None)
            return
        try:
            batch = entry.decode(K.NonceBatch)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if batch.node != node:
            return  # the broker lets a node write only its own keys; this is not one of them
        bucket = self.free.setdefault(node, {})
        ids: list[str] = []
        for c in batch.nonces:
            ids.append(c.nonce_id)
            if (node, c.nonce_id) not in self.claimed:
                bucket[c.nonce_id] = (c.pubnonce, batch.created_ms)
        self.batches[entry.key] = (node, ids, batch.created_ms)

    def _note_claimed(self, node: str, nonce_id: str) -> None:
        self.claimed[(node, nonce_id)] = _now_ms()
        self.free.get(node, {}).pop(nonce_id, None)
        self._noted += 1
        if self._noted >= _SWEEP_EVERY:
            self._noted = 0
            self._sweep()

    def _sweep(self) -> None:
        """Forget what no longer matters: claims and batches older than any nonce still offered."""
        oldest = _now_ms() - K.NONCE_MAX_AGE_MS
        self.claimed = {k: at for k, at in self.claimed.items() if at >= oldest}
        self.batches = {k: b for k, b in self.batches.items() if b[2] >= oldest}

    def _drop_expired(self, node: str) -> dict[str, tuple[bytes, int]]:
        """The node's free nonces, without those too old to offer (KV drops them at its TTL, silently)."""
        bucket = self.free.get(node, {})
        oldest = _now_ms() - K.NONCE_MAX_AGE_MS
        while bucket:
            nonce_id = next(iter(bucket))  # oldest first
            if bucket[nonce_id][1] >= oldest:
                break
            del bucket[nonce_id]
        return bucket

    def level(self, node: str) -> int:
        return len(self._drop_expired(node))

    async def claim(self, node: str, count: int, tx_id: str, attempt: int) -> list[NonceRef] | None:
        """``count`` nonces of ``node`` for attempt ``attempt`` of ``tx_id``, or None when the pool runs
        out first (the ones claimed by then stay claimed: a nonce is never handed out twice)."""
        kv = await self.bus.kv(BUCKET_PRESIG)
        got: list[NonceRef] = []
        bucket = self._drop_expired(node)
        while len(got) < count and bucket:
            nonce_id = next(iter(bucket))
            pubnonce, _ = bucket[nonce_id]
            self._note_claimed(node, nonce_id)  # taken off the pool before the await: never offered twice
            claim = K.NonceClaim(
                node=node, nonce_id=nonce_id, tx_id=tx_id, attempt=attempt, claimed_ms=_now_ms()
            )
            try:
                await kv.create(K.nonce_claim_key(self.key_id, node, nonce_id), claim)
            except CasConflict:
                continue  # another consensus instance has it
            got.append(NonceRef(nonce_id=nonce_id, pubnonce=pubnonce))
        if len(got) < count:
            return None
        return got
