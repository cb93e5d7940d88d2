"""Many parallel spends over a shared set of coins: 100 spends from 20 clients over 30 coins, no faults.

With 30 coins for 100 spends, at least 70 spends spend the change of an earlier one (intake spends the
wallet's own unconfirmed change), chains of spends on one coin, while 20 clients ask at once for coins
the others hold (intake reserves each in PostgreSQL; a client told 409 asks again with the same
idempotency key). Every invariant of ``tests.suites.invariants`` holds: in particular no coin is spent
twice, on the chain or by two signed spends, and every spend is confirmed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loadtest.chaos import chaos, start_cluster, stop_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SPENDS = 100
COINS = 30


def test_parallel_spends_over_a_shared_utxo_set(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    d.mkdir()
    try:
        start_cluster(d, nats_servers=1, coins=COINS)
        res = asyncio.run(
            chaos(
                d,
                duration=5.0,
                rate=SPENDS / 5.0,
                clients=20,
                kill_every=0.0,
                nats_servers=1,
                settle=120.0,
                bound=180.0,
                seed=1,
                targets=[],
            )
        )
    finally:
        stop_cluster(d)
    table = res.markdown()
    print(table)
    assert res.faults == []
    assert res.load.requested == SPENDS and len(res.load.accepted) == SPENDS, table
    assert res.report.ok, table
    assert res.report.row("confirmed").value == str(SPENDS), table
    assert res.report.row("coin spent twice (chain)").value == "0"
    assert res.report.row("coin in two signed spends").value == "0"
