"""``mpcw policy set`` says "applied" only when every node runs exactly the signed value it wrote: each
signer reports the digest of the policy it applied in its heartbeats, and the command names the nodes that
did not apply it within ``--wait`` (a node still on another version, a node with no heartbeat)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

import services.mpcw.cmd_policy  # noqa: F401  (registers ``mpcw policy``)
from schemas import kv as K
from schemas.names import BUCKET_CONFIG, node_names
from schemas.rest import Policy
from services.mpcw.cli import main
from services.runtime.bus import Bus
from services.runtime.signed_kv import SignedKV
from services.signer.keystore import Keystore
from services.signer.node import SignerNode

BusFactory = Callable[..., Awaitable[Bus]]
NODES = node_names(5)


def cluster_dir(pki: Path, tmp: Path, nats_url: str) -> Path:
    """A data dir with the suite's PKI and a cluster.json naming the suite's NATS and five nodes."""
    d = tmp / "cluster"
    d.mkdir()
    for entry in pki.iterdir():
        if entry.name != "cluster.json":
            (d / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    cluster = {"nats_url": nats_url, "nodes": NODES, "n": 5, "t": 4, "network": "regtest"}
    (d / "cluster.json").write_text(json.dumps(cluster))
    return d


async def policy_set(d: Path, *args: str) -> Result:
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, ["--data-dir", str(d), "policy", "set", *args])


async def test_policy_set_waits_for_every_node_and_names_the_others(
    pki: Path, nats_server: str, tmp_path: Path, bus_factory: BusFactory
) -> None:
    d = cluster_dir(pki, tmp_path, nats_server)
    admin = await bus_factory("admin")
    config = await SignedKV.open(admin, BUCKET_CONFIG)
    signers: dict[str, SignerNode] = {}
    tasks: list[asyncio.Task[Any]] = []

    async def run_signer(node: str, *, follow: bool) -> None:
        """node's signer: heartbeats, and (``follow``) the policy watch that applies new policies."""
        bus = await bus_factory(node)
        s = signers.get(node) or SignerNode(bus.cfg, bus, Keystore(tmp_path / "k", node, passphrase="t"))
        signers[node] = s
        s.config = await SignedKV.open(bus, BUCKET_CONFIG)
        await s._load_policy()
        if follow:
            tasks.append(asyncio.create_task(s._watch_policy()))
        tasks.append(asyncio.create_task(s._heartbeat()))

    try:
        for node in NODES[:3]:
            await run_signer(node, follow=True)
        await run_signer("node-4", follow=False)  # running, but does not apply what is written ...
        signers["node-4"].policy = Policy(version=999)  # ... and says it runs a newer version than that
        # node-5: not running
        await asyncio.sleep(0.5)

        got = await policy_set(d, "--max-tx-btc", "0.05", "--wait", "4")
        assert got.exit_code == 1, got.output
        said = got.output
        assert "applied on 3/5 nodes" in said, said
        assert "node-4 (runs policy version 999)" in said and "node-5 (no heartbeat)" in said, said
        assert "node-1" not in said.split("not applied")[1], said
        written = await config.get(K.POLICY_KEY, Policy)
        assert written is not None and written.value.max_tx_sats == 5_000_000 and written.sender == "admin"
        for node in NODES[:3]:
            applied = signers[node].policy
            assert applied is not None and applied.max_tx_sats == 5_000_000

        # a node that applied an older value does not count: only the exact signed value does
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        for node in NODES:
            await run_signer(node, follow=True)
        got = await policy_set(d, "--max-tx-btc", "0.04", "--wait", "10")
        assert got.exit_code == 0, got.output
        assert "applied on 5/5 nodes" in got.output, got.output
        assert all(s.policy is not None and s.policy.max_tx_sats == 4_000_000 for s in signers.values())
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await config.kv.delete(K.POLICY_KEY)  # the other suites expect the defaults
