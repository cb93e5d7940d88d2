"""Benchmark: the storage work a signer does on the signing path, per batch of signing attempts.

    python loadtest/bench_sign_storage.py [--runs 300] [--procs 1] [--tree DIR]

For a batch of 1 and of 8 attempts (one input each): what the signer writes before it signs. With the
per-process nonce store (this tree) that is counting the attempts (:class:`SigningAttempts`, one
``fdatasync``) and taking the nonces (no sync: a nonce dies with its process anyway). ``--tree DIR``
imports the signer from another checkout instead, e.g. one from before the change (``git archive
<commit> | tar -x -C DIR``), where it was taking the nonces with one ``fdatasync`` and nothing else. Also
times saving one fresh nonce (the nonce generation path). ``--procs N`` runs N copies at once, each in
its own directory (N signers on one machine). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _import_tree(tree: Path) -> tuple[Any, Any]:
    """(Keystore, SigningAttempts or None) from ``tree``."""
    sys.path.insert(0, str(tree))
    keystore = importlib.import_module("services.signer.keystore")
    try:
        attempts = importlib.import_module("services.signer.signing_attempts").SigningAttempts
    except ModuleNotFoundError:
        attempts = None
    return keystore.Keystore, attempts


def one_process(args: tuple[str, str, int]) -> dict[str, list[float]]:
    tree, base, runs = args
    keystore_cls, attempts_cls = _import_tree(Path(tree))
    out: dict[str, list[float]] = {"save 1 nonce": [], "sign batch of 1": [], "sign batch of 8": []}
    with tempfile.TemporaryDirectory(dir=base) as d:
        ks = keystore_cls(Path(d), "node-1", passphrase=None)
        attempts = attempts_cls(ks.root / "signing_attempts.jsonl") if attempts_cls else None
        prefix = secrets.token_hex(6)
        ids = [f"{prefix}-{k}" for k in range(runs * 9)]
        for nid in ids:
            sec = secrets.token_bytes(64)
            t0 = time.perf_counter()
            ks.save_nonce(nid, sec)
            out["save 1 nonce"].append(time.perf_counter() - t0)
        it = iter(ids)
        n = 0
        for size, op in ((1, "sign batch of 1"), (8, "sign batch of 8")):
            for _ in range(runs):
                want = [next(it) for _ in range(size)]
                sessions = [(f"tx{n + k}", f"tx{n + k}-a1") for k in range(size)]
                n += size
                t0 = time.perf_counter()
                if attempts is not None:
                    attempts.record(sessions)
                got = ks.take_nonces(want)
                out[op].append(time.perf_counter() - t0)
                assert all(v is not None for v in got.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--procs", type=int, default=1)
    ap.add_argument("--tree", default=str(ROOT), help="the checkout whose signer is timed")
    ap.add_argument("--dir", default=tempfile.gettempdir())
    args = ap.parse_args()
    os.environ.pop("MPCW_NODE_PASSPHRASE", None)  # the development key file: no scrypt in the timings
    with multiprocessing.get_context("spawn").Pool(args.procs) as pool:
        results = pool.map(one_process, [(args.tree, args.dir, args.runs)] * args.procs)
    cmd = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"### Signing-path storage, {args.procs} process(es) at once\n")
    print(f"- command: `{cmd}`")
    print(f"- machine: {platform.platform()}, Python {platform.python_version()}, {os.cpu_count()} CPUs\n")
    print("| operation | median ms | p90 ms | p99 ms | ops |")
    print("|---|---:|---:|---:|---:|")
    for op in results[0]:  # nothing imported from the tree here: ``--tree`` decides what is timed
        xs = [x for r in results for x in r[op]]
        cuts = statistics.quantiles(xs, n=100)
        ms = [statistics.median(xs) * 1e3, cuts[89] * 1e3, cuts[98] * 1e3]
        print(f"| {op} | " + " | ".join(f"{m:.3f}" for m in ms) + f" | {len(xs)} |")


if __name__ == "__main__":
    main()
