"""The whole pipeline on a 3-server NATS JetStream cluster (``mpcw up --nats-servers 3``): every stream and
bucket is replicated 3 times, and losing a broker server costs nothing. One server is killed (SIGKILL)
right after a spend is requested: that spend still ends ``confirmed``, exactly once; the supervisor
starts the server again, it rejoins the cluster, the next spend confirms too, and the audit chain
verifies. Which server the services happen to be connected to is the client library's choice, so the
victim is always the first one, and the test checks the spend went through however that fell."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from schemas.names import BUCKETS
from services.localcluster.supervisor import pid_alive
from services.mpcw.client import with_admin_bus
from services.runtime.bus import Bus
from tests.e2e.conftest import LIFECYCLE, Cluster, external_address, running_cluster, wait_for

pytestmark = pytest.mark.e2e

STREAMS = ("TX", "VOTE", "PROTO", "NODE", *(f"KV_{b}" for b in BUCKETS))


def _replicas(c: Cluster) -> dict[str, int]:
    async def read(bus: Bus) -> dict[str, int]:
        return {name: int((await bus.js.stream_info(name)).config.num_replicas or 0) for name in STREAMS}

    return with_admin_bus(c.data_dir, read)


def _nats_pids(c: Cluster) -> list[int]:
    state = json.loads((c.data_dir / "run" / "supervisor.json").read_text())
    return [int(p) for p in state["nats_pids"]]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz?js-enabled-only=true", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _confirmed_once(c: Cluster, t: dict[str, Any]) -> None:
    assert t["state"] == "confirmed", t
    rows = c.fetch("SELECT to_state FROM transaction_transitions WHERE tx_id = $1 ORDER BY id", t["id"])
    assert [r["to_state"] for r in rows] == LIFECYCLE, rows
    assert c.fetch("SELECT count(*) AS n FROM transactions WHERE id = $1", t["id"])[0]["n"] == 1


def test_spends_go_on_when_a_nats_server_dies(tmp_path: Path) -> None:
    with running_cluster(tmp_path / "nats3", ["1.0"] * 3, up_args=("--nats-servers", "3")) as c:
        assert c.info["nats_replicas"] == 3 and len(c.info["nats_url"].split(",")) == 3
        assert set(_replicas(c).values()) == {3}, _replicas(c)

        first = c.wait_terminal(c.request_spend(external_address(b"nats3-1"), 1_000_000), timeout=90)
        _confirmed_once(c, first)

        victim = _nats_pids(c)[0]
        tx_id = c.request_spend(external_address(b"nats3-2"), 1_000_000)
        os.kill(victim, signal.SIGKILL)
        second = c.wait_terminal(tx_id, timeout=120)
        _confirmed_once(c, second)

        # the supervisor started the dead server again, and it is back in the cluster with JetStream
        wait_for("nats-server 1 restarted", lambda: _nats_pids(c)[0] != victim, timeout=30)
        assert pid_alive(_nats_pids(c)[0]) and not pid_alive(victim)
        monitor = c.info["nats_monitor_urls"][0]
        wait_for("nats-server 1 healthy", lambda: _healthy(monitor), timeout=60)

        third = c.wait_terminal(c.request_spend(external_address(b"nats3-3"), 1_000_000), timeout=90)
        _confirmed_once(c, third)
        assert "audit chain verifies" in c.mpcw("audit", "verify").stdout

    # the same data directory on one server would start from empty streams: refused, nothing started
    again = Cluster(tmp_path / "nats3").mpcw("up", check=False)
    assert again.returncode == 2 and "made with 3 server(s)" in again.stderr, again
    assert not (tmp_path / "nats3" / "run" / "supervisor.pid").exists()
