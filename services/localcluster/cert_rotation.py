"""Certificate rotation on a running local cluster (``mpcw certs rotate``), driven by the supervisor.

The CLI writes ``DIR/run/rotation.request`` (:class:`RotationRequest`) and sends the supervisor SIGUSR1;
the supervisor advances :func:`rotation_steps` (a generator: one step per turn of its loop, so it keeps
restarting crashed processes meanwhile) and reports progress in ``DIR/run/rotation.json``
(:class:`RotationStatus`), which the CLI prints as it changes. The steps:

1. issue the next epoch's certificate of every identity asked for (and a new server certificate):
   ``services.localcluster.pki.issue_rotated``; the broker now accepts the old and the new subject of each
   (every nats-server reloads its configuration);
2. restart, one at a time, every process whose identity was rotated, each only after the one before is
   ready again: a restarted process connects with its new certificate; the others keep working, so spends
   go on (at most one signer node is down at any time, and consensus, intake and the broadcaster resume
   from the streams and KV after a restart);
3. stop accepting the old subjects (``finish_rotation``, reload): from then on the old certificates are
   refused — a rotation is also a revocation of the certificates it replaces;
4. with ``revoke``, restart the nats-servers one at a time so that no connection made with an old
   certificate survives (a plain rotation leaves none of ours: every process using one was restarted).

Offline (no supervisor running) the CLI issues and finishes in one go: nothing runs that could use the
old certificates. The CA is not rotated (a new CA is a new cluster).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from schemas.names import all_identities

from .pki import cert_subjects, finish_rotation, issue_rotated

if TYPE_CHECKING:
    from .supervisor import Proc, Supervisor

READY_TIMEOUT_S = 120.0  # a restarted process must be ready again within this, or the rotation fails
SETTLE_S = 1.0  # after a reload, before the next step


class RotationRequest(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    identities: list[str] = []  # empty: every identity
    server: bool = True  # also a new nats-server certificate
    revoke: bool = False  # also restart the nats-servers (drops every connection made with an old one)


class RotationStatus(msgspec.Struct, kw_only=True):
    id: str
    state: str = "running"  # running | done | failed
    steps: list[str] = []
    error: str = ""
    started: float = 0.0
    finished: float = 0.0


def request_path(run: Path) -> Path:
    return run / "rotation.request"


def status_path(run: Path) -> Path:
    return run / "rotation.json"


def new_request(identities: list[str], *, server: bool, revoke: bool) -> RotationRequest:
    return RotationRequest(id=secrets.token_hex(6), identities=identities, server=server, revoke=revoke)


def write_request(run: Path, req: RotationRequest) -> None:
    tmp = request_path(run).with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(req))
    os.chmod(tmp, 0o600)
    tmp.replace(request_path(run))


def take_request(run: Path) -> RotationRequest | None:
    """The pending request, removed from disk (a malformed one is removed and reported by its status)."""
    path = request_path(run)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    path.unlink(missing_ok=True)
    try:
        return msgspec.json.decode(raw, type=RotationRequest)
    except msgspec.DecodeError as exc:
        _write_status(run, RotationStatus(id="?", state="failed", error=f"malformed request: {exc}"))
        return None


def read_status(run: Path) -> RotationStatus | None:
    try:
        return msgspec.json.decode(status_path(run).read_bytes(), type=RotationStatus)
    except (FileNotFoundError, msgspec.DecodeError):
        return None


def _write_status(run: Path, st: RotationStatus) -> None:
    tmp = status_path(run).with_suffix(".tmp")
    tmp.write_text(json.dumps(msgspec.to_builtins(st), indent=2))
    tmp.replace(status_path(run))


def identity_of(p: Proc) -> str:
    """The bus identity a supervised process connects as (``--identity X``, else its service name)."""
    if "--identity" in p.args:
        i = p.args.index("--identity")
        if i + 1 < len(p.args):
            return p.args[i + 1]
    return p.module.rsplit(".", 1)[-1]


def rotation_steps(sup: Supervisor, req: RotationRequest) -> Iterator[None]:
    """The rotation as steps of the supervisor's loop (see the module docstring). Raises on failure; the
    caller records it (the status says which step failed)."""
    assert sup.nats is not None
    run = sup.run
    everyone = all_identities(sup.n)
    unknown = sorted(set(req.identities) - set(everyone))
    st = RotationStatus(id=req.id, started=time.time())

    def step(text: str) -> None:
        st.steps.append(text)
        _write_status(run, st)

    if unknown:
        raise ValueError(f"not identities of this cluster: {', '.join(unknown)}")
    names = req.identities or everyone
    epochs = issue_rotated(sup.data_dir, names, server=req.server)
    sup.nats.reload(cert_subjects(sup.data_dir, everyone))
    step(
        f"issued {len(names)} certificates (epoch {max(epochs.values())})"
        + (" and a new server certificate" if req.server else "")
        + "; the broker accepts old and new"
    )
    yield from _pause(SETTLE_S)
    procs = [p for p in sup.procs if p.status != "missing" and identity_of(p) in names]
    for i, p in enumerate(procs, 1):
        step(f"restarting {p.name} ({i}/{len(procs)})")
        sup.restart_now(p)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while p.status != "ready":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{p.name} was not ready again within {READY_TIMEOUT_S:.0f} s")
            yield
    finish_rotation(sup.data_dir)
    sup.nats.reload(cert_subjects(sup.data_dir, everyone))
    step("old certificates refused")
    yield from _pause(SETTLE_S)
    if req.revoke:
        for i in range(len(sup.nats.procs)):
            step(f"restarting nats-server {i + 1}/{len(sup.nats.procs)} (drops old connections)")
            sup.nats.procs[i].send_signal(signal.SIGTERM)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not sup.nats_server_up(i):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"nats-server {i + 1} did not come back within {READY_TIMEOUT_S:.0f} s"
                    )
                yield
            yield from _pause(SETTLE_S)
    st.state, st.finished = "done", time.time()
    _write_status(run, st)


def fail(run: Path, req: RotationRequest, exc: BaseException) -> None:
    st = read_status(run)
    if st is None or st.id != req.id:
        st = RotationStatus(id=req.id, started=time.time())
    st.state, st.error, st.finished = "failed", f"{type(exc).__name__}: {exc}"[:500], time.time()
    _write_status(run, st)


def _pause(seconds: float) -> Iterator[None]:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        yield
