"""Benchmark: CGGMP24 keygen, presigning and online signing, every party in this process.

    python loadtest/bench_cggmp24.py [--runs 5] [--t 4] [--n 5] [--skip-presigning] [--aux-runs 1]

- keygen: one t-of-n threshold keygen (all rounds, echo included); CPU time per party (the mean of the
  parties' CPU spent in their own round calls) and wall time for the whole run. Goal: <= 50 ms per party.
- aux-info for n parties, their four safe primes given (TEST-ONLY fixture primes): CPU per party and wall
  time (Pi^prm, Pi^mod, Pi^fac proved and verified, the fixed-base tables built). Goal: <= 10 s per party.
  ``--aux-runs 0`` skips it (it takes about n x 7 s here).
- online signing: with t presignatures (made by presigning once per run, not timed here), one signer's
  work: issue its partial signature, verify the t partials, combine and verify the ECDSA signature.
  Goal: < 5 ms.
- presigning with t signers: CPU per party and wall time for the run (4 signers: goal <= 1.5 s per
  party). It uses the TEST-ONLY fixture primes of tests/unit/cggmp24_fixtures.py for the parties'
  Paillier and ring-Pedersen keys (generating safe primes is aux-info's cost, not presigning's); the
  ring-Pedersen fixed-base tables are built before timing (aux-info builds them once per peer).

The median over ``--runs`` is printed, with the command and the machine, as a markdown table.
"""

from __future__ import annotations

import argparse
import platform
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from tss.cggmp24 import keygen, signing  # noqa: E402
from tss.cggmp24.keygen import KeyShare  # noqa: E402
from tss.cggmp24.rounds import Message  # noqa: E402


def run_timed(
    states: dict[int, Any], first: Sequence[Message], round_fn: Callable[[Any, list[object]], Any]
) -> tuple[dict[int, Any], dict[int, float]]:
    """Deliver messages until quiet; CPU seconds each party spent in its round calls."""
    cpu = dict.fromkeys(states, 0.0)
    queue = list(first)
    while queue:
        boxes: dict[int, list[object]] = {p: [] for p in states}
        for m in queue:
            for r in states if m.recipient is None else [m.recipient]:
                if r != m.sender:
                    boxes[r].append(m)
        queue = []
        for p, box in boxes.items():
            if box:
                c0 = time.process_time()
                states[p], out = round_fn(states[p], box)
                cpu[p] += time.process_time() - c0
                queue.extend(out)
    return states, cpu


def bench_keygen(t: int, n: int) -> tuple[float, float, list[KeyShare]]:
    sid = secrets.token_bytes(32)
    w0 = time.perf_counter()
    states: dict[int, Any] = {}
    first: list[Message] = []
    cpu0: dict[int, float] = {}
    for i in range(n):
        c0 = time.process_time()
        states[i], msgs = keygen.keygen_start(sid, i, t, n)
        cpu0[i] = time.process_time() - c0
        first += msgs
    states, cpu = run_timed(states, first, keygen.keygen_round)
    wall = time.perf_counter() - w0
    if any(s.phase != "done" for s in states.values()):
        raise RuntimeError("keygen failed")
    per_party = statistics.mean(cpu[i] + cpu0[i] for i in range(n))
    return per_party, wall, [states[i].result for i in range(n)]


def presign(
    shares: list[KeyShare], signers: Sequence[int], aux: dict[int, Any], pooled: bool
) -> tuple[float, float, float, dict[int, Any]]:
    """One presigning run: (CPU per party, wall, CPU per party filling the nonce pool off-line, presigs)."""
    from tss.cggmp24 import presigning

    pools: dict[int, Any] = {}
    fill = 0.0
    if pooled:
        for j in signers:
            c0 = time.process_time()
            pool = presigning.NoncePool()
            for k, count in presigning.nonces_needed(j, signers).items():
                pool.fill(aux[j].paillier if k == j else aux[j].paillier_keys[k], count)
            pools[j] = pool
            fill += time.process_time() - c0
    sid = secrets.token_bytes(32)
    w0 = time.perf_counter()
    states: dict[int, Any] = {}
    first: list[Message] = []
    cpu0: dict[int, float] = {}
    for j in signers:
        c0 = time.process_time()
        states[j], msgs = presigning.presigning_start(sid, shares[j], aux[j], signers, nonces=pools.get(j))
        cpu0[j] = time.process_time() - c0
        first += msgs
    states, cpu = run_timed(states, first, presigning.presigning_round)
    wall = time.perf_counter() - w0
    if any(s.phase != "done" for s in states.values()):
        raise RuntimeError(f"presigning failed: {[(s.blame, s.error) for s in states.values()]}")
    per_party = statistics.mean(cpu[j] + cpu0[j] for j in signers)
    return per_party, wall, fill / len(signers), {j: states[j].result for j in signers}


def make_aux(n: int) -> dict[int, Any]:
    from tests.unit.cggmp24_fixtures import paillier_key, ring_pedersen  # TEST-ONLY primes
    from tss.cggmp24.aux_info import AuxInfoResult

    pks = {j: paillier_key(j).public for j in range(n)}
    rps = {j: ring_pedersen(j).params for j in range(n)}
    for rp in rps.values():
        rp.commit(1, 1)  # build the fixed-base tables now (aux-info does it once per peer)
    return {i: AuxInfoResult(i, paillier_key(i), pks, rps, ring_pedersen(i)) for i in range(n)}


def bench_aux_info(n: int) -> tuple[float, float]:
    from tests.unit.cggmp24_fixtures import fixture_safe_primes  # TEST-ONLY primes
    from tss.cggmp24 import aux_info

    primes = fixture_safe_primes()
    sid = secrets.token_bytes(32)
    w0 = time.perf_counter()
    states: dict[int, Any] = {}
    first: list[Message] = []
    cpu0: dict[int, float] = {}
    for i in range(n):
        c0 = time.process_time()
        p, q, p_hat, q_hat = primes[4 * i : 4 * i + 4]
        states[i], msgs = aux_info.start_aux_info(sid, i, n, (p, q, p_hat, q_hat))
        cpu0[i] = time.process_time() - c0
        first += msgs
    states, cpu = run_timed(states, first, aux_info.aux_info_round)
    wall = time.perf_counter() - w0
    if any(s.phase != "done" for s in states.values()):
        raise RuntimeError(f"aux-info failed: {[(s.blame, s.error) for s in states.values()]}")
    return statistics.mean(cpu[i] + cpu0[i] for i in range(n)), wall


def online_sign(presigs: dict[int, signing.Presignature], signer: int) -> float:
    """CPU of one signer: its partial signature, then verify every partial, combine, verify."""
    h = secrets.token_bytes(32)
    partials = {}
    for j, p in presigs.items():
        if j != signer:
            partials[j] = signing.issue_partial_signature(p, h)  # the others' work, not timed
    c0 = time.process_time()
    partials[signer] = signing.issue_partial_signature(presigs[signer], h)
    sig = signing.combine_partial_signatures(presigs[signer].public, partials, h)
    dt = time.process_time() - c0
    if not signing.ecdsa_verify(presigs[signer].public.public_key, h, sig):
        raise RuntimeError("signature does not verify")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--t", type=int, default=4)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--skip-presigning", action="store_true")
    ap.add_argument("--aux-runs", type=int, default=1, help="aux-info runs (0: skip)")
    args = ap.parse_args()
    t, n = args.t, args.n
    rows: list[tuple[str, str, str, str]] = []

    kg = [bench_keygen(t, n) for _ in range(args.runs)]
    rows.append(
        (
            f"keygen {t}-of-{n}",
            f"{statistics.median(k[0] for k in kg) * 1e3:.2f} ms",
            f"{statistics.median(k[1] for k in kg) * 1e3:.1f} ms",
            "<= 50 ms per party",
        )
    )
    if args.aux_runs > 0:
        ax = [bench_aux_info(n) for _ in range(args.aux_runs)]
        rows.append(
            (
                f"aux-info, {n} parties, primes given",
                f"{statistics.median(a[0] for a in ax):.2f} s",
                f"{statistics.median(a[1] for a in ax):.1f} s",
                "<= 10 s per party",
            )
        )
    shares = kg[0][2]
    signers = list(range(t))
    if not args.skip_presigning:
        aux = make_aux(n)
        for pooled in (False, True):
            ps = [presign(shares, signers, aux, pooled) for _ in range(args.runs)]
            label = " (precomputed Paillier nonces)" if pooled else ""
            rows.append(
                (
                    f"presigning, {t} signers{label}",
                    f"{statistics.median(p[0] for p in ps):.3f} s",
                    f"{statistics.median(p[1] for p in ps):.2f} s",
                    "<= 1.5 s per party",
                )
            )
        rows.append(
            (
                f"  off-line: filling the nonce pool for one run ({t} signers)",
                f"{statistics.median(p[2] for p in ps):.3f} s",
                "-",
                "-",
            )
        )
        on = [online_sign(p[3], signers[0]) for p in ps]
        rows.append(
            (
                f"online: partial + verify {t} partials + combine + verify",
                f"{statistics.median(on) * 1e3:.2f} ms",
                "-",
                "< 5 ms",
            )
        )
    print(
        f"`python loadtest/bench_cggmp24.py {' '.join(sys.argv[1:])}` on {cpu_model()}, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d', time.gmtime())}, "
        f"median of {args.runs} runs\n"
    )
    print("| operation | CPU per party | wall (whole run) | goal |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
