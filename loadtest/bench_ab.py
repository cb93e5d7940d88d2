"""Compare code versions end to end on a machine whose speed drifts: alternate runs of ``bench_e2e.py``.

    python loadtest/bench_ab.py REV [REV ...] [--rounds 5] [-- BENCH_E2E_ARGS ...]

Each REV (anything ``git rev-parse`` takes; ``WORKTREE`` for the uncommitted working tree) is checked out
into its own temporary git worktree, with this checkout's ``loadtest/bench_e2e.py`` copied in (the same
measurement for every version); then round after round, every version runs it once (each run starts and
removes its own cluster from that version's code), so drift in the machine's speed hits all alike.
Prints the median [min-max] per version of the request -> broadcast p50 and p99, spends/s, CPU per
spend and messages delivered per spend, as a markdown table. A run in which any spend was refused or
did not reach broadcast fails the comparison. The worktrees are removed at the end.

Example (session 5's comparison)::

    python loadtest/bench_ab.py f4b3c6c HEAD --rounds 5 -- --spends 100 --concurrent 600 --workers 32
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MEASURES = {
    "broadcast p50 (ms)": r"request -> broadcast \(one at a time\) \| ([\d.]+) ms",
    "broadcast p99 (ms)": r"request -> broadcast \(one at a time\) \| [\d.]+ ms \| ([\d.]+) ms",
    "spends/s": r"sustained throughput.*?\| ([\d.]+) spends/s",
    "CPU ms/spend": r"\| total \| ([\d.]+) \|",
    "delivered/spend": r"delivered to clients during the throughput run: ([\d.]+) per spend",
}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def run_bench(tree: Path, bench_args: list[str]) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    script = tree / "loadtest" / "bench_e2e.py"
    out = subprocess.run(
        [sys.executable, str(script), *bench_args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if out.returncode != 0:  # also when any spend was refused or did not reach broadcast
        raise SystemExit(f"bench_e2e failed in {tree}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")

    got: dict[str, float] = {}
    for name, pattern in MEASURES.items():
        m = re.search(pattern, out.stdout)
        if m:
            got[name] = float(m.group(1))
    return got


def main() -> None:
    argv = sys.argv[1:]
    bench_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, bench_args = argv[:cut], argv[cut + 1 :]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="+", help="git revisions, or WORKTREE for the working tree as it is")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="mpcw-ab-"))
    trees: dict[str, Path] = {}
    try:
        for rev in args.revs:
            if rev == "WORKTREE":
                trees[rev] = ROOT
                continue
            commit = git("rev-parse", "--short", rev)
            tree = base / commit
            git("worktree", "add", "--detach", str(tree), commit)
            for name in ("bench_e2e.py", "machine.py"):
                shutil.copy(ROOT / "loadtest" / name, tree / "loadtest" / name)
            trees[f"{rev} ({commit})"] = tree
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for r in range(1, args.rounds + 1):
            for name, tree in trees.items():
                got = run_bench(tree, bench_args)
                results[name].append(got)
                print(f"round {r} {name}: " + ", ".join(f"{k} {v}" for k, v in got.items()), flush=True)
    finally:
        for tree in trees.values():
            if tree != ROOT:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=False)
        shutil.rmtree(base, ignore_errors=True)
    print()
    print(f"`python loadtest/bench_ab.py {' '.join(sys.argv[1:])}`, {args.rounds} alternating rounds")
    print()
    print("| version | " + " | ".join(MEASURES) + " |")
    print("|---|" + "---:|" * len(MEASURES))
    for name, runs in results.items():
        cells = []
        for measure in MEASURES:
            vals = [run[measure] for run in runs if measure in run]
            cells.append(f"{statistics.median(vals):.1f} [{min(vals):.1f}-{max(vals):.1f}]" if vals else "-")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
