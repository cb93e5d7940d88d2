"""``python -m services.signer --data-dir DIR --identity node-3``: one signer node."""

from __future__ import annotations

from schemas.messages import REGISTRY
from schemas.names import is_node
from services.runtime.service import ServiceContext, run_service
from services.signer.keystore import Keystore
from services.signer.node import SignerNode


async def serve(ctx: ServiceContext) -> None:
    if not is_node(ctx.cfg.identity):
        raise SystemExit(f"signer needs a node identity (--identity node-k), not {ctx.cfg.identity!r}")
    keystore = Keystore(ctx.cfg.data_dir, ctx.cfg.identity, network=ctx.cfg.network)  # mainnet: passphrase
    node = SignerNode(ctx.cfg, ctx.bus, keystore)
    await node.start()
    ctx.ready(node=ctx.cfg.identity)
    await ctx.stopped()


def main() -> None:
    run_service("signer", serve, registry=REGISTRY)


if __name__ == "__main__":
    main()
