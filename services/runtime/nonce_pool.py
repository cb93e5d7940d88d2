"""The pool of precommitted signing material, as seen from KV ``presig``: the material of a scheme
whose signers each make their own, one item per input, usable with any signer set (FROST nonces:
:attr:`core.scheme.SigningScheme.material`); ``<scheme>`` below is that scheme's wire name.

Each signer puts the public halves of the nonces it precomputed, up to ``NONCE_BATCH_MAX`` in one entry,
under ``<scheme>.<key_id>.<node>.b.<batch>``. A consensus process claims a whole batch by *creating*
``<scheme>.<key_id>.<node>.c.<batch>`` (create-only: the server's compare-and-set on "no such key"), then
hands its nonces out one at a time from memory, each at most once. However many consensus processes race
for a batch, one gets it; a claimed batch is never claimed again, and the nonces its claimer has not
handed out when it stops are never used (burned: a restarted process does not know which ones it used,
so it claims fresh batches). One KV write per batch instead of one per nonce keeps the pool off the
spend's path.

A signer deletes its batches when it restarts (the nonces died with its process): a deleted batch is no
longer offered, and its nonces this process claimed but has not handed out are dropped.

Entries live 24 h in KV (the bucket's TTL); a nonce is offered only while its batch is younger than
``NONCE_MAX_AGE_MS`` (the TTL removes entries without telling the watch), and a claim outlives that.

A pool that ``follow_claims`` (presig, ``mpcw presig pool-status``) watches every entry, so its levels
leave out every process's claimed batches. Consensus does not: it reads the claims once at start, then
watches only the batches; a batch another consensus process claimed since shows up as a failed create,
after which the next batch is tried.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

import msgspec

from core.scheme import DEFAULT_SCHEME, SigningScheme, scheme_for
from schemas import kv as K
from schemas.messages import NonceRef
from schemas.names import BUCKET_PRESIG

from .bus import Bus, CasConflict, KvEntry

_SWEEP_EVERY = 1024  # claims noted between two sweeps of what the pool remembers


def _now_ms() -> int:
    return int(time.time() * 1000)


class NoncePool:
    """Nonce commitments per node, mirrored from KV ``presig`` by a watch; batches claimed by create."""

    def __init__(
        self,
        bus: Bus,
        key_id: str = K.DEFAULT_KEY_ID,
        *,
        follow_claims: bool = True,
        scheme: SigningScheme | None = None,
    ) -> None:
        self.scheme = scheme_for(DEFAULT_SCHEME) if scheme is None else scheme
        material = self.scheme.material
        if material.bound_to_signer_set or material.bound_to_derivation:
            raise ValueError(f"{self.scheme.name} {material.name}s are not pooled per node")
        self.bus = bus
        self.key_id = key_id
        self.follow_claims = follow_claims
        # node -> batch id -> the unclaimed batch, oldest first
        self.free: dict[str, dict[str, K.NonceBatch]] = {}
        # node -> nonces of batches this process claimed and has not handed out yet, oldest first, with
        # their batch's creation time and id
        self.mine: dict[str, deque[tuple[K.NonceCommitment, int, str]]] = {}
        # (node, batch id) -> when this pool learnt the batch is claimed (ms); forgotten once its nonces
        # are too old to be offered anyway
        self.claimed: dict[tuple[str, str], int] = {}
        self.loaded = asyncio.Event()
        self.last_update = time.monotonic()  # when the watch last delivered anything
        self._noted = 0
        self._claiming: dict[str, asyncio.Future[bool]] = {}  # node -> its batch claim in flight

    async def run(self) -> None:
        kv = await self.bus.kv(BUCKET_PRESIG)
        key = self.key_id
        if self.follow_claims:
            watched = f"{self.scheme.name}.{key}.>"
        else:
            async for entry in kv.watch(f"{self.scheme.name}.{key}.*.c.*"):  # the claims so far, once
                if entry is None:
                    break
                self.apply(entry)
            watched = f"{self.scheme.name}.{key}.*.b.*"
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
        _, node, kind, batch_id = parsed
        if kind == "c":
            if entry.operation == "PUT":  # a claim's deletion frees nothing: a claim is for ever
                self._note_claimed(node, batch_id)
            return
        if entry.operation != "PUT":  # withdrawn by its signer (restarted: the nonces died with it)
            self.free.get(node, {}).pop(batch_id, None)
            mine = self.mine.get(node)
            if mine and any(b == batch_id for _, _, b in mine):
                kept = [m for m in mine if m[2] != batch_id]
                mine.clear()  # in place: a claim in progress holds this deque
                mine.extend(kept)
            return
        try:
            batch = entry.decode(K.NonceBatch)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return
        if batch.node != node or batch.batch_id != batch_id:
            return  # the broker lets a node write only its own keys; this is not one of them
        if (node, batch_id) not in self.claimed:
            self.free.setdefault(node, {})[batch_id] = batch

    def _note_claimed(self, node: str, batch_id: str) -> None:
        self.claimed[(node, batch_id)] = _now_ms()
        self.free.get(node, {}).pop(batch_id, None)
        self._noted += 1
        if self._noted >= _SWEEP_EVERY:
            self._noted = 0
            oldest = _now_ms() - K.NONCE_MAX_AGE_MS
            self.claimed = {k: at for k, at in self.claimed.items() if at >= oldest}

    def _drop_expired(self, node: str) -> None:
        """Forget the node's nonces too old to offer (KV drops them at its TTL, silently)."""
        oldest = _now_ms() - K.NONCE_MAX_AGE_MS
        batches = self.free.get(node, {})
        while batches:
            batch_id = next(iter(batches))  # oldest first
            if batches[batch_id].created_ms >= oldest:
                break
            del batches[batch_id]
        mine = self.mine.get(node)
        while mine and mine[0][1] < oldest:
            mine.popleft()

    def level(self, node: str) -> int:
        """Nonces of ``node`` this pool can still hand out (or, following claims, nobody has claimed)."""
        self._drop_expired(node)
        return len(self.mine.get(node, ())) + sum(len(b.nonces) for b in self.free.get(node, {}).values())

    async def claim(self, node: str, count: int, tx_id: str, attempt: int) -> list[NonceRef] | None:
        """``count`` nonces of ``node`` for attempt ``attempt`` of ``tx_id``, or None when the pool runs
        out first (the ones taken by then stay taken: a nonce is never handed out twice). Concurrent
        callers short of nonces wait for one batch claim, not one each."""
        self._drop_expired(node)
        mine = self.mine.setdefault(node, deque())
        got: list[NonceRef] = []
        while len(got) < count:
            if mine:
                c, _, _ = mine.popleft()
                got.append(NonceRef(nonce_id=c.nonce_id, pubnonce=c.pubnonce))
                continue
            claiming = self._claiming.get(node)
            if claiming is None or claiming.done():
                claiming = asyncio.ensure_future(self._claim_batch(node))
                self._claiming[node] = claiming
            if not await asyncio.shield(claiming):
                return None
        return got

    async def _claim_batch(self, node: str) -> bool:
        """Claim the oldest unclaimed batch of ``node`` into ``mine``; False when there is none."""
        kv = await self.bus.kv(BUCKET_PRESIG)
        batches = self.free.get(node, {})
        while batches:
            batch_id = next(iter(batches))
            batch = batches[batch_id]
            self._note_claimed(node, batch_id)  # off the free list before the await: claimed once here
            claim = K.NonceClaim(node=node, batch_id=batch_id, by=self.bus.service, claimed_ms=_now_ms())
            try:
                await kv.create(K.nonce_claim_key(self.key_id, node, batch_id), claim)
            except CasConflict:
                continue  # another consensus process has it
            self.mine.setdefault(node, deque()).extend((c, batch.created_ms, batch_id) for c in batch.nonces)
            return True
        return False
