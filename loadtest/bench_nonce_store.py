"""Benchmark: a signer's pooled secret nonce store, the slot file against the old file-per-nonce layout.

    python loadtest/bench_nonce_store.py [--runs 300] [--procs 1] [--dir /tmp]

Times, in a temporary directory under ``--dir`` (default: the system temp dir): saving one fresh nonce,
taking 1 nonce and taking 8 nonces at once (group commit: one sync for the batch). "slots" is
:class:`services.signer.keystore.Keystore` as it is (one ``nonces.slots`` file, pwrite + one fdatasync
per take); "files" re-creates the previous layout inline (``nonces/<id>.enc`` written with a rename, a
take reads, unlinks and fsyncs the directory). ``--procs N`` runs N copies at once, each with its own
directory, as N signers on one machine do (their syncs queue behind the same filesystem journal); the
two layouts are timed one after the other, never at the same time.
Prints a markdown table with the command and the machine.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from services.runtime.secrets_dir import fsync_dir  # noqa: E402
from services.signer.keystore import Keystore  # noqa: E402

OPS = ("save 1", "take 1", "take 8")
LAYOUTS = ("files", "slots")


class Store(Protocol):
    def save_nonce(self, nonce_id: str, secnonce: bytes) -> None: ...
    def take_nonces(self, nonce_ids: list[str]) -> dict[str, bytearray | None]: ...


class FileStore:
    """The previous layout, for comparison only: one encrypted file per nonce."""

    def __init__(self, ks: Keystore) -> None:
        self.ks = ks
        self.dir = ks.root / "old-nonces"
        self.dir.mkdir()

    def save_nonce(self, nonce_id: str, secnonce: bytes) -> None:
        self.ks._seal(self.dir / f"{nonce_id}.enc", "nonce", nonce_id, secnonce, durable=False)

    def take_nonces(self, nonce_ids: list[str]) -> dict[str, bytearray | None]:
        out: dict[str, bytearray | None] = {}
        for nid in nonce_ids:
            path = self.dir / f"{nid}.enc"
            out[nid] = bytearray(self.ks._open(path, "nonce", nid))
            path.unlink()
        fsync_dir(self.dir)
        return out


def time_store(store: Store, runs: int) -> dict[str, list[float]]:
    """Per-operation seconds: ``runs`` saves, ``runs`` takes of 1 and ``runs`` takes of 8."""
    batch = secrets.token_hex(6)
    ids = [f"{batch}-{k}" for k in range(runs * 10)]
    out: dict[str, list[float]] = {op: [] for op in OPS}
    for nid in ids:
        sec = secrets.token_bytes(64)
        t0 = time.perf_counter()
        store.save_nonce(nid, sec)
        out["save 1"].append(time.perf_counter() - t0)
    it = iter(ids)
    for _ in range(runs):
        want = [next(it)]
        t0 = time.perf_counter()
        got = store.take_nonces(want)
        out["take 1"].append(time.perf_counter() - t0)
        assert all(v is not None for v in got.values())
    for _ in range(runs):
        want = [next(it) for _ in range(8)]
        t0 = time.perf_counter()
        got = store.take_nonces(want)
        out["take 8"].append(time.perf_counter() - t0)
        assert all(v is not None for v in got.values())
    return out


def one_process(args: tuple[str, int, str]) -> dict[str, dict[str, list[float]]]:
    base, runs, layout = args
    with tempfile.TemporaryDirectory(dir=base) as d:
        ks = Keystore(Path(d), "node-1", passphrase=None)
        return {layout: time_store(ks if layout == "slots" else FileStore(ks), runs)}


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    os.environ.pop("MPCW_NODE_PASSPHRASE", None)  # the development key file: no scrypt in the timings

    results: list[dict[str, dict[str, list[float]]]] = []
    for layout in LAYOUTS:  # one layout at a time: concurrent processes measure the same thing
        with multiprocessing.Pool(args.procs) as pool:
            results += pool.map(one_process, [(args.dir, args.runs, layout)] * args.procs)

    cmd = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"### Secret nonce store, {args.procs} process(es) at once\n")
    print(f"- command: `{cmd}`")
    print(f"- machine: {platform.platform()}, Python {platform.python_version()}, CPU: {cpu_model()}, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    print(f"- directory: {args.dir} (a fresh temporary directory per process)\n")
    print("| layout | operation | median ms | p90 ms | p99 ms | ops |")
    print("|---|---|---:|---:|---:|---:|")
    for layout in LAYOUTS:
        for op in OPS:
            xs = [x for r in results if layout in r for x in r[layout][op]]
            print(
                f"| {layout} | {op} | {statistics.median(xs) * 1e3:.3f} | {pct(xs, 0.9) * 1e3:.3f} "
                f"| {pct(xs, 0.99) * 1e3:.3f} | {len(xs)} |"
            )


if __name__ == "__main__":
    main()
