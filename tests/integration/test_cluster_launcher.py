"""`mpcw up` / `status` / `down` with a table of tiny real services (runtime_helper_service)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from services.runtime.db import lookup_api_key
from services.runtime.secrets_dir import secrets_dir
from services.runtime.supervisor import pid_alive

HELPER = "tests.integration.runtime_helper_service"
ROOT = Path(__file__).resolve().parents[2]


def mpcw(d: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MPCW_NATS_URL", "MPCW_DATABASE_URL", "MPCW_DATA_DIR")
    }
    return subprocess.run(
        [sys.executable, "-m", "services.mpcw", "--data-dir", str(d), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip


def write_table(d: Path, entries: list[dict[str, object]]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "services.json").write_text(json.dumps({"services": entries}))


def assert_owner_only(d: Path) -> None:
    """Every directory and file ``mpcw up`` made (logs, run files, PKI, NATS and PostgreSQL stores) is
    for its owner only, and no private key lies in the data directory (they are in the secrets one)."""
    seen = 0
    # as root, PostgreSQL runs as the user "pgserver", who must traverse (only) the data directory
    assert d.stat().st_mode & 0o777 == (0o711 if os.geteuid() == 0 else 0o700)
    for p in d.rglob("*"):
        if p.name == "services.json" or p.is_symlink() or not (p.is_dir() or p.is_file()):
            continue  # the test's own file; sockets
        with contextlib.suppress(FileNotFoundError):  # a temporary file gone meanwhile
            assert p.stat().st_mode & 0o077 == 0, f"{p} is {oct(p.stat().st_mode & 0o777)}"
            seen += 1
        assert p.suffix != ".key" and p.name != "kek", p
    assert seen > 100
    for sub in ("logs", "run", "pki", "nats", "pg"):
        assert (d / sub).stat().st_mode & 0o777 == 0o700, sub
    sdir = secrets_dir(d)
    assert (sdir / "pki" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert sdir.stat().st_mode & 0o777 == 0o700


def test_up_ready_status_down(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    write_table(
        d,
        [
            {"name": "intake", "module": HELPER, "args": ["--identity", "intake"]},
            {"name": "consensus", "module": HELPER, "args": ["--identity", "consensus"]},
            {"name": "signer-node-1", "module": HELPER, "args": ["--identity", "node-1", "--crash-first"]},
            {"name": "signer-node-2", "module": HELPER, "args": ["--identity", "node-2"]},
            {"name": "signer-node-3", "module": HELPER, "args": ["--identity", "node-3"]},
            {"name": "not-written-yet", "module": "services.does_not_exist_yet", "args": []},
        ],
    )
    t0 = time.monotonic()
    r = mpcw(d, "up", "--nodes", "3", "--threshold", "2", "--timeout", "60")
    took = time.monotonic() - t0
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        assert "cluster ready" in r.stdout and "not-written-yet" in r.stdout
        cluster = json.loads((d / "cluster.json").read_text())
        assert (d / "cluster.json").stat().st_mode & 0o777 == 0o600
        assert cluster["n"] == 3 and cluster["t"] == 2 and cluster["network"] == "regtest"
        assert cluster["nats_url"].startswith("tls://") and cluster["admin_api_key"].startswith("mpcw_")
        for name in ("intake", "consensus", "signer-node-1", "signer-node-2", "signer-node-3"):
            ready = json.loads((d / "run" / f"{name}.ready").read_text())
            assert pid_alive(ready["pid"])
            assert (d / "logs" / f"{name}.log").exists()
        sup_pid = int((d / "run" / "supervisor.pid").read_text())
        assert pid_alive(sup_pid)
        assert_owner_only(d)

        s = mpcw(d, "status", "--json")
        assert s.returncode == 0, s.stderr
        st = json.loads(s.stdout)
        by = {p["name"]: p for p in st["processes"]}
        assert st["ready"] and by["signer-node-1"]["restarts"] >= 1  # crashed once, restarted
        assert by["not-written-yet"]["status"] == "missing"
        assert all(by[n]["status"] == "ready" for n in ("intake", "consensus", "signer-node-2"))

        async def check_db() -> None:
            conn = await asyncpg.connect(cluster["database_url"])
            try:
                row = await lookup_api_key(conn, cluster["admin_api_key"])
                assert row is not None and row["role"] == "admin"
            finally:
                await conn.close()

        asyncio.run(check_db())
        # a crashed service after readiness is restarted
        os.kill(by["signer-node-2"]["pid"], 9)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            st = json.loads(mpcw(d, "status", "--json").stdout)
            p2 = {p["name"]: p for p in st["processes"]}["signer-node-2"]
            if p2["restarts"] >= 1 and p2["status"] == "ready":
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"signer-node-2 not restarted: {p2}")
        print(f"\nmpcw up (3 nodes, 5 helper services, one crash-restart) took {took:.2f}s")
    finally:
        down = mpcw(d, "down")
    assert down.returncode == 0, down.stderr
    assert not pid_alive(sup_pid)
    assert not (d / "run" / "supervisor.pid").exists()
    assert not any((d / "run").glob("*.ready"))
    assert mpcw(d, "status").returncode == 3
    assert not (d / "pg" / "postmaster.pid").exists()


def test_up_reports_the_failing_service(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    write_table(
        d,
        [
            {"name": "intake", "module": HELPER, "args": ["--identity", "intake"]},
            {"name": "broken", "module": HELPER, "args": ["--identity", "consensus", "--fail"]},
        ],
    )
    r = mpcw(d, "up", "--nodes", "1", "--threshold", "1", "--timeout", "60")
    assert r.returncode != 0
    assert "broken" in r.stderr
    deadline = time.monotonic() + 30
    while (d / "run" / "supervisor.pid").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not (d / "run" / "supervisor.pid").exists()
    assert mpcw(d, "status").returncode == 3
