"""Benchmark: one 4-of-5 ChillDKG session with every party's work done in this process, on one core.

    python loadtest/bench_chilldkg.py [--runs 40] [--t 4] [--n 5]

One run = participant_step1 x n, coordinator_step1, participant_step2 x n, coordinator_finalize,
participant_finalize x n, with the host public keys derived and the session randomness drawn inside
each run (the host secret keys are drawn once). The median over ``--runs`` runs is reported (goal:
under 50 ms). The process is pinned to one CPU where the OS allows it. If ``MPCW_CHILLDKG_REF_DIR``
names the draft's reference ``python`` directory (the one holding ``chilldkg_ref/``), the same session
is timed there and the ratio printed. Prints a markdown table with the command and the machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from tss import chilldkg  # noqa: E402


def one_session(mod: Any, seckeys: list[bytes], t: int) -> bytes:
    """A whole ChillDKG session using module ``mod`` (same API names as the draft); the recovery data."""
    params = mod.SessionParams([mod.hostpubkey_gen(k) for k in seckeys], t)
    r1 = [mod.participant_step1(k, params, secrets.token_bytes(32)) for k in seckeys]
    cstate, cmsg1 = mod.coordinator_step1([m for _, m in r1], params)
    r2 = [
        mod.participant_step2(k, s1, cmsg1, secrets.token_bytes(32))
        for k, (s1, _) in zip(seckeys, r1, strict=True)
    ]
    cmsg2, _, crec = mod.coordinator_finalize(cstate, [m for _, m in r2])
    for s2, _ in r2:
        _, rec = mod.participant_finalize(s2, cmsg2)
        if rec != crec:
            raise RuntimeError("recovery data differs")
    return bytes(crec)


def time_runs(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pin_one_core() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):
        return "not pinned"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--t", type=int, default=4)
    ap.add_argument("--n", type=int, default=5)
    args = ap.parse_args()
    pinning = pin_one_core()

    seckeys = [secrets.token_bytes(32) for _ in range(args.n)]
    for _ in range(3):  # warm-up
        one_session(chilldkg, seckeys, args.t)
    times = time_runs(lambda: one_session(chilldkg, seckeys, args.t), args.runs)
    med = statistics.median(times) * 1e3
    rows = [("mpc-wallet `tss.chilldkg` (coincurve)", med, max(times) * 1e3, args.runs)]

    ref_dir = os.environ.get("MPCW_CHILLDKG_REF_DIR")
    ratio = None
    if ref_dir:
        sys.path.insert(0, ref_dir)
        ref = importlib.import_module("chilldkg_ref.chilldkg")  # puts its vendored secp256k1lab on the path
        ref_runs = max(3, min(args.runs, 5))  # the pure-Python reference is slow
        ref_times = time_runs(lambda: one_session(ref, seckeys, args.t), ref_runs)
        ref_med = statistics.median(ref_times) * 1e3
        rows.append(("draft reference `chilldkg_ref` (pure Python)", ref_med, max(ref_times) * 1e3, ref_runs))
        ratio = ref_med / med

    cmd = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"### ChillDKG {args.t}-of-{args.n}, all parties in one process\n")
    print(f"- command: `{cmd}`" + (f" with `MPCW_CHILLDKG_REF_DIR={ref_dir}`" if ref_dir else ""))
    print(
        f"- machine: {platform.platform()}, Python {platform.python_version()}, CPU: {cpu_model()}, {pinning}"
    )
    print(
        "- one run: participant_step1 x n, coordinator_step1, participant_step2 x n, coordinator_finalize, "
        "participant_finalize x n\n"
    )
    print("| implementation | median ms | max ms | runs |")
    print("|---|---:|---:|---:|")
    for name, m, hi, n in rows:
        print(f"| {name} | {m:.2f} | {hi:.2f} | {n} |")
    if ratio is not None:
        print(f"\nreference / ours: **{ratio:.0f}x**")
    print(f"\ngoal < 50 ms: {'met' if med < 50.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
