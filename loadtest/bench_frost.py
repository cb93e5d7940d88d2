"""Benchmark: one 4-of-5 BIP-445 FROST signature with every party's work done in this process.

    python loadtest/bench_frost.py [--runs 200] [--t 4] [--n 5]

One run = nonce_gen for each of the t signers, nonce_agg + session context, t partial signs, t
partial_sig_verify (the aggregator's blame check), partial_sig_agg and a final BIP-340 verify. The median
over ``--runs`` runs is reported (goal: under 2 ms on one core). If ``MPCW_BIP445_REF_DIR`` names the
reference implementation's ``python`` directory (the one holding ``frost_ref/``), the same operations are
timed there too (with the reference's own BIP-340 verify) and the ratio is printed. Prints a markdown table
with the command and the machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from tests.unit.frost_test_dealer import deal  # noqa: E402  (test-only dealer: key material for the bench)
from tss import frost  # noqa: E402
from tss.secp256k1 import schnorr_verify  # noqa: E402


def one_signature(
    mod: Any,
    verify: Callable[[bytes, bytes, bytes], bool],
    key: Any,
    ids: list[int],
    msg: bytes,
    next_party: Callable[[], None] = lambda: None,
) -> bytes:
    """The whole signing flow for the signer set ``ids`` using module ``mod`` (same API names).

    ``next_party`` is called before each party's own work (each signer's nonce and partial signature,
    then the aggregator's checks): ``--cold`` clears the caches there, so no party profits from values
    another party computed, as none does when each runs on its own node."""
    pubshares = [key.pubshares[i] for i in ids]
    signers_ctx = mod.SignersContext(key.n, key.t, ids, pubshares, key.thresh_pk)
    nonces = []
    for i in ids:
        next_party()
        nonces.append(mod.nonce_gen(key.secshares[i], key.pubshares[i], key.thresh_pk[1:], msg, None))
    pubnonces = [pn for _, pn in nonces]
    aggnonce = mod.nonce_agg(pubnonces)
    session_ctx = mod.SessionContext(aggnonce, signers_ctx, [], [], msg)
    psigs = []
    for (sn, _), i in zip(nonces, ids, strict=True):
        next_party()
        psigs.append(mod.sign(sn, key.secshares[i], i, session_ctx))
    next_party()  # the aggregator
    for idx, psig in enumerate(psigs):
        if not mod.partial_sig_verify(psig, pubnonces, signers_ctx, [], [], msg, idx):
            raise RuntimeError(f"partial signature {idx} does not verify")
    sig: bytes = mod.partial_sig_agg(psigs, session_ctx)
    if not verify(msg, key.thresh_pk[1:], sig):
        raise RuntimeError("final signature does not verify")
    return sig


def time_runs(fn: Callable[[int], object], runs: int) -> list[float]:
    out = []
    for r in range(runs):
        t0 = time.perf_counter()
        fn(r)
        out.append(time.perf_counter() - t0)
    return out


def load_reference(ref_dir: str) -> tuple[ModuleType, Callable[[bytes, bytes, bytes], bool]]:
    sys.path.insert(0, ref_dir)
    signing = importlib.import_module("frost_ref.signing")
    bip340 = importlib.import_module("secp256k1lab.bip340")
    return signing, bip340.schnorr_verify


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--t", type=int, default=4)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument(
        "--cold",
        action="store_true",
        help="every party starts with empty caches (cleared before each signer's and the aggregator's work)",
    )
    args = ap.parse_args()

    key = deal(args.n, args.t)
    ids = list(range(args.t))

    def clear_caches() -> None:
        frost._validated_signers.cache_clear()
        frost._session_values_cached.cache_clear()
        frost._tweaked.cache_clear()
        frost._cpoint.cache_clear()

    def ours(r: int) -> object:
        # A fresh message per run, so no session value is reused across runs. Without --cold the
        # validated signers context (same key, same signer set) stays cached, and the parties share the
        # session values one of them computed first.
        next_party = clear_caches if args.cold else lambda: None
        return one_signature(frost, schnorr_verify, key, ids, r.to_bytes(32, "big"), next_party)

    for r in range(5):  # warm-up
        ours(10**6 + r)
    times = time_runs(ours, args.runs)
    med = statistics.median(times) * 1e3

    p95 = statistics.quantiles(times, n=20)[-1] * 1e3
    label = "mpc-wallet `tss.frost` (coincurve)" + (", every party with its own caches" if args.cold else "")
    rows = [(label, med, p95, args.runs)]
    ref_dir = os.environ.get("MPCW_BIP445_REF_DIR")
    ratio = None
    if ref_dir:
        ref_mod, ref_verify = load_reference(ref_dir)
        ref_runs = max(5, min(args.runs, 20))  # the pure-Python reference is slow

        def ref(r: int) -> object:
            return one_signature(ref_mod, ref_verify, key, ids, (r + 7).to_bytes(32, "big"))

        ref_times = time_runs(ref, ref_runs)
        ref_med = statistics.median(ref_times) * 1e3
        rows.append(("BIP-445 reference `frost_ref` (pure Python)", ref_med, max(ref_times) * 1e3, ref_runs))
        ratio = ref_med / med

    cmd = "python " + " ".join([os.path.relpath(__file__, ROOT), *sys.argv[1:]])
    print(f"### FROST {args.t}-of-{args.n} signing, all parties in one process\n")
    print(f"- command: `{cmd}`" + (f" with `MPCW_BIP445_REF_DIR={ref_dir}`" if ref_dir else ""))
    print(f"- machine: {platform.platform()}, Python {platform.python_version()}, CPU: {cpu_model()}")
    print(
        "- one run: nonce_gen x t, nonce_agg + session context, sign x t, partial_sig_verify x t, "
        "partial_sig_agg, BIP-340 verify\n"
    )
    print("| implementation | median ms | p95 (ref: max) ms | runs |")
    print("|---|---:|---:|---:|")
    for name, m, hi, n in rows:
        print(f"| {name} | {m:.3f} | {hi:.3f} | {n} |")
    if ratio is not None:
        print(f"\nreference / ours: **{ratio:.0f}x**")
    print(f"\ngoal < 2 ms: {'met' if med < 2.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
