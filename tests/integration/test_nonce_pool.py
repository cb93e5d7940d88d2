"""The FROST nonce pool on a real JetStream KV bucket: nodes announce their commitments in batches; two
consensus processes (pools that do not follow claims) claim whole batches and hand their nonces out;
presig (a pool that does follow them) mirrors the unclaimed ones. Every nonce is handed out at most once
however the processes race, a restarted process never offers a batch claimed before, and presig's
levels leave out every process's claims."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable

from schemas import kv as K
from schemas.names import BUCKET_PRESIG
from services.runtime.bus import Bus
from services.runtime.nonce_pool import NoncePool

BusFactory = Callable[..., Awaitable[Bus]]


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def announce(bus: Bus, key_id: str, node: str, batch_id: str, count: int) -> list[str]:
    ids = [f"{batch_id}-{k}" for k in range(count)]
    batch = K.NonceBatch(
        node=node,
        batch_id=batch_id,
        created_ms=int(time.time() * 1000),
        nonces=[K.NonceCommitment(i, secrets.token_bytes(66)) for i in ids],
    )
    await (await bus.kv(BUCKET_PRESIG)).create(K.nonce_batch_key(key_id, node, batch_id), batch)
    return ids


async def test_two_instances_never_hand_out_a_nonce_twice(bus_factory: BusFactory) -> None:
    key_id = f"k{secrets.token_hex(4)}"  # a key of its own: the bucket is shared with other tests
    node = await bus_factory("node-1")
    consensus = await bus_factory("consensus")
    presig = await bus_factory("presig")
    a = NoncePool(consensus, key_id, follow_claims=False)
    b = NoncePool(consensus, key_id, follow_claims=False)
    watcher = NoncePool(presig, key_id)
    tasks = [asyncio.create_task(p.run()) for p in (a, b, watcher)]
    try:
        await asyncio.gather(*(p.loaded.wait() for p in (a, b, watcher)))
        ids: list[str] = []
        for i in range(6):
            ids += await announce(node, key_id, "node-1", f"b{i}", 10)
        await until(lambda: all(p.level("node-1") == 60 for p in (a, b, watcher)))

        claims = await asyncio.gather(
            *(pool.claim("node-1", 1, f"t{i}", 1) for i in range(25) for pool in (a, b))
        )
        got = [r.nonce_id for c in claims if c is not None for r in c]
        assert len(got) == 50 and len(got) == len(set(got)), "a nonce was handed out twice"
        assert set(got) <= set(ids)
        # presig sees the claimed batches leave the pool (each process claimed whole batches)
        claimed_batches = {n.rsplit("-", 1)[0] for n in got}
        await until(lambda: watcher.level("node-1") == 60 - 10 * len(claimed_batches))

        # a consensus process started now reads the claims first: it offers only unclaimed batches
        c = NoncePool(consensus, key_id, follow_claims=False)
        tasks.append(asyncio.create_task(c.run()))
        await c.loaded.wait()
        assert c.level("node-1") == 60 - 10 * len(claimed_batches)
        rest = await c.claim("node-1", c.level("node-1"), "t-last", 1)
        assert rest is not None and not {r.nonce_id for r in rest} & set(got)
        await until(lambda: watcher.level("node-1") == 0)
        assert await c.claim("node-1", 1, "t-none", 1) is None
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
