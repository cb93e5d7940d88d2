"""Chaos: spends under a steady load while random processes of the cluster are killed, then the invariants.

    python -m loadtest.chaos [--data-dir DIR] [--duration 120] [--rate 5] [--clients 20]
                             [--kill-every 2] [--nats-servers 1|3] [--settle 120] [--bound 240]
                             [--seed N] [--targets services,nats,postgres,supervisor] [--coins N]
                             [--instances 1|2] [--keep]

Starts its own cluster (``mpcw up``, the DKG, one faucet coin per spend plus a few) in a temporary
directory unless ``--data-dir`` names a running one. Then, for ``--duration`` seconds:

- ``--clients`` clients send ``--rate`` spends per second in all, each with its own idempotency key, and
  retry a request whose answer they did not get (connection refused or reset, timeout, 5xx) or that was
  refused for want of spendable coins (409) with the same key, re-reading ``cluster.json`` (a restarted
  supervisor gives intake a new port), for at most ``REQUEST_DEADLINE_S``;
- every ``--kill-every`` seconds (+-50 %, seeded) one process of the cluster dies by SIGKILL. The kind of
  target goes round a seeded shuffle of ``--targets`` (every kind once per round, the supervisor last:
  the whole cluster is down until it is back), the process within a kind is drawn: ``services`` (any
  service the supervisor runs, devchain included), ``nats`` (a nats-server), ``postgres`` (the
  postmaster, from ``DIR/pg/postmaster.pid``), ``supervisor``. Only pids that
  ``services.localcluster.supervisor.cluster_processes(DIR)`` lists are ever killed. A killed supervisor
  takes its children with it; the tool then waits for them to exit and runs ``mpcw up`` again, as an
  operator would, and goes on.

With ``--instances 2`` its cluster runs two instances of each stateless service (intake, consensus,
broadcaster: ``DIR/services.json``, see :func:`scaled_table`); the clients spread their requests over every
intake (``cluster.json``'s and each ``DIR/run/intake-*.url``) and move to another one when a request gets
no answer, and the faults hit any instance.

Then it stops sending, waits up to ``--settle`` seconds for every accepted spend to end, checks the
invariants (``tests.suites.invariants``) and prints the faults, the load and the invariants as markdown
tables. Exit status 1 when an invariant does not hold. Bounded in count and time, 127.0.0.1 only; its own
cluster is stopped (``mpcw down``, then whatever it started is killed by pid) and its directory removed
(kept with ``--keep``, or when an invariant failed, for the logs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from services.localcluster.embedded import postmaster_pid  # noqa: E402
from services.localcluster.supervisor import cluster_processes, default_table, pid_alive, read_pid  # noqa: E402
from services.runtime.secrets_dir import SECRETS_DIR_ENV  # noqa: E402
from tests.suites.invariants import Report, check_invariants, wait_terminal  # noqa: E402

TARGET_KINDS = ("services", "nats", "postgres", "supervisor")
RECIPIENT = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"  # BIP-173's test vector: nobody's wallet
AMOUNT_SATS = 10_000
COIN_SATS = 200_000
REQUEST_DEADLINE_S = 90.0  # a client gives a request up after this long without an answer
RECOVERY_TIMEOUT_S = 120.0
ENV_DROPPED = ("MPCW_NATS_URL", "MPCW_DATABASE_URL", "MPCW_DATA_DIR")


def mpcw(d: Path, *args: str, timeout: float = 180.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
    out = subprocess.run(
        [sys.executable, "-m", "services.mpcw", "--data-dir", str(d), *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check and out.returncode != 0:
        raise RuntimeError(f"mpcw {' '.join(args)} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def cluster_json(d: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((d / "cluster.json").read_text())
    return data


STATELESS = ("intake", "consensus", "broadcaster")


def scaled_table(n: int, instances: int) -> list[dict[str, Any]]:
    """The default services, with ``instances`` of each stateless one (``<name>-2``, ...: the same identity
    and durable consumers, so they share the work; extra intakes on a free port, in ``run/<name>.url``)."""
    table = default_table(n)
    for e in [e for e in table if e["name"] in STATELESS]:
        for i in range(2, instances + 1):
            extra = {**e, "name": f"{e['name']}-{i}", "args": [*e.get("args", []), "--identity", e["name"]]}
            if e["name"] == "intake":
                extra["args"] = [*extra["args"], "--port", "0"]
            table.append(extra)
    return table


def intake_urls(d: Path) -> list[str]:
    """Every intake instance's URL: ``cluster.json``'s, then each ``run/intake-*.url``."""
    urls = [cluster_json(d)["intake_url"]]
    for f in sorted((d / "run").glob("intake-*.url")):
        with contextlib.suppress(OSError):
            urls.append(f.read_text().strip())
    return urls


def start_cluster(
    d: Path, nats_servers: int, coins: int, coin_sats: int = COIN_SATS, instances: int = 1
) -> None:
    """``mpcw up``, the FROST DKG, and ``coins`` confirmed coins of ``coin_sats`` (faucet blocks);
    ``instances`` of each stateless service."""
    if instances > 1:
        (d / "services.json").write_text(json.dumps(scaled_table(5, instances), indent=2))
    mpcw(d, "up", "--nats-servers", str(nats_servers))
    mpcw(d, "dkg", "start", "--scheme", "frost", timeout=120.0)
    address = mpcw(d, "wallet", "address").stdout.strip()
    with httpx.Client(base_url=cluster_json(d)["devchain_url"], timeout=30.0) as c:
        for _ in range(coins):
            c.post("/dev/faucet", json={"address": address, "sats": coin_sats}).raise_for_status()


def started_pids(d: Path) -> list[int]:
    """The supervisor's, its services' and the nats-servers' pids, as the supervisor last recorded them."""
    try:
        state = json.loads((d / "run" / "supervisor.json").read_text())
    except (OSError, ValueError):
        return []
    pids = (
        [state.get("pid")] + [p.get("pid") for p in state.get("processes", [])] + state.get("nats_pids", [])
    )
    return [int(p) for p in pids if p]


def stop_cluster(d: Path) -> None:
    """``mpcw down``; then SIGKILL, by pid, whatever still runs on ``d``."""
    started = started_pids(d)
    with contextlib.suppress(Exception):
        mpcw(d, "down", timeout=120.0, check=False)
    for pid in [*started, *(p for p, _ in cluster_processes(d))]:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ---- the load ----------------------------------------------------------------------------------------------


@dataclass
class Load:
    accepted: dict[str, float] = field(default_factory=dict)  # tx id -> when the client saw it accepted
    requested: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # final 4xx answers, by error
    gave_up: int = 0  # no answer within REQUEST_DEADLINE_S
    retries: Counter[str] = field(default_factory=Counter)
    accept_latency: list[float] = field(default_factory=list)
    by_intake: Counter[str] = field(default_factory=Counter)  # accepted, by the intake URL that answered
    http: dict[str, httpx.AsyncClient] = field(default_factory=dict)  # one per intake URL, shared

    def client(self, url: str, api_key: str) -> httpx.AsyncClient:
        """The HTTP client for ``url`` (a new one after ``mpcw up`` moved intake to another port): made
        once, as a client's TLS context costs tens of milliseconds of CPU the spends need."""
        if url not in self.http:
            self.http[url] = httpx.AsyncClient(base_url=url, timeout=20.0, headers={"X-API-Key": api_key})
        return self.http[url]

    async def close(self) -> None:
        for http in self.http.values():
            await http.aclose()


async def one_spend(d: Path, load: Load, amount: int) -> None:
    """POST one spend, retried with the same idempotency key until it is answered or the deadline."""
    key = uuid.uuid4().hex
    body = {"recipient": RECIPIENT, "amount_sats": amount, "idempotency_key": key}
    load.requested += 1
    start = time.monotonic()
    deadline = start + REQUEST_DEADLINE_S
    delay = 0.2
    turn = load.requested  # which intake first: requests go round the instances
    while time.monotonic() < deadline:
        try:
            c = cluster_json(d)
            urls = intake_urls(d)
            url = urls[turn % len(urls)]
            turn += 1  # a retry goes to the next instance
            r = await load.client(url, c["admin_api_key"]).post("/api/v1/transactions", json=body)
        except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
            load.retries[type(exc).__name__] += 1
        else:
            if r.status_code in (200, 202):
                load.accepted[r.json()["id"]] = time.time()
                load.by_intake[url] += 1
                load.accept_latency.append(time.monotonic() - start)
                return
            error = ""
            with contextlib.suppress(ValueError, AttributeError):
                error = str(r.json().get("error", ""))
            if r.status_code < 500 and not (
                r.status_code == 409 and error in ("insufficient funds", "conflict")
            ):
                load.refused[f"{r.status_code} {error}"] += 1
                return
            load.retries[f"{r.status_code} {error}"] += 1
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 3.0)
    load.gave_up += 1


async def run_load(
    d: Path, load: Load, rate: float, clients: int, duration: float, stop: asyncio.Event
) -> None:
    """``rate`` spends per second for ``duration`` seconds, at most ``clients`` in flight."""
    tickets: asyncio.Queue[int | None] = asyncio.Queue()

    async def client() -> None:
        while (ticket := await tickets.get()) is not None:
            await one_spend(d, load, AMOUNT_SATS + ticket)  # distinct amounts: distinct requests

    workers = [asyncio.create_task(client()) for _ in range(clients)]
    t0 = time.monotonic()
    n = 0
    while not stop.is_set() and n < int(rate * duration):
        await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        tickets.put_nowait(n)
        n += 1
    for _ in workers:
        tickets.put_nowait(None)
    try:
        await asyncio.gather(*workers)
    finally:
        await load.close()


# ---- the faults --------------------------------------------------------------------------------------------


@dataclass
class Fault:
    at: float  # seconds since the start of the run
    kind: str
    name: str
    pid: int
    recovered_s: float | None = None  # until the target ran (and, for a service, was ready) again


def targets_of(d: Path, kind: str) -> list[tuple[str, int]]:
    """``(name, pid)`` of the live processes of ``kind`` on ``d``, as the supervisor's files say."""
    try:
        state = json.loads((d / "run" / "supervisor.json").read_text())
    except (OSError, ValueError):
        state = {}
    if kind == "services":
        return [(p["name"], int(p["pid"])) for p in state.get("processes", []) if p.get("pid")]
    if kind == "nats":
        return [(f"nats-{i + 1}", int(pid)) for i, pid in enumerate(state.get("nats_pids", [])) if pid]
    if kind == "postgres":
        pid = postmaster_pid(d / "pg")
        return [("postgres", pid)] if pid else []
    if kind == "supervisor":
        pid = read_pid(d / "run" / "supervisor.pid")
        return [("supervisor", pid)] if pid else []
    raise ValueError(f"unknown target kind {kind!r}")


def recovered(d: Path, f: Fault) -> bool:
    now = dict(targets_of(d, f.kind)) if f.kind != "supervisor" else {}
    if f.kind == "supervisor":
        return (d / "run" / "cluster.ready").exists() and read_pid(d / "run" / "supervisor.pid") not in (
            None,
            f.pid,
        )
    pid = now.get(f.name)
    if pid is None or pid == f.pid or not pid_alive(pid):
        return False
    if f.kind != "services":
        return True
    state = json.loads((d / "run" / "supervisor.json").read_text())
    return any(p["name"] == f.name and p["status"] == "ready" for p in state.get("processes", []))


async def watch_recovery(d: Path, f: Fault, t0: float) -> None:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if recovered(d, f):
                f.recovered_s = time.monotonic() - t0 - f.at
                return
        await asyncio.sleep(0.1)


async def restart_supervisor(d: Path, nats_servers: int, log: list[str]) -> None:
    """After the supervisor died: wait for its children to follow it, then ``mpcw up`` (retried)."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        leftovers = [p for p, cmd in cluster_processes(d) if not cmd.split(" ", 1)[0].endswith("/postgres")]
        if not leftovers:
            out = await asyncio.to_thread(mpcw, d, "up", "--nats-servers", str(nats_servers), check=False)
            if out.returncode == 0 and "already running" not in out.stdout:
                return
            log.append(f"mpcw up exited {out.returncode}: {(out.stdout + out.stderr).strip()[-300:]}")
        await asyncio.sleep(0.5)
    raise RuntimeError(f"the cluster did not come back after its supervisor was killed: {log[-3:]}")


async def run_faults(
    d: Path,
    faults: list[Fault],
    kinds: list[str],
    every: float,
    duration: float,
    nats_servers: int,
    rng: random.Random,
    stop: asyncio.Event,
    t0: float,
    log: list[str],
) -> None:
    watchers: list[asyncio.Task[None]] = []
    order: list[str] = []
    end = t0 + duration
    while kinds and not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every * rng.uniform(0.5, 1.5))
        if time.monotonic() >= end or stop.is_set():
            break
        if not order:
            order = [k for k in kinds if k != "supervisor"]
            rng.shuffle(order)
            order += [k for k in kinds if k == "supervisor"]  # last: the cluster is down until `mpcw up`
        kind = order.pop(0)
        mine = {pid for pid, _ in cluster_processes(d)}
        candidates = [(n, p) for n, p in targets_of(d, kind) if p in mine]  # only this cluster's
        if not candidates:
            log.append(f"{time.monotonic() - t0:.1f}s: no live {kind} process to kill")
            continue
        name, pid = rng.choice(sorted(candidates))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        f = Fault(time.monotonic() - t0, kind, name, pid)
        faults.append(f)
        print(f"  {f.at:6.1f}s  kill -9 {kind}: {name} (pid {pid})", flush=True)
        if kind == "supervisor":
            await restart_supervisor(d, nats_servers, log)
            f.recovered_s = time.monotonic() - t0 - f.at
        else:
            watchers.append(asyncio.create_task(watch_recovery(d, f, t0)))
    await asyncio.gather(*watchers)


# ---- one run -----------------------------------------------------------------------------------------------


@dataclass
class Result:
    load: Load
    faults: list[Fault]
    report: Report
    log: list[str]
    seconds: dict[str, float]

    def markdown(self) -> str:
        out = ["| fault | count | recovered in (median / max) |", "|---|---:|---|"]
        by_kind: dict[str, list[Fault]] = {}
        for f in self.faults:
            by_kind.setdefault(f.kind, []).append(f)
        for kind, fs in sorted(by_kind.items()):
            rec = [f.recovered_s for f in fs if f.recovered_s is not None]
            times = f"{statistics.median(rec):.1f} s / {max(rec):.1f} s" if rec else "-"
            never = len(fs) - len(rec)
            names = ", ".join(sorted({f.name for f in fs}))
            out.append(
                f"| kill -9 {kind} ({names}) | {len(fs)} | {times}{f'; {never} not back' if never else ''} |"
            )
        ld = self.load
        by_intake = " / ".join(str(ld.by_intake[u]) for u in sorted(ld.by_intake))
        out += [
            "",
            "| load | value |",
            "|---|---:|",
            f"| spends requested | {ld.requested} |",
            f"| accepted | {len(ld.accepted)} |",
            f"| accepted, by intake instance | {by_intake} |",
            f"| refused at intake (final 4xx) | {sum(ld.refused.values())} {dict(ld.refused) or ''} |",
            f"| gave up (no answer in {REQUEST_DEADLINE_S:.0f} s) | {ld.gave_up} |",
            f"| retried requests | {sum(ld.retries.values())} {dict(ld.retries.most_common(4)) or ''} |",
        ]
        if ld.accept_latency:
            out.append(f"| request -> accepted, max | {max(ld.accept_latency):.1f} s |")
        out.append(
            f"| load / settle / check | {self.seconds['load']:.0f} s / {self.seconds['settle']:.0f} s / "
            f"{self.seconds['check']:.0f} s |"
        )
        return "\n".join(out) + "\n\n" + self.report.markdown()


async def chaos(
    d: Path,
    *,
    duration: float,
    rate: float,
    clients: int,
    kill_every: float,
    nats_servers: int,
    settle: float,
    bound: float,
    seed: int,
    targets: list[str],
) -> Result:
    rng = random.Random(seed)
    load = Load()
    faults: list[Fault] = []
    log: list[str] = []
    stop = asyncio.Event()
    t0 = time.monotonic()
    load_task = asyncio.create_task(run_load(d, load, rate, clients, duration, stop))
    fault_task = asyncio.create_task(
        run_faults(d, faults, targets, kill_every, duration, nats_servers, rng, stop, t0, log)
    )
    try:
        await asyncio.wait_for(asyncio.shield(load_task), duration + REQUEST_DEADLINE_S + RECOVERY_TIMEOUT_S)
    finally:
        stop.set()
        await fault_task
        await load_task
    t_load = time.monotonic() - t0
    print(f"  load done after {t_load:.0f}s: {len(load.accepted)} accepted; settling ...", flush=True)
    open_ids = await wait_terminal(d, set(load.accepted), settle)
    t_settle = time.monotonic() - t0 - t_load
    print(f"  settled in {t_settle:.0f}s ({len(open_ids)} still open); checking ...", flush=True)
    report = await check_invariants(d, load.accepted, bound_s=bound)
    t_check = time.monotonic() - t0 - t_load - t_settle
    return Result(load, faults, report, log, {"load": t_load, "settle": t_settle, "check": t_check})


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="a running cluster (default: start one)")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load and faults")
    ap.add_argument("--rate", type=float, default=5.0, help="spends per second, all clients together")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--kill-every", type=float, default=2.0, help="seconds between kills (+-50%%); 0: none")
    ap.add_argument("--nats-servers", type=int, choices=(1, 3), default=1)
    ap.add_argument("--settle", type=float, default=120.0, help="seconds to wait for the spends to end")
    ap.add_argument(
        "--bound", type=float, default=None, help="accepted -> terminal limit (default: settle + duration)"
    )
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--targets", default=",".join(TARGET_KINDS), help="kinds of process to kill")
    ap.add_argument(
        "--coins", type=int, default=None, help="faucet coins for its own cluster (default: spends + 10)"
    )
    ap.add_argument(
        "--instances", type=int, choices=(1, 2), default=1, help="instances of each stateless service"
    )
    ap.add_argument("--keep", action="store_true", help="keep its own cluster's directory")
    a = ap.parse_args(argv)
    targets = [t for t in a.targets.split(",") if t]
    if bad := [t for t in targets if t not in TARGET_KINDS]:
        ap.error(f"unknown targets {bad}; choose from {','.join(TARGET_KINDS)}")
    if not (0 < a.duration <= 3600 and 0 < a.rate <= 100 and 1 <= a.clients <= 200 and 0 <= a.settle <= 3600):
        ap.error("duration (0, 3600], rate (0, 100], clients [1, 200], settle [0, 3600]")
    seed = a.seed if a.seed is not None else random.randrange(2**31)
    spends = int(a.rate * a.duration)
    own = a.data_dir is None
    root = Path(tempfile.mkdtemp(prefix="mpcw-chaos-")) if own else None
    d = (root / "cluster") if root is not None else a.data_dir.resolve()
    if root is not None:
        os.environ.setdefault(SECRETS_DIR_ENV, str(root / "secrets"))  # never the user's home
    ok = False
    try:
        if own:
            print(f"starting a cluster in {d} ...", flush=True)
            d.mkdir()
            start_cluster(
                d, a.nats_servers, a.coins if a.coins is not None else spends + 10, instances=a.instances
            )
        print(
            f"chaos: {spends} spends at {a.rate}/s from {a.clients} clients for {a.duration:.0f}s, "
            f"a kill -9 every ~{a.kill_every}s among {','.join(targets)}, seed {seed}",
            flush=True,
        )
        res = asyncio.run(
            chaos(
                d,
                duration=a.duration,
                rate=a.rate,
                clients=a.clients,
                kill_every=a.kill_every if a.kill_every > 0 else 1e9,
                nats_servers=a.nats_servers,
                settle=a.settle,
                bound=a.bound if a.bound is not None else a.settle + a.duration,
                seed=seed,
                targets=targets,
            )
        )
        ok = res.report.ok
        print()
        print(f"`python -m loadtest.chaos {' '.join(sys.argv[1:] if argv is None else argv)}` (seed {seed}), "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
        print()
        print(res.markdown())
        for line in res.log:
            print(f"note: {line}")
    finally:
        if own:
            stop_cluster(d)
            if ok and not a.keep:
                shutil.rmtree(root, ignore_errors=True)  # type: ignore[arg-type]
            else:
                print(f"the cluster's directory is kept: {d}", file=sys.stderr)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
