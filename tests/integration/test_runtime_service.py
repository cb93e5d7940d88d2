"""run_service: readiness file, SIGTERM finishes (and acks) the in-flight handler, then exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from schemas.messages import Heartbeat
from services.runtime.bus import Bus

ROOT = Path(__file__).resolve().parents[2]


async def test_sigterm_finishes_in_flight_handler(
    pki: Path, nats_server: str, bus_factory: Callable[..., Awaitable[Bus]]
) -> None:
    tx = uuid.uuid4().hex[:10]
    name = f"helper-{tx}"
    env = {**os.environ, "MPCW_NATS_URL": nats_server, "MPCW_SERVICE_NAME": name}
    run = pki / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.runtime_helper_service", "--data-dir", str(pki),
         "--identity", "consensus", "--slow-consumer", f"vote.{tx}.*"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not (run / f"{name}.ready").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "helper did not get ready"
            await asyncio.sleep(0.05)
        assert json.loads((run / f"{name}.ready").read_text())["pid"] == proc.pid
        n1 = await bus_factory("node-1")
        ack = await n1.publish(f"vote.{tx}.node-1", Heartbeat(node="node-1", ts_ms=1), f"m-{tx}")
        while not (run / f"{name}.in-handler").exists():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 30)
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert code == 0, out
        assert (run / f"{name}.handled").read_text() == str(ack.seq)  # finished, not abandoned
        assert not (run / f"{name}.ready").exists()
        info = await n1.js.consumer_info("VOTE", f"slow-{name}")
        assert info.num_ack_pending == 0 and info.delivered.stream_seq == ack.seq  # acked before exit
        lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        assert lines and all({"ts", "level", "service", "msg", "fields"} <= set(line) for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
