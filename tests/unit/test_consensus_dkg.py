"""Consensus as ChillDKG coordinator starts only the cluster's DKG: a request for another threshold or
other nodes is refused before anything is sent (every node would refuse it, and report consensus); the
host keys it sends are the ones the nodes signed."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas import kv as K
from schemas.messages import DkgStart
from schemas.names import proto_subject
from services.consensus.dkg_coordinator import DkgCoordinator
from tests.unit.dkg_cluster import NODES, T, make_cluster
from tests.unit.service_fakes import SignedFakeBus, service_context


def coordinator_on(bus: SignedFakeBus) -> DkgCoordinator:
    cfg = service_context("consensus", bus, n=5, t=T, nodes=tuple(NODES)).cfg
    return DkgCoordinator(cfg, bus, bus.log)  # type: ignore[arg-type]


def request(**change: object) -> K.DkgRequest:
    fields: dict[str, object] = {
        "session_id": "s1",
        "scheme": "frost",
        "key_id": K.DEFAULT_KEY_ID,
        "nodes": list(NODES),
        "threshold": T,
        **change,
    }
    return K.DkgRequest(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "change",
    [{"threshold": 1}, {"threshold": T + 1}, {"nodes": NODES[:4]}, {"nodes": list(reversed(NODES))}],
    ids=["t=1", "t+1", "fewer-nodes", "other-order"],
)
async def test_a_request_for_another_dkg_is_not_started(tmp_path: Path, change: dict[str, object]) -> None:
    cluster = await make_cluster(tmp_path)
    bus = cluster.bus("consensus")
    coordinator = coordinator_on(bus)
    await coordinator.start(request(**change))
    assert bus.published == []


async def test_the_clusters_request_starts_with_the_signed_host_keys(tmp_path: Path) -> None:
    cluster = await make_cluster(tmp_path)
    bus = cluster.bus("consensus")
    coordinator = coordinator_on(bus)
    await coordinator.start(request())
    [start] = bus.all(proto_subject("chilldkg", "s1", 0, "consensus"))
    assert isinstance(start, DkgStart) and start.threshold == T and start.nodes == NODES
    assert start.hostpubkeys == await cluster.hostpubkeys()
