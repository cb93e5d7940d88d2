"""Spends under kill -9: a short run of ``loadtest.chaos`` on a cluster of its own, ending with every
invariant of ``tests.suites.invariants`` holding.

40 spends at about 3.3 per second from 10 clients while, every ~2 s, one process of the cluster dies by
SIGKILL: a service, a nats-server, PostgreSQL and (last, then ``mpcw up`` again as an operator would) the
supervisor itself, which takes every service with it. Then 90 s to settle.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loadtest.chaos import TARGET_KINDS, chaos, start_cluster, stop_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SPENDS = 40
DURATION_S = 12.0
SEED = 14  # the schedule of kills (which kind when, which process of the kind) is reproducible


def test_kill_minus_nine_of_every_kind_of_process(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    d.mkdir()
    try:
        start_cluster(d, nats_servers=1, coins=SPENDS + 10)
        res = asyncio.run(
            chaos(
                d,
                duration=DURATION_S,
                rate=SPENDS / DURATION_S,
                clients=10,
                kill_every=2.0,
                nats_servers=1,
                settle=90.0,
                bound=150.0,
                seed=SEED,
                targets=list(TARGET_KINDS),
            )
        )
    finally:
        stop_cluster(d)
    table = res.markdown()
    print(table)
    assert {f.kind for f in res.faults} == set(TARGET_KINDS), table
    assert res.load.requested == SPENDS and len(res.load.accepted) == SPENDS, table
    assert res.report.ok, table
    assert res.report.row("confirmed").value == str(SPENDS), table  # nothing here is a reason to fail
