"""The local cluster supervisor behind ``mpcw up`` / ``mpcw down`` / ``mpcw status``.

``mpcw up`` starts ``python -m services.localcluster.supervisor --data-dir DIR`` in a new session
(detached from the terminal) and waits. The supervisor:

1. writes ``DIR/run/supervisor.pid``; completes the PKI when missing;
2. starts the embedded nats-server (TLS, JetStream, store ``DIR/nats/``) and PostgreSQL (``DIR/pg/``) on free
   ports, migrates, creates streams and buckets as ``admin``;
3. writes ``DIR/cluster.json`` (endpoints, ports, n, t, network, the admin API key; its hash in ``api_keys``);
4. starts every service of the table (``DIR/services.json`` when present, else :func:`default_table`) as a
   subprocess, logs in ``DIR/logs/<name>.log``, and restarts crashed ones with exponential backoff;
5. writes ``DIR/run/cluster.ready`` once every service wrote its ready file (``DIR/run/<name>.ready`` with
   the pid it started, see ``services.runtime.service``), or ``DIR/run/supervisor.failed`` (a one-line
   reason) when a service keeps crashing before it gets ready or a server does not start;
6. keeps ``DIR/run/supervisor.json`` up to date (processes, pids, restarts, readiness, and whether the
   cluster is healthy right now) for ``mpcw status``;
7. restarts an exited nats-server or PostgreSQL (looked at every second) as it restarts services;
8. on SIGTERM/SIGINT stops the services (SIGTERM, then SIGKILL after a timeout), then NATS and PostgreSQL;
9. on SIGUSR1 takes ``DIR/run/rotation.request`` and rotates TLS certificates while everything keeps
   running (:mod:`services.localcluster.cert_rotation`, ``mpcw certs rotate``).

Every process it starts (services and nats-servers) gets SIGTERM when the supervisor dies, even by
SIGKILL (``die_with_parent``), so a killed supervisor leaves nothing running on the directory's stores
but PostgreSQL, which a new supervisor adopts. :func:`cluster_processes` finds whatever still runs on a
directory, for ``mpcw up`` (which refuses to start a second set beside it) and ``mpcw down`` (which stops
it).

A service module that cannot be imported (not written yet) is skipped with status ``missing``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.names import all_identities, node_names
from services.runtime.config import load_config, read_cluster, write_cluster
from services.runtime.logging import open_log_file
from services.runtime.secrets_dir import private_dir

from .cert_rotation import RotationRequest, fail, rotation_steps, take_request
from .embedded import (
    NatsServers,
    Postgres,
    die_with_parent,
    free_port,
    postmaster_pid,
    start_nats,
    start_postgres,
    stop_postgres,
)
from .pki import cert_subjects, init_pki, pki_exists

REPO_ROOT = Path(__file__).resolve().parents[2]
STOP_TIMEOUT = 15.0
START_FAILURES_ALLOWED = 3  # crashes before the first readiness that make `up` fail
BACKOFF_MAX = 30.0


def default_table(n: int) -> list[dict[str, Any]]:
    """The services of a local cluster: name, module, extra args, optional ``nice``."""
    table: list[dict[str, Any]] = [
        # devchain is a plain HTTP server: ready when it answers on cluster.json's devchain_url
        {
            "name": "devchain",
            "module": "services.devchain",
            "args": ["--port", "{devchain_port}"],  # "{key}" in args: a value of cluster.json
            "ready_http": "devchain_url",
        },
        # off the spend's path (request -> broadcast): a lower CPU priority ("nice", like nice(1)) lets
        # the signers, consensus and the broadcaster run first when a spend wakes everyone at once; they
        # catch up in bigger batches
        {"name": "recorder", "module": "services.recorder", "args": [], "nice": 5},
        {"name": "monitor", "module": "services.monitor", "args": [], "nice": 5},
        {"name": "consensus", "module": "services.consensus", "args": []},
    ]
    table += [
        {"name": f"signer-{node}", "module": "services.signer", "args": ["--identity", node]}
        for node in node_names(n)
    ]
    table += [
        {"name": "presig", "module": "services.presig", "args": [], "nice": 5},
        {"name": "broadcaster", "module": "services.broadcaster", "args": []},
        {"name": "intake", "module": "services.intake", "args": []},
    ]
    return table


def run_dir(data_dir: Path) -> Path:
    return data_dir / "run"


def read_pid(path: Path) -> int | None:
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@dataclass
class Proc:
    name: str
    module: str
    args: list[str]
    popen: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    failures_before_ready: int = 0
    ever_ready: bool = False
    next_start: float = 0.0
    started_at: float = 0.0
    status: str = "pending"  # pending, starting, ready, backoff, missing, failed, stopped
    last_exit: int | None = None
    env: dict[str, str] = field(default_factory=dict)
    ready_http: str = ""  # cluster.json key of a URL: any HTTP answer there also means ready
    nice: int = 0  # added to the process's CPU niceness (0..19: lower priority only, no privilege needed)


class Supervisor:
    def __init__(self, data_dir: Path, n: int, t: int, nats_servers: int = 1) -> None:
        self.data_dir = data_dir
        self.n = n
        self.t = t
        self.nats_servers = nats_servers  # 3 (or 5): a JetStream cluster, every stream and bucket R3
        self.run = run_dir(data_dir)
        self.logs = data_dir / "logs"
        self.procs: list[Proc] = []
        self.nats: NatsServers | None = None
        self.nats_next_check = 0.0  # when to look for exited nats-servers next (monotonic)
        self.pg: Postgres | None = None
        self.pg_next_check = 0.0
        self.pg_restarts = 0
        self.stopping = False
        self.failed: str | None = None
        self.cluster_ready = False
        self.cluster: dict[str, Any] = {}
        self.rotation_asked = False  # SIGUSR1: a certificate rotation request waits in run/
        self.rotation: tuple[RotationRequest, Iterator[None]] | None = None

    # ---- files ----------------------------------------------------------------------------------------

    def healthy(self) -> bool:
        """Everything runs right now: every service ready, every nats-server and PostgreSQL up."""
        if not self.cluster_ready or self.nats is None or self.pg is None:
            return False
        if any(p.poll() is not None for p in self.nats.procs):
            return False
        if postmaster_pid(self.pg.data_dir) is None:
            return False
        return all(p.status in ("ready", "missing") for p in self.procs)

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "ts": time.time(),
            "ready": self.cluster_ready,
            "healthy": self.healthy(),
            "failed": self.failed,
            "nats_pids": self.nats.pids if self.nats else [],
            "postgres": {
                "pid": postmaster_pid(self.pg.data_dir) if self.pg else None,
                "restarts": self.pg_restarts,
            },
            "processes": [
                {
                    "name": p.name,
                    "module": p.module,
                    "pid": p.popen.pid if p.popen and p.popen.poll() is None else None,
                    "status": p.status,
                    "restarts": p.restarts,
                    "last_exit": p.last_exit,
                }
                for p in self.procs
            ],
        }
        tmp = self.run / "supervisor.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run / "supervisor.json")

    def _fail(self, reason: str) -> None:
        self.failed = reason
        (self.run / "supervisor.failed").write_text(reason + "\n")

    # ---- startup --------------------------------------------------------------------------------------

    def start_servers(self) -> dict[str, Any]:
        if not pki_exists(self.data_dir):
            init_pki(self.data_dir, self.n)
        else:
            init_pki(self.data_dir, self.n)  # adds identities when n grew; keeps the rest
        identities = all_identities(self.n)
        self.nats = start_nats(
            self.data_dir,
            identities,
            cluster_size=self.nats_servers,
            subjects=cert_subjects(self.data_dir, identities),  # both epochs if a rotation was cut short
        )
        replicas = min(3, self.nats_servers)
        self.pg = start_postgres(self.data_dir)
        from services.runtime.db import migrate, new_api_key, store_api_key

        asyncio.run(migrate(self.pg.url))
        old = read_cluster(self.data_dir)
        admin_key = old.get("admin_api_key") or new_api_key()[1]

        async def setup() -> None:
            import asyncpg

            from services.runtime.bus import Bus

            conn = await asyncpg.connect(self.pg.url if self.pg else "")
            try:
                await store_api_key(conn, admin_key, "admin", "admin")
            finally:
                await conn.close()
            cfg = load_config("admin", self.data_dir, nats_url=self.nats.url if self.nats else "")
            cfg.extra["nats_replicas"] = replicas  # cluster.json (read by every service) is written below
            cfg = dataclasses.replace(cfg, nodes=tuple(node_names(self.n)))  # whose durables to make
            admin = await Bus.connect(cfg, ensure=True)
            await admin.close()

        asyncio.run(setup())
        table = self._table()
        intake_port, devchain_port = free_port(), free_port()
        cluster = {
            "version": 1,
            "data_dir": str(self.data_dir),
            "n": self.n,
            "t": self.t,
            "nodes": node_names(self.n),
            "network": old.get("network", "regtest"),
            "nats_url": self.nats.url,
            "nats_monitor_url": f"http://127.0.0.1:{self.nats.ports[0].http}",
            "nats_replicas": replicas,
            "nats_monitor_urls": [f"http://127.0.0.1:{p.http}" for p in self.nats.ports],
            "database_url": self.pg.url,
            "intake_port": intake_port,
            "intake_url": f"http://127.0.0.1:{intake_port}",
            "devchain_port": devchain_port,
            "devchain_url": f"http://127.0.0.1:{devchain_port}",
            "esplora_url": f"http://127.0.0.1:{devchain_port}",
            "block_interval": 1.0,  # devchain mines a block every second while its mempool is not empty
            "metrics_ports": {e["name"]: free_port() for e in table},
            "admin_api_key": admin_key,
            "services": [e["name"] for e in table],
        }
        write_cluster(self.data_dir, cluster)
        self.cluster = cluster
        for e in table:
            self.procs.append(
                Proc(
                    name=e["name"],
                    module=e["module"],
                    args=list(e.get("args", [])),
                    ready_http=str(cluster.get(e.get("ready_http", ""), "")),
                    nice=int(e.get("nice", 0)),
                )
            )
        return cluster

    def _table(self) -> list[dict[str, Any]]:
        custom = self.data_dir / "services.json"
        if custom.exists():
            data = json.loads(custom.read_text())
            table: list[dict[str, Any]] = data["services"] if isinstance(data, dict) else data
            return table
        return default_table(self.n)

    # ---- processes ------------------------------------------------------------------------------------

    def _spawn(self, p: Proc) -> None:
        if importlib.util.find_spec(p.module.split(".")[0]) is None or not _module_exists(p.module):
            p.status = "missing"
            return
        with contextlib.suppress(FileNotFoundError):
            (self.run / f"{p.name}.ready").unlink()
        env = {
            **os.environ,
            "MPCW_SERVICE_NAME": p.name,
            "MPCW_DATA_DIR": str(self.data_dir),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])),
            "PYTHONUNBUFFERED": "1",
            **p.env,
        }
        env.pop("MPCW_NATS_URL", None)  # the cluster's own servers, from cluster.json
        env.pop("MPCW_DATABASE_URL", None)
        with open_log_file(self.logs / f"{p.name}.log") as out:
            p.popen = subprocess.Popen(
                [sys.executable, "-m", p.module, "--data-dir", str(self.data_dir), *self._args(p)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(REPO_ROOT),
                env=env,
                preexec_fn=die_with_parent(),
            )
        if p.nice > 0:
            with contextlib.suppress(OSError):  # a priority is a preference, never a reason not to run
                os.setpriority(os.PRIO_PROCESS, p.popen.pid, min(19, p.nice))
        p.started_at = time.monotonic()
        p.status = "starting"

    def _args(self, p: Proc) -> list[str]:
        return [a.format_map(self.cluster) if "{" in a else a for a in p.args]

    def _is_ready(self, p: Proc) -> bool:
        if p.popen is None or p.popen.poll() is not None:
            return False
        if p.ready_http and _http_answers(p.ready_http):
            return True
        try:
            info = json.loads((self.run / f"{p.name}.ready").read_text())
        except (OSError, ValueError):
            return False
        return bool(info.get("pid") == p.popen.pid)

    def tick(self) -> None:
        now = time.monotonic()
        if self.nats is not None and now >= self.nats_next_check:
            self.nats_next_check = now + 1.0
            for i, exit_code in self.nats.restart_exited():
                print(f"supervisor: nats-server {i + 1} exited ({exit_code}); restarted", file=sys.stderr)
        if self.pg is not None and now >= self.pg_next_check:
            self.pg_next_check = now + 1.0
            self._restart_postgres_if_gone()
        for p in self.procs:
            if p.status in ("missing", "failed"):
                continue
            if p.popen is None:
                if now >= p.next_start:
                    self._spawn(p)
                continue
            code = p.popen.poll()
            if code is None:
                if p.status == "starting" and self._is_ready(p):
                    p.status = "ready"
                    p.ever_ready = True
                    p.failures_before_ready = 0
                continue
            # exited
            p.last_exit = code
            p.popen = None
            with contextlib.suppress(FileNotFoundError):
                (self.run / f"{p.name}.ready").unlink()
            if not p.ever_ready:
                p.failures_before_ready += 1
                if p.failures_before_ready >= START_FAILURES_ALLOWED and not self.cluster_ready:
                    p.status = "failed"
                    self._fail(
                        f"{p.name} exited with {code} {p.failures_before_ready} times before it was ready; "
                        f"see {self.logs / (p.name + '.log')}"
                    )
                    continue
            stable = now - p.started_at > 60
            delay = 0.5 if stable else min(BACKOFF_MAX, 0.5 * 2 ** min(p.restarts, 6))
            p.restarts += 1
            p.next_start = now + delay
            p.status = "backoff"
        if not self.cluster_ready and self.failed is None:
            live = [p for p in self.procs if p.status != "missing"]
            if all(p.status == "ready" for p in live) and all(p.status != "pending" for p in self.procs):
                self.cluster_ready = True
                (self.run / "cluster.ready").write_text(json.dumps({"ts": time.time()}))

    def restart_now(self, p: Proc) -> None:
        """Stop ``p`` (SIGTERM, then SIGKILL after ``STOP_TIMEOUT``); :meth:`tick` starts it again at once."""
        if p.popen is not None and p.popen.poll() is None:
            p.popen.send_signal(signal.SIGTERM)
            try:
                p.last_exit = p.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.last_exit = p.popen.wait()
        p.popen = None
        with contextlib.suppress(FileNotFoundError):
            (self.run / f"{p.name}.ready").unlink()
        p.status, p.next_start = "backoff", 0.0

    def nats_server_up(self, i: int) -> bool:
        assert self.nats is not None
        if self.nats.procs[i].poll() is not None:
            return False
        return _http_answers(f"http://127.0.0.1:{self.nats.ports[i].http}/healthz")

    def _advance_rotation(self) -> None:
        if self.rotation_asked and self.rotation is None and self.cluster_ready:
            self.rotation_asked = False
            req = take_request(self.run)
            if req is not None:
                self.rotation = (req, rotation_steps(self, req))
        if self.rotation is None:
            return
        req, steps = self.rotation
        try:
            next(steps)
        except StopIteration:
            self.rotation = None
            print(f"supervisor: certificate rotation {req.id} done", file=sys.stderr, flush=True)
        except Exception as exc:
            self.rotation = None
            fail(self.run, req, exc)
            print(f"supervisor: certificate rotation {req.id} failed: {exc!r}", file=sys.stderr, flush=True)

    def _restart_postgres_if_gone(self) -> None:
        assert self.pg is not None
        if postmaster_pid(self.pg.data_dir) is not None:
            return
        try:
            self.pg = start_postgres(self.data_dir)
        except Exception as exc:  # tried again a second later; the services wait for their database
            print(f"supervisor: PostgreSQL is down and did not start: {type(exc).__name__}", file=sys.stderr)
            self.pg_next_check = time.monotonic() + 2.0
            return
        self.pg_restarts += 1
        print("supervisor: PostgreSQL had exited; restarted", file=sys.stderr, flush=True)

    def stop_all(self) -> None:
        procs = [p for p in self.procs if p.popen is not None and p.popen.poll() is None]
        for p in procs:
            assert p.popen is not None
            with contextlib.suppress(ProcessLookupError):
                p.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for p in procs:
            assert p.popen is not None
            try:
                p.last_exit = p.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.last_exit = p.popen.wait()
            p.status = "stopped"
            with contextlib.suppress(FileNotFoundError):
                (self.run / f"{p.name}.ready").unlink()
        for p in self.procs:
            if p.status not in ("missing",):
                p.status = "stopped"
        if self.nats is not None:
            self.nats.stop()
        stop_postgres(self.data_dir / "pg")

    def main(self) -> int:
        os.umask(0o077)  # every file the supervisor, its servers and its services create: owner only
        private_dir(self.data_dir)
        private_dir(self.run)
        private_dir(self.logs)
        for stale in ("cluster.ready", "supervisor.failed"):
            with contextlib.suppress(FileNotFoundError):
                (self.run / stale).unlink()
        (self.run / "supervisor.pid").write_text(str(os.getpid()))

        def on_signal(signum: int, frame: Any) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

        def on_rotate(signum: int, frame: Any) -> None:
            self.rotation_asked = True

        signal.signal(signal.SIGUSR1, on_rotate)
        code = 0
        try:
            try:
                self.start_servers()
            except Exception as exc:
                self._fail(f"could not start the servers: {type(exc).__name__}: {str(exc)[:500]}")
                print(self.failed, file=sys.stderr, flush=True)
                code = 1
            while not self.stopping and self.failed is None:
                self.tick()
                self._advance_rotation()
                self._write_state()
                time.sleep(0.1)
            if self.failed is not None:
                code = 1
                print(f"supervisor: {self.failed}", file=sys.stderr, flush=True)
        finally:
            self.stop_all()
            self.cluster_ready = False
            with contextlib.suppress(Exception):
                self._write_state()
            for f in ("cluster.ready", "supervisor.pid"):
                with contextlib.suppress(FileNotFoundError):
                    (self.run / f).unlink()
        return code


def cluster_processes(data_dir: Path) -> list[tuple[int, str]]:
    """``(pid, command line)`` of every process running on ``data_dir``: one whose arguments name the
    directory or a path inside it (the supervisor, services, nats-servers, the PostgreSQL server), not
    counting this process and ``mpcw`` commands. Read from ``/proc``; empty where there is none."""
    d = str(data_dir.resolve())
    me = {os.getpid(), os.getppid()}
    found = []
    try:
        pids = [int(x) for x in os.listdir("/proc") if x.isdigit()]
    except OSError:
        return []
    for pid in pids:
        if pid in me:
            continue
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in args if a]
        if "services.mpcw" in argv or not pid_alive(pid):
            continue
        if any(a == d or a.startswith(d + "/") or a.startswith("-D" + d) for a in argv):
            found.append((pid, " ".join(argv)))
    return found


def _http_answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.3):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except Exception:
        return False


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m services.localcluster.supervisor")
    p.add_argument("--data-dir", required=True)
    p.add_argument("--nodes", type=int, default=5)
    p.add_argument("--threshold", type=int, default=4)
    p.add_argument("--nats-servers", type=int, choices=(1, 3, 5), default=1)
    a = p.parse_args(argv)
    d = Path(a.data_dir).expanduser().resolve()
    sys.exit(Supervisor(d, a.nodes, a.threshold, a.nats_servers).main())


if __name__ == "__main__":
    main()
