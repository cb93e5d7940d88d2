"""A real signer process that misbehaves on purpose, for the byzantine e2e test (``test_8_byzantine``).

``python -m tests.e2e.byzantine_signer --data-dir DIR --identity node-2 --byzantine corrupt-psig,equivocate``
runs :class:`services.signer.node.SignerNode` with the node's own identity, certificate and key share (it
is started by the supervisor exactly like ``services.signer``, from a ``DIR/services.json`` table), and
behaves honestly in the DKG, the nonce pool and voting, except for the selected faults:

- ``corrupt-psig``: every partial signature it produces has its lowest bit flipped (still a well-formed
  32-byte scalar, so only ``partial_sig_verify`` can tell);
- ``equivocate``: after each approving vote it publishes a second, rejecting vote for the same transaction
  on its own ``vote.<tx>.<node>`` subject under a different ``Nats-Msg-Id`` (so JetStream stores both).

The faults come from ``--byzantine`` or, when that is absent, ``MPCW_BYZANTINE`` (comma-separated).
"""

from __future__ import annotations

import os
from typing import Any

from schemas.messages import REGISTRY, TxRequested, TxSigning, Vote
from schemas.names import is_node
from services.runtime.service import ServiceContext, run_service, service_argparser
from services.signer.keystore import Keystore
from services.signer.node import JournalEntry, SignerNode, _Prepared

CORRUPT_PSIG = "corrupt-psig"
EQUIVOCATE = "equivocate"
FAULTS = (CORRUPT_PSIG, EQUIVOCATE)
EQUIVOCATION_REASON = "byzantine test signer: equivocating"


def parse_faults(spec: str) -> frozenset[str]:
    faults = frozenset(f.strip() for f in spec.split(",") if f.strip())
    unknown = faults - set(FAULTS)
    if unknown:
        raise SystemExit(f"unknown byzantine fault(s) {sorted(unknown)}; choose from {FAULTS}")
    return faults


def corrupt(psig: bytes) -> bytes:
    """Flip the lowest bit of a 32-byte partial signature."""
    return psig[:-1] + bytes([psig[-1] ^ 0x01])


class ByzantineSigner(SignerNode):
    def __init__(self, *args: Any, faults: frozenset[str], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.faults = faults

    def _sign(self, sig: TxSigning, prep: _Prepared, secnonces: dict[str, bytearray | None]) -> list[bytes]:
        psigs = super()._sign(sig, prep, secnonces)
        if CORRUPT_PSIG not in self.faults:
            return psigs
        self.log.warning("byzantine: corrupting partial signatures", tx_id=sig.tx_id, attempt=sig.attempt)
        return [corrupt(p) for p in psigs]

    async def _publish_vote(self, req: TxRequested, entry: JournalEntry) -> None:
        await super()._publish_vote(req, entry)
        if EQUIVOCATE not in self.faults or not entry.approve:
            return
        contrary = Vote(
            tx_id=req.tx_id,
            node=self.node,
            approve=False,
            reasons=[EQUIVOCATION_REASON],
            sighashes=[bytes.fromhex(h) for h in entry.sighashes],
            policy_version=self.policy.version,
        )
        self.log.warning("byzantine: equivocating", tx_id=req.tx_id)
        subject = f"vote.{req.tx_id}.{self.node}"
        await self.bus.publish(subject, contrary, f"{subject}.equivocation")


def make_serve(faults: frozenset[str]) -> Any:
    async def serve(ctx: ServiceContext) -> None:
        if not is_node(ctx.cfg.identity):
            raise SystemExit(f"signer needs a node identity (--identity node-k), not {ctx.cfg.identity!r}")
        keystore = Keystore(ctx.cfg.data_dir, ctx.cfg.identity, network=ctx.cfg.network)
        node = ByzantineSigner(ctx.cfg, ctx.bus, keystore, faults=faults)
        await node.start()
        ctx.ready(node=ctx.cfg.identity, byzantine=sorted(faults))
        await ctx.stopped()

    return serve


def main(argv: list[str] | None = None) -> None:
    parser = service_argparser("signer")
    parser.add_argument("--byzantine", default=os.environ.get("MPCW_BYZANTINE", ""))
    args, _ = parser.parse_known_args(argv)
    run_service(
        "signer", make_serve(parse_faults(args.byzantine)), argv=argv, registry=REGISTRY, parser=parser
    )


if __name__ == "__main__":
    main()
