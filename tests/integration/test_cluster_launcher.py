"""`mpcw up` / `status` / `down` with a table of tiny real services (runtime_helper_service)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from services.localcluster.supervisor import cluster_processes, pid_alive
from services.runtime.db import lookup_api_key
from services.runtime.secrets_dir import secrets_dir

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


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting: {what}"
        time.sleep(0.1)


def _small_table(d: Path) -> None:
    write_table(
        d,
        [
            {"name": "intake", "module": HELPER, "args": ["--identity", "intake"]},
            {"name": "signer-node-1", "module": HELPER, "args": ["--identity", "node-1"]},
            {"name": "signer-node-2", "module": HELPER, "args": ["--identity", "node-2"]},
        ],
    )


def test_a_killed_supervisor_leaves_no_orphans_and_up_neither_duplicates_nor_fails(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    _small_table(d)
    r = mpcw(d, "up", "--nodes", "2", "--threshold", "2", "--timeout", "60")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        st = json.loads(mpcw(d, "status", "--json").stdout)
        children = [p["pid"] for p in st["processes"]] + list(
            json.loads((d / "run" / "supervisor.json").read_text())["nats_pids"]
        )
        sup_pid = st["supervisor_pid"]
        os.kill(sup_pid, signal.SIGKILL)
        # every service and nats-server gets SIGTERM from the kernel when the supervisor dies
        _wait(lambda: not any(pid_alive(p) for p in children), 30, "the supervisor's children to exit")
        assert not [c for p, c in cluster_processes(d) if "/postgres" not in c.split(" ", 1)[0]]
        assert mpcw(d, "status").returncode == 3

        again = mpcw(d, "up", "--nodes", "2", "--threshold", "2", "--timeout", "60")
        assert again.returncode == 0, again.stdout + again.stderr
        st2 = json.loads(mpcw(d, "status", "--json").stdout)
        assert st2["ready"] and st2["supervisor_pid"] != sup_pid
        # one set: the supervisor, 3 services, 1 nats-server and one PostgreSQL (adopted, not doubled)
        running = cluster_processes(d)
        kinds = sorted(
            "postgres" if c.split(" ", 1)[0].endswith("/postgres")
            else "supervisor" if "services.localcluster.supervisor" in c
            else "nats" if c.split(" ", 1)[0].endswith("/nats-server")
            else c.split(" -m ", 1)[1].split()[0]
            for _, c in running
        )  # fmt: skip
        assert kinds == sorted(["postgres", "nats", "supervisor", HELPER, HELPER, HELPER]), running
    finally:
        down = mpcw(d, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert cluster_processes(d) == [], "mpcw down left processes running"


def test_up_refuses_beside_leftovers_and_down_stops_them(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    _small_table(d)
    # a process that still runs on the directory, as an orphan of a killed supervisor would
    stray = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", "--data-dir", str(d.resolve())],
        start_new_session=True,
    )
    try:
        _wait(lambda: any(p == stray.pid for p, _ in cluster_processes(d)), 10, "the stray process")
        r = mpcw(d, "up", "--nodes", "2", "--threshold", "2", "--timeout", "60")
        assert r.returncode != 0 and f"pid {stray.pid}" in r.stderr, r.stdout + r.stderr
        assert not (d / "run" / "supervisor.pid").exists()
        s = mpcw(d, "status")
        assert s.returncode == 3 and f"pid {stray.pid}" in s.stdout, s.stdout
        down = mpcw(d, "down", "--timeout", "5")
        assert down.returncode == 0 and "stopped 1 process" in down.stdout, down.stdout + down.stderr
        assert stray.wait(10) is not None
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait()


def test_a_killed_postgres_is_restarted_and_status_tells_the_truth(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    _small_table(d)
    r = mpcw(d, "up", "--nodes", "2", "--threshold", "2", "--timeout", "60")
    try:
        assert r.returncode == 0, r.stdout + r.stderr
        cluster = json.loads((d / "cluster.json").read_text())
        st = json.loads(mpcw(d, "status", "--json").stdout)
        first = st["postgres"]["pid"]
        assert st["ready"] and first and pid_alive(first)
        os.kill(first, signal.SIGKILL)
        seen_down = False

        def restarted() -> bool:
            nonlocal seen_down
            now = json.loads(mpcw(d, "status", "--json").stdout)
            if not now["ready"]:
                seen_down = True
            pg = now["postgres"]
            return bool(pg["pid"] and pg["pid"] != first and pg["restarts"] >= 1 and now["ready"])

        _wait(restarted, 60, "PostgreSQL to be restarted")

        async def query() -> int:
            conn = await asyncpg.connect(cluster["database_url"])
            try:
                return int(await conn.fetchval("SELECT count(*) FROM api_keys"))
            finally:
                await conn.close()

        assert asyncio.run(query()) >= 1  # the same database, with its rows
        assert "PostgreSQL had exited; restarted" in (d / "logs" / "supervisor.log").read_text()
    finally:
        down = mpcw(d, "down")
    assert down.returncode == 0, down.stderr
