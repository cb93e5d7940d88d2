"""``mpcw dkg start|status``: ChillDKG among the signer nodes, coordinated by ``consensus``."""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

import click

from schemas import kv as K
from schemas.kinds import SCHEMES, Scheme
from schemas.messages import DkgResult
from schemas.names import BUCKET_CONFIG, BUCKET_KEYS, node_names, proto_subject
from services.mpcw.cli import data_dir_of, main
from services.mpcw.client import cluster_of, with_admin_bus
from services.runtime.key_proof import KeyNotProven, ProvenKeys
from services.runtime.lookup import last_message
from services.runtime.signed_kv import SignedKV
from wallet.threshold_account import ThresholdAccount


def nodes_of(cluster: dict[str, Any]) -> list[str]:
    return list(cluster.get("nodes") or node_names(int(cluster["n"])))


@main.group()
def dkg() -> None:
    """Distributed key generation (no machine ever holds the whole key)."""


@dkg.command("start")
@click.option("--scheme", type=click.Choice(SCHEMES), default="frost", show_default=True)
@click.option("--key-id", default=K.DEFAULT_KEY_ID, show_default=True)
@click.option("--timeout", type=float, default=60.0, show_default=True)
@click.pass_context
def dkg_start(ctx: click.Context, scheme: Scheme, key_id: str, timeout: float) -> None:
    """Run ChillDKG among all nodes and wait until every node holds its share."""
    d = data_dir_of(ctx)
    c = cluster_of(d)
    nodes = nodes_of(c)
    session = f"dkg{secrets.token_hex(6)}"

    async def run(bus: Any) -> K.KeyRecord:
        keys = await bus.kv(BUCKET_KEYS)
        if await keys.get(K.key_record_key(scheme, key_id)) is not None:
            raise click.ClickException(f"key {key_id!r} exists already (see `mpcw dkg status`)")
        deadline = time.monotonic() + timeout
        missing = nodes
        while missing:  # every node publishes its host key when it starts
            missing = [n for n in nodes if await keys.get(K.hostpubkey_key(n)) is None]
            if missing and time.monotonic() > deadline:
                raise click.ClickException(f"no host key from {', '.join(missing)}: are they running?")
            if missing:
                await asyncio.sleep(0.2)
        cfg = await bus.kv(BUCKET_CONFIG)
        req = K.DkgRequest(
            session_id=session,
            scheme=scheme,
            key_id=key_id,
            nodes=nodes,
            threshold=int(c["t"]),
            requested_ms=int(time.time() * 1000),
        )
        await SignedKV(bus, cfg).create(f"dkg.{session}", req)  # signed by admin: consensus checks it
        click.echo(f"dkg {session}: {len(nodes)} nodes, threshold {c['t']}; waiting for the nodes ...")
        done: dict[str, DkgResult] = {}
        while len(done) < len(nodes):
            for n in nodes:
                if n in done:
                    continue
                m = await last_message(bus, proto_subject("chilldkg", session, 9, n))
                if m is not None and isinstance(m.payload, DkgResult) and m.sender == n:
                    done[n] = m.payload
                    state = "ok" if m.payload.ok else f"FAILED ({m.payload.reason})"
                    click.echo(f"  {n}: {state}")
            if any(not r.ok for r in done.values()):
                raise click.ClickException("DKG failed; see the nodes' reasons above (nothing was stored)")
            if len(done) < len(nodes):
                if time.monotonic() > deadline:
                    raise click.ClickException(f"DKG timed out; finished: {', '.join(done) or 'none'}")
                await asyncio.sleep(0.2)
        # every node signed its statement of the result before announcing it: the record must agree
        proven = await ProvenKeys.open(bus, nodes, int(c["t"]))
        while True:
            try:
                rec = await proven.get(scheme, key_id)
            except KeyNotProven as exc:
                if exc.offenders or time.monotonic() > deadline:
                    raise click.ClickException(f"the key is not usable: {exc.reason}") from None
                rec = None
            if rec is not None:
                return rec
            if time.monotonic() > deadline:
                raise click.ClickException("the nodes finished but the coordinator stored no key record")
            await asyncio.sleep(0.2)

    rec = with_admin_bus(d, run)
    acct = ThresholdAccount(rec.threshold_pubkey, rec.chain_code, c.get("network", "regtest"))
    # t and n as all n nodes stated them (the record is refused unless every statement equals it)
    click.echo(
        f"threshold key {rec.threshold_pubkey.hex()} ({rec.t}-of-{rec.n}, stated by all {rec.n} nodes)"
    )
    click.echo(f"xpub {acct.xpub()}")
    click.echo(f"first address {acct.address((0, 0))}")


@dkg.command("status")
@click.option("--key-id", default=K.DEFAULT_KEY_ID, show_default=True)
@click.pass_context
def dkg_status(ctx: click.Context, key_id: str) -> None:
    """The key the cluster holds, if any."""
    d = data_dir_of(ctx)
    c = cluster_of(d)

    async def run(bus: Any) -> K.KeyRecord | None:
        proven = await ProvenKeys.open(bus, nodes_of(c), int(c["t"]))
        try:
            return await proven.get("frost", key_id)
        except KeyNotProven as exc:
            raise click.ClickException(f"key {key_id!r} is not usable: {exc.reason}") from None

    rec = with_admin_bus(d, run)
    if rec is None:
        click.echo(f"no key {key_id!r} yet: run `mpcw dkg start --scheme frost`")
        ctx.exit(3)
        return
    acct = ThresholdAccount(rec.threshold_pubkey, rec.chain_code, c.get("network", "regtest"))
    click.echo(
        f"key {rec.key_id} ({rec.scheme}, {rec.t}-of-{rec.n}, stated by all {rec.n} nodes) "
        f"from session {rec.session_id}"
    )
    click.echo(f"  threshold key {rec.threshold_pubkey.hex()}")
    click.echo(f"  xpub {acct.xpub()}")
    for node, share in zip(rec.nodes, rec.pubshares, strict=True):
        click.echo(f"  {node}: public share {share.hex()}")
