"""Real servers for integration tests, started once per session on free ports in a tmp dir.

Fixtures:
- ``pki``: a data dir with ``certs init --nodes 5`` done (or ``MPCW_DATA_DIR`` when external NATS is used)
- ``nats_server``: the NATS URL (embedded TLS JetStream; streams and buckets created as admin)
- ``database_url``: a migrated PostgreSQL database URL
- ``fresh_database_url``: a new, migrated database for a test that leaves marks (audit tampering)
- ``bus_factory``: ``await bus_factory("node-3", registry=...)`` -> connected Bus, closed after the test
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from schemas.names import all_identities
from services.localcluster.embedded import start_nats, start_postgres, stop_postgres
from services.localcluster.pki import init_pki
from services.runtime.bus import Bus
from services.runtime.config import load_config
from services.runtime.db import migrate

BusFactory = Callable[..., Awaitable[Bus]]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("MPCW_NATS_URL") and os.environ.get("MPCW_DATA_DIR"):
        return Path(os.environ["MPCW_DATA_DIR"]).expanduser().resolve()
    d = tmp_path_factory.mktemp("mpcw")
    init_pki(d, nodes=5)
    return d


@pytest.fixture(scope="session")
def nats_server(pki: Path) -> Iterator[str]:
    external = os.environ.get("MPCW_NATS_URL")
    servers = None
    url = external or ""
    if not external:
        # consumer_rights="any": these tests name their consumers freely (a fresh durable per test, a
        # second recorder beside the first); the broker `mpcw up` starts admits only each identity's own
        # (schemas.names.CONSUMERS), which test_nats_security checks on a broker of its own
        servers = start_nats(pki, all_identities(5), consumer_rights="any")
        url = servers.url

    async def ensure() -> None:
        admin = await Bus.connect(load_config("admin", pki, nats_url=url), ensure=True)
        await admin.close()

    asyncio.run(ensure())
    try:
        yield url
    finally:
        if servers is not None:
            servers.stop()


@pytest.fixture(scope="session")
def _postgres(pki: Path) -> Iterator[tuple[str, str]]:
    """(database url, admin url)."""
    external = os.environ.get("MPCW_DATABASE_URL")
    if external:
        yield external, external
        return
    pg = start_postgres(pki)
    try:
        yield pg.url, pg.admin_url
    finally:
        stop_postgres(pg.data_dir)


@pytest.fixture(scope="session")
def database_url(_postgres: tuple[str, str]) -> str:
    url = _postgres[0]
    asyncio.run(migrate(url))
    return url


def _with_database(url: str, name: str) -> str:
    base, sep, query = url.partition("?")
    head = base.rsplit("/", 1)[0]
    return f"{head}/{name}{sep}{query}"


@pytest_asyncio.fixture
async def fresh_database_url(_postgres: tuple[str, str]) -> AsyncIterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(_postgres[1])
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _with_database(_postgres[1], name)
    await migrate(url)
    yield url
    conn = await asyncpg.connect(_postgres[1])
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest_asyncio.fixture
async def bus_factory(pki: Path, nats_server: str) -> AsyncIterator[BusFactory]:
    buses: list[Bus] = []

    async def make(identity: str, **kw: Any) -> Bus:
        bus = await Bus.connect(load_config(identity, pki, nats_url=nats_server), **kw)
        buses.append(bus)
        return bus

    yield make
    for b in buses:
        await b.close(timeout=5)
