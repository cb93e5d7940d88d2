"""A nats-server restart does not lose a consumer: the bus reconnects and re-creates its pull subscription."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from schemas.names import all_identities, durable
from services.localcluster.embedded import start_nats
from services.localcluster.pki import init_pki
from services.runtime.bus import Bus, Received
from services.runtime.config import load_config


class Ping(msgspec.Struct, frozen=True):
    n: int


async def test_consumer_survives_server_restart(tmp_path: Path) -> None:
    init_pki(tmp_path, nodes=1)
    servers = start_nats(tmp_path, all_identities(1))
    ports = servers.ports
    url = servers.url
    buses: list[Bus] = []
    try:
        admin = await Bus.connect(load_config("admin", tmp_path, nats_url=url), ensure=True)
        n1 = await Bus.connect(load_config("node-1", tmp_path, nats_url=url), registry={"Ping": Ping})
        cons = await Bus.connect(load_config("consensus", tmp_path, nats_url=url), registry={"Ping": Ping})
        buses = [admin, n1, cons]
        got: list[int] = []

        async def h(r: Received) -> None:
            got.append(r.payload.n)

        cons.start_consumer(*durable("consensus", "consensus-votes"), h)  # as mpcw up's broker admits
        await n1.publish("vote.a.node-1", Ping(n=1), "r1")
        deadline = time.monotonic() + 10
        while got != [1] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert got == [1]

        servers.stop()
        await asyncio.sleep(1.0)
        servers = start_nats(tmp_path, all_identities(1), ports=ports)  # same ports, same store

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                await n1.publish("vote.b.node-1", Ping(n=2), "r2", timeout=1.0)
                break
            except Exception:
                await asyncio.sleep(0.2)
        while got != [1, 2] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert got == [1, 2]
        assert cons._generation >= 1  # the reconnect was seen and the subscription re-created
    finally:
        for b in buses:
            await b.close(timeout=3)
        servers.stop()
