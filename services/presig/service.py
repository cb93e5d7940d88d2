"""``python -m services.presig --data-dir DIR``: keeps every signer's nonce pool at its target.

The pool lives in KV ``presig`` (see :mod:`services.runtime.nonce_pool`). When a node's free entries
fall below ``low``, presig asks that node (point to point, ``proto.noncegen.<batch>.1.presig.<node>``)
for enough nonces to reach ``target``; the node generates them, keeps the secret halves encrypted in its
own data directory and puts the public halves in the pool. One request per node is in flight at a time
(re-sent after ``REQUEST_TIMEOUT_S``). Nothing happens before the DKG has produced a key.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time

from schemas.messages import REGISTRY, NonceBatchRequest
from schemas.names import proto_subject
from services.runtime.key_proof import KeyNotProven, ProvenKeys
from services.runtime.nonce_pool import NoncePool
from services.runtime.service import ServiceContext, run_service

REQUEST_TIMEOUT_S = 10.0


async def _key_proven(keys: ProvenKeys, scheme: str, key_id: str) -> bool:
    """Nonces are made for a key only once its record is proven (all nodes' statements agree)."""
    try:
        return await keys.get(scheme, key_id) is not None
    except KeyNotProven:
        return False


async def keep_pools(ctx: ServiceContext, pool: NoncePool, target: int, low: int) -> None:
    bus = ctx.bus
    keys = await ProvenKeys.open(bus, ctx.cfg.nodes, ctx.cfg.t)
    in_flight: dict[str, float] = {}
    await pool.loaded.wait()
    while not ctx.stop.is_set():
        if await _key_proven(keys, pool.scheme.name, pool.key_id):
            now = time.monotonic()
            for node in ctx.cfg.nodes:
                level = pool.level(node)
                sent = in_flight.get(node)
                if level >= low:
                    in_flight.pop(node, None)
                    continue
                if sent is not None and now - sent < REQUEST_TIMEOUT_S:
                    continue
                batch = secrets.token_hex(6)
                req = NonceBatchRequest(batch_id=batch, node=node, count=target - level)
                await bus.publish(
                    proto_subject("noncegen", batch, 1, "presig", node), req, f"noncegen.{batch}", to=node
                )
                in_flight[node] = now
                ctx.log.info("nonce batch requested", node=node, level=level, count=target - level)
        try:
            await asyncio.wait_for(ctx.stop.wait(), 0.5)
        except TimeoutError:
            pass


async def serve(ctx: ServiceContext) -> None:
    target = int(os.environ.get("MPCW_NONCE_POOL_TARGET", ctx.cfg.extra.get("nonce_pool_target", 256)))
    low = max(1, target // 2)
    pool = NoncePool(ctx.bus)
    tasks = [asyncio.create_task(pool.run()), asyncio.create_task(keep_pools(ctx, pool, target, low))]
    ctx.ready(target=target)
    await ctx.stopped()
    for t in tasks:
        t.cancel()


def main() -> None:
    run_service("presig", serve, registry=REGISTRY)
