"""One real cluster for the whole e2e session, driven like an operator drives it.

``cluster`` (session scope) runs ``mpcw up`` in a directory under pytest's tmp dir, ``mpcw dkg start
--scheme frost`` and funds the wallet a few times with ``mpcw dev fund``; ``mpcw down`` runs in teardown
even when a test (or the start itself) failed. Tests talk to it the way a user does: the ``mpcw`` CLI as a
subprocess and intake's REST API with the admin key from ``cluster.json``; they inspect it the way an
auditor does: JetStream as the ``admin`` identity, PostgreSQL, the devchain's Esplora API, the files.

The e2e suite always uses the embedded servers ``mpcw up`` starts: the supervisor deliberately drops
``MPCW_NATS_URL`` / ``MPCW_DATABASE_URL`` from its services' environment (a cluster is one NATS and one
database), so those variables are removed here too, for the CLI and for the suite's own connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import nats.js.errors
import pytest
from coincurve import PrivateKey

from core.lifecycle import TERMINAL, TxState
from loadtest.chaos import started_pids
from schemas import kv as K
from schemas.messages import REGISTRY
from schemas.names import subject_matches
from services.localcluster.supervisor import pid_alive
from services.runtime.bus import Bus
from services.runtime.config import load_config
from services.runtime.key_proof import ProvenKeys
from wallet.address import p2wpkh_address
from wallet.threshold_account import ThresholdAccount

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
_VENV_MPCW = REPO / ".venv" / "bin" / "mpcw"
MPCW: list[str] = [str(_VENV_MPCW)] if _VENV_MPCW.exists() else [sys.executable, "-m", "services.mpcw"]
ENV_DROPPED = ("MPCW_NATS_URL", "MPCW_DATABASE_URL", "MPCW_DATA_DIR")

FUNDING_BTC = "1.0"
FUNDING_COUNT = 6
LIFECYCLE = ["pending", "voting", "approved", "signing", "signed", "broadcast", "confirmed"]
STREAMS = ("TX", "VOTE", "PROTO", "NODE")
BUCKETS = ("nodes", "bans", "rounds", "presig", "keys", "config")


class ClusterError(RuntimeError):
    pass


@dataclass(frozen=True)
class StoredMsg:
    stream: str
    seq: int
    subject: str
    data: bytes


@dataclass
class Cluster:
    data_dir: Path
    info: dict[str, Any] = field(default_factory=dict)
    dkg_output: str = ""  # what ``mpcw dkg start`` printed

    # ---- the CLI -------------------------------------------------------------------------------------

    def mpcw(
        self, *args: str, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """``mpcw --data-dir D ARGS...``; raises with both output streams when ``check`` and it fails."""
        env = {k: v for k, v in os.environ.items() if k not in ENV_DROPPED}
        proc = subprocess.run(
            [*MPCW, "--data-dir", str(self.data_dir), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"mpcw {' '.join(args)} exited {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n"
                f"{proc.stderr}"
            )
        return proc

    def load_info(self) -> None:
        self.info = json.loads((self.data_dir / "cluster.json").read_text())

    # ---- REST ----------------------------------------------------------------------------------------

    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.info["intake_url"],
            headers={"X-API-Key": self.info["admin_api_key"]},
            timeout=30.0,
        )

    def devchain(self) -> httpx.Client:
        return httpx.Client(base_url=self.info["devchain_url"], timeout=30.0)

    def get_tx(self, tx_id: str) -> dict[str, Any]:
        with self.api() as api:
            r = api.get(f"/api/v1/transactions/{tx_id}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    def request_spend(self, recipient: str, sats: int, **extra: Any) -> str:
        """POST a spend; return its tx id (the spend is not awaited)."""
        with self.api() as api:
            r = api.post("/api/v1/transactions", json={"recipient": recipient, "amount_sats": sats, **extra})
        if r.status_code not in (200, 202):
            raise ClusterError(f"spend refused: HTTP {r.status_code} {r.text[:500]}")
        tx_id: str = r.json()["id"]
        return tx_id

    def wait_terminal(self, tx_id: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the API until the spend is confirmed, rejected or failed (tolerates intake restarting)."""
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                last = self.get_tx(tx_id)
                if TxState(last["state"]) in TERMINAL:
                    return last
            time.sleep(0.2)
        raise ClusterError(f"{tx_id} not finished after {timeout:.0f}s: {json.dumps(last)[:2000]}")

    # ---- processes -----------------------------------------------------------------------------------

    def processes(self) -> dict[str, dict[str, Any]]:
        state = json.loads((self.data_dir / "run" / "supervisor.json").read_text())
        return {p["name"]: p for p in state["processes"]}

    def pid(self, service: str) -> int:
        pid = self.processes()[service]["pid"]
        assert isinstance(pid, int) and pid > 0, f"{service} has no pid"
        return pid

    def wait_ready(self, service: str, not_pid: int | None = None, timeout: float = 30.0) -> int:
        """Wait until the supervisor reports ``service`` ready with a live pid other than ``not_pid``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, KeyError):
                p = self.processes()[service]
                pid = p["pid"]
                if p["status"] == "ready" and pid and pid != not_pid:
                    os.kill(pid, 0)  # alive
                    return int(pid)
            time.sleep(0.1)
        raise ClusterError(f"{service} not ready again after {timeout:.0f}s: {self.processes().get(service)}")

    # ---- the bus (as admin) and the database ---------------------------------------------------------

    def with_bus(self, fn: Callable[[Bus], Awaitable[T]], identity: str = "admin") -> T:
        """``fn(bus)`` on a bus of ``identity`` (admin: the auditor's view)."""

        async def go() -> T:
            cfg = load_config(
                identity,
                self.data_dir,
                service="e2e",
                nats_url=self.info["nats_url"],
                database_url=self.info["database_url"],
            )
            bus = await Bus.connect(cfg, registry=REGISTRY, ensure=False, timeout=15.0)
            try:
                return await fn(bus)
            finally:
                await bus.close()

        return asyncio.run(go())

    def with_db(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async def go() -> T:
            conn = await asyncpg.connect(self.info["database_url"])
            try:
                return await fn(conn)
            finally:
                await conn.close()

        return asyncio.run(go())

    def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def q(conn: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await conn.fetch(query, *args)
            return rows

        return self.with_db(q)

    def subject_counts(self, stream: str, subjects_filter: str) -> dict[str, int]:
        """How many messages each subject matching ``subjects_filter`` holds in ``stream``."""

        async def go(bus: Bus) -> dict[str, int]:
            info = await bus.js.stream_info(stream, subjects_filter=subjects_filter)
            return dict(info.state.subjects or {})

        return self.with_bus(go)

    def key_record(self) -> K.KeyRecord:
        """The public DKG result in KV ``keys``, proven by every node's statement."""

        async def go(bus: Bus) -> K.KeyRecord:
            keys = await ProvenKeys.open(bus, self.info["nodes"], self.info["t"])
            record = await keys.get("frost", K.DEFAULT_KEY_ID)
            assert record is not None, "no DKG key record"
            return record

        return self.with_bus(go)

    def account(self) -> ThresholdAccount:
        rec = self.key_record()
        return ThresholdAccount(rec.threshold_pubkey, rec.chain_code, self.info["network"])

    def tx_events(self, tx_id: str) -> dict[str, int]:
        """event name -> number of ``tx.<event>.<tx_id>`` messages in the TX stream."""
        return {s.split(".")[1]: n for s, n in self.subject_counts("TX", f"tx.*.{tx_id}").items()}


async def read_stream(bus: Bus, stream: str) -> list[StoredMsg]:
    """Every message still stored in ``stream``, by sequence (deleted ones skipped)."""
    info = await bus.js.stream_info(stream)
    out: list[StoredMsg] = []
    if info.state.messages == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            m = await bus.js.get_msg(stream, seq)
        except nats.js.errors.NotFoundError:
            continue
        out.append(StoredMsg(stream, seq, m.subject or "", m.data or b""))
    return out


async def wait_consumers_caught_up(bus: Bus, stream: str, subject: str, timeout: float = 30.0) -> int:
    """Wait until every durable consumer of ``stream`` whose filter matches ``subject`` has nothing
    pending and nothing unacknowledged (every service handled everything published so far, and consumers
    ack only after the effect is stored); returns how many consumers that is."""
    deadline = time.monotonic() + timeout
    while True:
        consumers = [
            c
            for c in await bus.js.consumers_info(stream)
            if c.config.durable_name and subject_matches(c.config.filter_subject or ">", subject)
        ]
        behind = [c.name for c in consumers if (c.num_pending or 0) > 0 or (c.num_ack_pending or 0) > 0]
        if consumers and not behind:
            return len(consumers)
        if time.monotonic() > deadline:
            raise ClusterError(f"consumers of {subject} in {stream} still behind: {behind or 'none found'}")
        await asyncio.sleep(0.1)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def frozen(c: Cluster, *services: str) -> Iterator[dict[str, int]]:
    """SIGSTOP ``services`` for the duration (SIGCONT on exit, whatever happened); yields name -> pid."""
    pids = {s: c.pid(s) for s in services}
    try:
        for pid in pids.values():
            os.kill(pid, signal.SIGSTOP)
        yield pids
    finally:
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def external_address(seed: bytes, network: str = "regtest") -> str:
    """A P2WPKH address of a key the test makes itself (not the wallet's)."""
    key = PrivateKey(hashlib.sha256(b"mpcw-e2e/" + seed).digest())
    return p2wpkh_address(key.public_key.format(compressed=True), network)


def _log_tails(d: Path, n: int = 20) -> str:
    parts = []
    for f in sorted((d / "logs").glob("*.log")):
        lines = f.read_text(errors="replace").splitlines()[-n:]
        parts.append(f"--- {f.name}\n" + "\n".join(lines))
    return "\n".join(parts)


@contextlib.contextmanager
def running_cluster(
    data_dir: Path,
    funding: list[str],
    services: list[dict[str, Any]] | None = None,
    up_args: tuple[str, ...] = (),
) -> Iterator[Cluster]:
    """``mpcw up UP_ARGS`` (with ``services`` as ``DIR/services.json`` when given), the DKG, one faucet
    payment per entry of ``funding`` (BTC); ``mpcw down`` afterwards, killing by pid whatever this
    cluster started and ``down`` left running."""
    c = Cluster(data_dir)
    if services is not None:
        (data_dir / "services.json").write_text(json.dumps({"services": services}, indent=2))
    try:
        c.mpcw("up", *up_args, timeout=180.0)
        c.load_info()
        c.dkg_output = c.mpcw("dkg", "start", "--scheme", "frost", timeout=90.0).stdout
        address = c.mpcw("wallet", "address").stdout.strip()
        for btc in funding:
            c.mpcw("dev", "fund", address, btc)
        yield c
    except ClusterError as exc:
        raise ClusterError(f"{exc}\n{_log_tails(c.data_dir)}") from None
    finally:
        started = started_pids(c.data_dir)
        down = c.mpcw("down", check=False, timeout=90.0)
        if down.returncode != 0:
            print(f"mpcw down exited {down.returncode}: {down.stdout} {down.stderr}", file=sys.stderr)
        survivors = [pid for pid in started if pid_alive(pid)]  # a zombie counts as dead
        for pid in survivors:  # only processes this cluster started, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if survivors:
            print(f"mpcw down left processes running: {survivors} (killed)", file=sys.stderr)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running_cluster(tmp_path_factory.mktemp("e2e-cluster"), [FUNDING_BTC] * FUNDING_COUNT) as c:
        yield c


@pytest.fixture(scope="session")
def wallet_address(cluster: Cluster) -> str:
    with cluster.api() as api:
        address: str = api.get("/api/v1/wallet/address").json()["address"]
    return address


@pytest.fixture(scope="session")
def confirmed_spend(cluster: Cluster) -> dict[str, Any]:
    """One ordinary spend to an external address, waited until it ends; shared by several tests."""
    recipient = external_address(b"recipient-1")
    tx_id = cluster.request_spend(recipient, 10_000_000)
    body = cluster.wait_terminal(tx_id)
    body["_recipient"] = recipient
    return body
