"""The intake while PostgreSQL is away: every route answers 503 with ``Retry-After`` and a body that names
the database and nothing internal, and the intake serves again by itself once PostgreSQL is back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from services.localcluster.embedded import start_postgres, stop_postgres
from services.runtime.db import migrate, new_api_key, store_api_key
from tests.integration.test_intake_api import start_intake
from tests.integration.test_recorder_projection import stop_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180), pytest.mark.asyncio(loop_scope="session")]

REGTEST_ADDR = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


@pytest_asyncio.fixture
async def intake_on_own_postgres(
    pki: Path, nats_server: str, tmp_path: Path
) -> AsyncIterator[dict[str, Any]]:
    pg = start_postgres(tmp_path)
    await migrate(pg.url)
    conn = await asyncpg.connect(pg.url)
    _, key = new_api_key()
    await store_api_key(conn, key, "test operator", "operator")
    await conn.close()
    log = tmp_path / "intake.log"
    # no chain backend is needed by the routes used here; nothing listens on port 9
    proc, url = await start_intake(pki, nats_server, pg.url, "http://127.0.0.1:9", log)
    try:
        yield {"url": url, "key": key, "pg_dir": pg.data_dir, "tmp": tmp_path, "log": log}
    finally:
        assert stop_service(proc) == 0, log.read_text()[-2000:]
        stop_postgres(pg.data_dir)


async def test_postgres_away_is_503_then_recovers(intake_on_own_postgres: dict[str, Any]) -> None:
    env = intake_on_own_postgres
    async with httpx.AsyncClient(base_url=env["url"], timeout=30, headers={"X-API-Key": env["key"]}) as c:
        assert (await c.get("/api/v1/transactions")).status_code == 200

        stop_postgres(env["pg_dir"])
        for method, path, body in (
            ("GET", "/api/v1/transactions", None),
            ("GET", "/api/v1/transactions/abc", None),
            ("POST", "/api/v1/transactions", {"recipient": REGTEST_ADDR, "amount_sats": 10_000}),
        ):
            r = await c.request(method, path, json=body)
            assert r.status_code == 503, f"{method} {path}: {r.status_code} {r.text}"
            assert r.headers.get("retry-after") == "2"
            err = r.json()
            assert err["error"] == "database unavailable", err
            assert "asyncpg" not in r.text and "Traceback" not in r.text and "/" not in err["detail"], err
        assert (await c.get("/health")).status_code == 200  # the process itself is fine

        start_postgres(env["tmp"])
        deadline = time.monotonic() + 30
        while (await c.get("/api/v1/transactions")).status_code != 200:
            assert time.monotonic() < deadline, "the intake did not recover after PostgreSQL came back"
            await asyncio.sleep(0.2)
    assert "unhandled" not in env["log"].read_text()
