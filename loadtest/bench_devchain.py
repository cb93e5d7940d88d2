"""The development chain's transaction intake: ``POST /tx`` with full script and signature checks.

    python loadtest/bench_devchain.py [--sequential 200] [--concurrent 2000] [--threads 16]

Starts its own ``python -m services.devchain`` on a free port in a temporary directory, funds fresh
single-key P2TR and P2WPKH coins from its faucet, signs one spend per coin (outside the measured time), then
measures:

- one client, one request at a time: ``POST /tx`` latency (median, p95);
- ``--threads`` client threads posting ``--concurrent`` spends between them: transactions per second.

Prints a markdown table with the command, the machine and the date. Bounded by its counts; 127.0.0.1
only; the devchain and its directory are removed at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from tests.integration.test_devchain import funded, new_key, running_devchain, spend  # noqa: E402
from wallet.transaction import serialize  # noqa: E402


def signed_spends(chain: object, count: int) -> list[str]:
    """``count`` valid spends (hex), alternately of P2TR and P2WPKH coins, each to a fresh P2TR key."""
    out = []
    for i in range(count):
        coin = funded(chain, "p2tr" if i % 2 else "p2wpkh", 20_000)  # type: ignore[arg-type]
        out.append(serialize(spend([coin], [(new_key("p2tr").script_pubkey, 19_000)])).hex())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sequential", type=int, default=200, help="spends posted one at a time")
    ap.add_argument("--concurrent", type=int, default=2000, help="spends posted by the client threads")
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="mpcw-devchain-bench-"))
    try:
        with running_devchain(d) as chain:
            print(f"signing {args.sequential + args.concurrent} spends ...", flush=True)
            seq = signed_spends(chain, args.sequential)
            par = signed_spends(chain, args.concurrent)
            times = []
            for body in seq:
                t0 = time.perf_counter()
                r = chain.c.post("/tx", content=body)
                times.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise SystemExit(f"POST /tx refused a valid spend: {r.status_code} {r.text[:200]}")
            chunks = [par[i :: args.threads] for i in range(args.threads)]

            def post_all(bodies: list[str]) -> int:
                ok = 0
                with httpx.Client(base_url=chain.url, timeout=60) as c:
                    for body in bodies:
                        ok += c.post("/tx", content=body).status_code == 200
                return ok

            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                accepted = sum(pool.map(post_all, chunks))
            wall = time.perf_counter() - t0
            if accepted != len(par):
                raise SystemExit(f"{len(par) - accepted} of {len(par)} valid spends were refused")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    cmd = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"\n`{cmd}` on {cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}\n")  # fmt: skip
    print("| what | number |")
    print("|---|---:|")
    med = statistics.median(times) * 1000
    p95 = statistics.quantiles(times, n=20)[-1] * 1000
    print(f"| `POST /tx`, one client, {len(times)} spends | {med:.2f} ms median, {p95:.2f} ms p95 |")
    print(f"| `POST /tx`, {args.threads} client threads, {len(par)} spends | {len(par) / wall:.0f} tx/s |")


if __name__ == "__main__":
    main()
