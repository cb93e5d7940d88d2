"""Scale-out: two instances of each stateless service (intake, consensus, broadcaster) share the work of one
cluster, and the spends survive kill -9 of any instance under load. Requests go round both intakes; every
invariant of ``tests.suites.invariants`` holds at the end."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from loadtest.chaos import chaos, start_cluster, stop_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SPENDS = 30
DURATION_S = 12.0
SEED = 7


def _logged(log: Path, message: str) -> int:
    """How many lines of a service's log carry ``message``."""
    try:
        return len(re.findall(rf'"msg":"{re.escape(message)}"', log.read_text(errors="replace")))
    except OSError:
        return 0


def test_two_instances_of_each_stateless_service_share_the_work_and_survive_kills(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    d.mkdir()
    try:
        start_cluster(d, nats_servers=1, coins=SPENDS + 10, instances=2)
        names = {p["name"] for p in json.loads((d / "run" / "supervisor.json").read_text())["processes"]}
        assert {"intake-2", "consensus-2", "broadcaster-2"} <= names, names
        res = asyncio.run(
            chaos(
                d,
                duration=DURATION_S,
                rate=SPENDS / DURATION_S,
                clients=8,
                kill_every=3.0,
                nats_servers=1,
                settle=90.0,
                bound=150.0,
                seed=SEED,
                targets=["services"],
            )
        )
        table = res.markdown()
        print(table)
        assert res.report.ok, table
        assert res.load.requested == SPENDS and len(res.load.accepted) == SPENDS, table
        assert res.report.row("confirmed").value == str(SPENDS), table
        # both intakes took requests; both instances of consensus and of the broadcaster did work
        assert len(res.load.by_intake) == 2 and min(res.load.by_intake.values()) > 0, res.load.by_intake
        logs = d / "logs"
        for name in ("consensus", "consensus-2"):
            assert _logged(logs / f"{name}.log", "attempt started") > 0, name
        for name in ("broadcaster", "broadcaster-2"):
            assert _logged(logs / f"{name}.log", "signed") > 0, name
    finally:
        stop_cluster(d)
