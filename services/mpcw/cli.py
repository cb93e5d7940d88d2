"""``mpcw``: the admin command line.

Global option ``--data-dir`` (env ``MPCW_DATA_DIR``, default ``~/.mpcw``) goes before the subcommand::

    mpcw --data-dir /tmp/c certs init --nodes 5
    mpcw --data-dir /tmp/c up --nodes 5 --threshold 4
    mpcw --data-dir /tmp/c status
    mpcw --data-dir /tmp/c down

Adding commands: put them in a module ``services/mpcw/cmd_<name>.py`` that does
``from services.mpcw.cli import main, data_dir_of`` and decorates with ``@main.command()`` /
``@main.group()``; every ``cmd_*`` module in this package is imported when the CLI starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import pkgutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from services.localcluster.pki import init_pki
from services.localcluster.supervisor import cluster_processes, pid_alive, read_pid, run_dir
from services.runtime.config import default_data_dir, read_cluster
from services.runtime.logging import open_log_file
from services.runtime.pki_files import pki_dir
from services.runtime.secrets_dir import SecretsDirError, private_dir, secrets_dir


@click.group()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="cluster directory (env MPCW_DATA_DIR, default ~/.mpcw)",
)
@click.pass_context
def main(ctx: click.Context, data_dir: Path | None) -> None:
    """mpc-wallet admin tool."""
    ctx.ensure_object(dict)
    ctx.obj["data_dir"] = data_dir.expanduser().resolve() if data_dir else default_data_dir()


def data_dir_of(ctx: click.Context) -> Path:
    d: Path = ctx.find_root().obj["data_dir"]
    return d


# ---- certs ----------------------------------------------------------------------------------------------


@main.group()
def certs() -> None:
    """The PKI: CA, TLS certificates, node identity keys."""


@certs.command("init")
@click.option("--nodes", type=click.IntRange(1, 100), default=5, show_default=True)
@click.pass_context
def certs_init(ctx: click.Context, nodes: int) -> None:
    """Create the CA, one client certificate and identity keys per identity, and the server certificate."""
    d = data_dir_of(ctx)
    created = _init_pki(d, nodes)
    click.echo(
        f"PKI in {pki_dir(d)}: {len(created)} new identities"
        + (f" ({', '.join(created)})" if created else "")
    )
    click.echo(f"private keys in {secrets_dir(d)} (back it up apart from {d})")


@certs.command("rotate")
@click.option("--identity", "identities", multiple=True, help="Rotate only this identity (repeatable).")
@click.option("--no-server", is_flag=True, help="Keep the nats-server certificate.")
@click.option(
    "--revoke",
    is_flag=True,
    help="Also restart the nats-servers: no connection made with an old one survives.",
)
@click.option("--timeout", default=900.0, show_default=True, help="Seconds to wait for the rotation.")
@click.pass_context
def certs_rotate(
    ctx: click.Context, identities: tuple[str, ...], no_server: bool, revoke: bool, timeout: float
) -> None:
    """Issue new TLS certificates and retire the old ones, while the cluster runs.

    Every process using a rotated identity is restarted one at a time (spends go on); then the broker
    refuses the old certificates. On a stopped cluster the new certificates are simply issued."""
    from services.localcluster.cert_rotation import new_request, read_status, write_request
    from services.localcluster.pki import finish_rotation, issue_rotated, read_epochs

    d = data_dir_of(ctx)
    if not pki_dir(d).exists():
        raise click.ClickException(f"no PKI in {pki_dir(d)}: run `mpcw certs init` or `mpcw up` first")
    n = int(read_cluster(d).get("n", 5))
    from schemas.names import all_identities

    unknown = sorted(set(identities) - set(all_identities(n)))
    if unknown:
        raise click.UsageError(f"not identities of this cluster: {', '.join(unknown)}")
    pid = read_pid(run_dir(d) / "supervisor.pid")
    if pid is None or not pid_alive(pid):
        new = issue_rotated(d, list(identities) or all_identities(n), server=not no_server)
        finish_rotation(d)
        click.echo(f"cluster not running: {len(new)} certificates issued (epoch {max(new.values())})")
        click.echo(f"epochs: {read_epochs(d)['current']}")
        return
    req = new_request(list(identities), server=not no_server, revoke=revoke)
    write_request(run_dir(d), req)
    os.kill(pid, signal.SIGUSR1)
    shown = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = read_status(run_dir(d))
        if st is not None and st.id == req.id:
            for line in st.steps[shown:]:
                click.echo(f"  {line}")
            shown = len(st.steps)
            if st.state == "done":
                click.echo(f"rotation done in {st.finished - st.started:.0f} s")
                return
            if st.state == "failed":
                raise click.ClickException(f"rotation failed: {st.error}")
        elif st is not None and st.id == "?" and st.state == "failed":
            raise click.ClickException(st.error)
        time.sleep(0.2)
    raise click.ClickException(
        f"the rotation did not finish within {timeout:.0f} s (it may still be running)"
    )


@certs.command("status")
@click.pass_context
def certs_status(ctx: click.Context) -> None:
    """Each certificate's epoch and expiry (a warning within 30 days)."""
    import datetime as dt

    from schemas.names import all_identities
    from services.localcluster.pki import cert_expiry, read_epochs

    d = data_dir_of(ctx)
    if not pki_dir(d).exists():
        raise click.ClickException(f"no PKI in {pki_dir(d)}")
    names = all_identities(int(read_cluster(d).get("n", 5)))
    epochs = read_epochs(d)
    now = dt.datetime.now(dt.UTC)
    for name, until in cert_expiry(d, names).items():
        days = (until - now).days
        warn = "  EXPIRED" if until <= now else ("  renew soon: mpcw certs rotate" if days < 30 else "")
        epoch = epochs["current"].get(name, 0) if name in names else "-"
        click.echo(f"{name:<12} epoch {epoch!s:<3} valid until {until:%Y-%m-%d} ({days} days){warn}")
    if epochs["previous"]:
        click.echo(
            f"rotation in progress: old certificates still accepted for {', '.join(epochs['previous'])}"
        )


def _init_pki(d: Path, nodes: int) -> list[str]:
    try:
        return init_pki(d, nodes)
    except SecretsDirError as exc:
        raise click.ClickException(str(exc)) from None


# ---- db -------------------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """The PostgreSQL schema."""


@db.command("migrate")
@click.option("--database-url", envvar="MPCW_DATABASE_URL", default=None, help="default: cluster.json")
@click.pass_context
def db_migrate(ctx: click.Context, database_url: str | None) -> None:
    """Apply the pending migrations of db/ (idempotent)."""
    from services.runtime.db import migrate

    url = database_url or read_cluster(data_dir_of(ctx)).get("database_url")
    if not url:
        raise click.ClickException("no database: pass --database-url, set MPCW_DATABASE_URL or run `mpcw up`")
    applied = asyncio.run(migrate(url))
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else " (up to date)")
    )


# ---- up / down / status ---------------------------------------------------------------------------------


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _state(d: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run_dir(d) / "supervisor.json").read_text())
        return data
    except (OSError, ValueError):
        return {}


@main.command()
@click.option("--nodes", type=click.IntRange(1, 100), default=5, show_default=True)
@click.option("--threshold", type=int, default=4, show_default=True)
@click.option(
    "--nats-servers",
    type=click.Choice(["1", "3", "5"]),
    default="1",
    show_default=True,
    help="3 or 5: a local JetStream cluster, every stream and bucket replicated 3 times",
)
@click.option("--timeout", type=float, default=90.0, show_default=True, help="seconds to wait for readiness")
@click.pass_context
def up(ctx: click.Context, nodes: int, threshold: int, nats_servers: str, timeout: float) -> None:
    """Start a local cluster (NATS, PostgreSQL, every service) and return once it is ready."""
    d = data_dir_of(ctx)
    if not (threshold * 2 > nodes and threshold <= nodes):
        raise click.BadParameter(f"need {nodes} // 2 < threshold <= {nodes}", param_hint="--threshold")
    run = run_dir(d)
    pid = read_pid(run / "supervisor.pid")
    if pid is not None:
        click.echo(f"already running (supervisor pid {pid}); `mpcw down` first")
        return
    # what an earlier supervisor left running (it was killed): a second set beside it would share its
    # stores (NATS, the devchain's file, the signers' keystores); PostgreSQL alone is adopted
    leftovers = [(pid, cmd) for pid, cmd in cluster_processes(d) if not _is_postgres(cmd)]
    if leftovers:
        listed = "\n".join(f"  pid {pid}: {cmd[:150]}" for pid, cmd in leftovers)
        raise click.ClickException(
            f"{len(leftovers)} process(es) of an earlier run still use {d}; `mpcw down` stops them:\n{listed}"
        )
    before = read_cluster(d).get("nats_url")
    if before and len(str(before).split(",")) != int(nats_servers):
        # a single server and a cluster keep their JetStream stores apart: the other layout would start
        # from empty streams and buckets (no key record, no rounds), though nothing is deleted
        raise click.BadParameter(
            f"this data directory's NATS store was made with {len(str(before).split(','))} server(s); "
            f"starting {nats_servers} would start from empty streams. Use that count, or another "
            "--data-dir",
            param_hint="--nats-servers",
        )
    os.umask(0o077)  # the supervisor and everything it starts create files for their owner only
    private_dir(d)
    private_dir(run)
    private_dir(d / "logs")
    _init_pki(d, nodes)
    for stale in ("cluster.ready", "supervisor.failed", "supervisor.json"):
        with contextlib.suppress(FileNotFoundError):
            (run / stale).unlink()
    with open_log_file(d / "logs" / "supervisor.log") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.localcluster.supervisor", "--data-dir", str(d),
             "--nodes", str(nodes), "--threshold", str(threshold), "--nats-servers", nats_servers],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        if (run / "cluster.ready").exists():
            break
        failed = run / "supervisor.failed"
        if failed.exists() or proc.poll() is not None or time.monotonic() > deadline:
            reason = failed.read_text().strip() if failed.exists() else (
                f"supervisor exited with {proc.returncode}" if proc.poll() is not None
                else f"not ready after {timeout:.0f}s"
            )  # fmt: skip
            state = _state(d)
            waiting = [
                p["name"] for p in state.get("processes", []) if p["status"] not in ("ready", "missing")
            ]
            click.echo(f"mpcw up failed: {reason}", err=True)
            if waiting:
                click.echo(f"not ready: {', '.join(waiting)}", err=True)
                click.echo(f"--- {waiting[0]}.log ---\n{_tail(d / 'logs' / f'{waiting[0]}.log')}", err=True)
            else:
                click.echo(f"--- supervisor.log ---\n{_tail(d / 'logs' / 'supervisor.log')}", err=True)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
            ctx.exit(1)
        time.sleep(0.1)
    cluster = read_cluster(d)
    state = _state(d)
    missing = [p["name"] for p in state.get("processes", []) if p["status"] == "missing"]
    click.echo(f"cluster ready in {d} (supervisor pid {proc.pid})")
    click.echo(f"  nats     {cluster.get('nats_url')}")
    click.echo(f"  postgres {cluster.get('database_url')}")
    click.echo(f"  intake   {cluster.get('intake_url')}   devchain {cluster.get('devchain_url')}")
    click.echo(f"  n={cluster.get('n')} t={cluster.get('t')}; admin API key in {d / 'cluster.json'}")
    click.echo(f"  private keys in {secrets_dir(d)} (back it up apart from the data directory)")
    if missing:
        click.echo(f"  not installed yet (skipped): {', '.join(missing)}")


@main.command()
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.pass_context
def down(ctx: click.Context, timeout: float) -> None:
    """Stop the services (SIGTERM, then SIGKILL after --timeout) and the embedded servers."""
    d = data_dir_of(ctx)
    run = run_dir(d)
    pid = read_pid(run / "supervisor.pid")
    if pid is None:
        click.echo("not running")
    else:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if pid_alive(pid):
            click.echo(
                f"supervisor {pid} did not stop in {timeout:.0f}s: killing its process group", err=True
            )
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    stopped = _stop_leftovers(d, timeout)
    if stopped:
        click.echo(f"stopped {stopped} process(es) left by an earlier run")
    if pid is not None:
        click.echo("stopped")


def _is_postgres(cmd: str) -> bool:
    return cmd.split(" ", 1)[0].endswith("/postgres")


def _stop_leftovers(d: Path, timeout: float) -> int:
    """Stop every process still running on ``d`` after its supervisor is gone (killed, or stuck and
    killed): whatever names the directory (services, nats-servers), SIGTERM then SIGKILL, and PostgreSQL
    with pg_ctl. Each is one of ours: it runs on this directory's stores. Returns how many there were
    besides PostgreSQL."""
    from services.localcluster.embedded import stop_postgres

    pids = [pid for pid, cmd in cluster_processes(d) if not _is_postgres(cmd)]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    stop_postgres(d / "pg")
    for f in ("cluster.ready", "supervisor.pid"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir(d) / f).unlink()
    return len(pids)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="machine-readable")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Which processes run. Exit status 3 when the cluster is not running."""
    d = data_dir_of(ctx)
    pid = read_pid(run_dir(d) / "supervisor.pid")
    state = _state(d) if pid is not None else {}
    procs = state.get("processes", [])
    for p in procs:
        if p.get("pid") and not pid_alive(p["pid"]):
            p["status"] = "dead"
    leftovers = [{"pid": q, "command": cmd} for q, cmd in cluster_processes(d)] if pid is None else []
    # ready means ready now: every service ready, every server up (a supervisor of an older version
    # writes no "healthy")
    ready = bool(state.get("ready", False)) and bool(state.get("healthy", True))
    if as_json:
        summary = {"running": pid is not None, "supervisor_pid": pid, "ready": ready}
        extra = {"postgres": state.get("postgres"), "leftovers": leftovers}
        click.echo(json.dumps({**summary, **extra, "processes": procs}, indent=2))
    elif pid is None:
        click.echo(f"not running ({d})")
        if leftovers:
            click.echo(
                f"but {len(leftovers)} process(es) of an earlier run still use it (`mpcw down` stops them):"
            )
            for q in leftovers:
                click.echo(f"  pid {q['pid']}: {str(q['command'])[:150]}")
    else:
        word = "ready" if ready else ("degraded" if state.get("ready") else "starting")
        click.echo(f"supervisor pid {pid}; cluster {word}; {d}")
        pg = state.get("postgres") or {}
        if pg:
            pg_state = f"pid={pg.get('pid')}" if pg.get("pid") else "DOWN (restarting)"
            click.echo(f"  {'postgres':<20} {pg_state:<18} restarts={pg.get('restarts', 0)}")
        for p in procs:
            click.echo(
                f"  {p['name']:<20} {p['status']:<9} pid={p.get('pid') or '-':<8} restarts={p['restarts']}"
            )
    if pid is None:
        ctx.exit(3)


# ---- command modules ------------------------------------------------------------------------------------


def _load_command_modules() -> None:
    pkg = Path(__file__).parent
    for info in pkgutil.iter_modules([str(pkg)]):
        if info.name.startswith("cmd_"):
            importlib.import_module(f"services.mpcw.{info.name}")


_load_command_modules()

if __name__ == "__main__":
    main()
