"""``python -m services.signer --data-dir DIR --identity node-3``: one signer node."""

from __future__ import annotations

from schemas.messages import REGISTRY
from schemas.names import is_node
from services.runtime.service import ServiceContext, run_service
from services.signer.keystore import Keystore
from services.signer.node import SignerNode
from services.signer.nonce_slots import NonceStoreBusy


async def serve(ctx: ServiceContext) -> None:
    if not is_node(ctx.cfg.identity):
        raise SystemExit(f"signer needs a node identity (--identity node-k), not {ctx.cfg.identity!r}")
    try:
        # on mainnet the keystore refuses to open without a passphrase
        keystore = Keystore(ctx.cfg.data_dir, ctx.cfg.identity, network=ctx.cfg.network)
        node = SignerNode(ctx.cfg, ctx.bus, keystore)
    except NonceStoreBusy as exc:  # another signer process of this node runs: never share its nonces
        ctx.log.error("not started: the nonce store is held by another process", error=str(exc))
        raise SystemExit(f"signer {ctx.cfg.identity} not started: {exc}") from None
    await node.start()
    ctx.ready(node=ctx.cfg.identity)
    await ctx.stopped()


def main() -> None:
    run_service("signer", serve, registry=REGISTRY)
