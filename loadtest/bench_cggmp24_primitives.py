"""Benchmark: the Paillier-side CGGMP24 primitives (CPU time per operation, this process, one core).

    python loadtest/bench_cggmp24_primitives.py [--primes 10] [--runs 10]

Times (``time.process_time``, so other processes' load on the machine does not count):

- 1536-bit safe-prime generation, mean / min / max over ``--primes`` runs (0 skips it);
- Paillier encryption (public, CRT, with a precomputed nonce) and CRT decryption, 3072-bit N;
- ring-Pedersen ``s^x t^y`` for exponents of 3328 bits (the size of ``s^x t^m`` in Pi^aff-g), two powmods
  versus the fixed-base table;
- prove and verify of Pi^prm, Pi^mod, Pi^fac, Pi^enc-elg, Pi^aff-g (median of ``--runs``; Pi^prm and
  Pi^mod use ``max(1, runs // 5)``), verifying as the protocol does (with the verifier's own secrets where
  it has them).

Key material comes from the TEST-ONLY fixture primes. Prints a markdown table with the command and the
machine.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from loadtest.machine import cpu_model  # noqa: E402
from tests.unit.cggmp24_fixtures import paillier_key, ring_pedersen  # noqa: E402  (TEST-ONLY primes)
from tss.cggmp24 import pi_aff_g, pi_enc_elg, pi_fac, pi_mod, pi_prm  # noqa: E402
from tss.cggmp24.paillier import sample_signed, sample_unit  # noqa: E402
from tss.cggmp24.params import ELL, ELL_PRIME, Q  # noqa: E402
from tss.cggmp24.safe_prime import generate_safe_prime  # noqa: E402
from tss.secp256k1 import point_mul, point_mul_base, point_sum  # noqa: E402

SID = bytes(32)


def cpu(fn: Callable[[], object], runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t0 = time.process_time()
        fn()
        out.append(time.process_time() - t0)
    return out


def ms(xs: list[float]) -> str:
    med = statistics.median(xs)
    return f"{med * 1e3:.1f} ms" if med >= 1e-3 else f"{med * 1e6:.0f} us"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--primes", type=int, default=10)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    rows: list[tuple[str, str]] = []

    if args.primes:
        ts = cpu(generate_safe_prime, args.primes)
        rows.append(
            (
                f"1536-bit safe prime (mean of {args.primes}; min / max)",
                f"{statistics.mean(ts):.2f} s ({min(ts):.2f} / {max(ts):.2f} s)",
            )
        )

    ski, skj, rpj = paillier_key(0), paillier_key(1), ring_pedersen(1)
    pki, pkj = ski.public, skj.public
    runs = args.runs
    m = sample_signed(ELL)
    rho = sample_unit(pki.n)
    nonce = ski.sample_nonce()
    c = pki.encrypt(m, rho)
    rows.append(("Paillier encrypt, public (3072-bit N)", ms(cpu(lambda: pki.encrypt(m, rho), runs))))
    rows.append(("Paillier encrypt, CRT", ms(cpu(lambda: ski.encrypt(m, rho), runs))))
    rows.append(("Paillier nonce r^N, precomputed off-line (CRT)", ms(cpu(ski.sample_nonce, runs))))
    rows.append(
        ("Paillier encrypt with a precomputed nonce", ms(cpu(lambda: pki.encrypt_with_nonce(m, nonce), runs)))
    )
    rows.append(("Paillier decrypt, CRT", ms(cpu(lambda: ski.decrypt(c), runs))))

    prm = rpj.params
    x, y = sample_signed(3328), sample_signed(3328)
    prm.commit(1, 1)  # build the tables once (kept on the parameters object)
    rows.append(
        (
            "ring-Pedersen s^x t^y, 3328-bit exponents, two powmods",
            ms(cpu(lambda: prm.commit_plain(x, y), runs)),
        )
    )
    rows.append(("ring-Pedersen s^x t^y, fixed-base table", ms(cpu(lambda: prm.commit(x, y), runs))))

    few = max(1, runs // 5)
    proof_prm = pi_prm.prove(SID, 1, rpj)
    rows.append(("Pi^prm prove (m = 128)", ms(cpu(lambda: pi_prm.prove(SID, 1, rpj), few))))
    rows.append(("Pi^prm verify", ms(cpu(lambda: pi_prm.verify(SID, 1, prm, proof_prm), few))))
    proof_mod = pi_mod.prove(SID, 0, ski)
    rows.append(("Pi^mod prove (m = 128)", ms(cpu(lambda: pi_mod.prove(SID, 0, ski), few))))
    rows.append(("Pi^mod verify", ms(cpu(lambda: pi_mod.verify(SID, 0, ski.n, proof_mod), few))))
    proof_fac = pi_fac.prove(SID, 0, prm, ski)
    rows.append(("Pi^fac prove", ms(cpu(lambda: pi_fac.prove(SID, 0, prm, ski), runs))))
    rows.append(
        (
            "Pi^fac verify (verifier's trapdoor)",
            ms(cpu(lambda: pi_fac.verify(SID, 0, rpj, ski.n, proof_fac), runs)),
        )
    )

    k = sample_signed(ELL)
    b, yk = secrets.randbelow(Q - 1) + 1, secrets.randbelow(Q - 1) + 1
    a_pt = point_mul_base(yk)
    st_e = pi_enc_elg.EncElgStatement(
        ski.encrypt(k, rho), a_pt, point_mul_base(b), point_sum([point_mul(a_pt, b), point_mul_base(int(k))])
    )
    proof_e = pi_enc_elg.prove(SID, 0, prm, ski, st_e, k, rho, b)
    rows.append(
        ("Pi^enc-elg prove", ms(cpu(lambda: pi_enc_elg.prove(SID, 0, prm, ski, st_e, k, rho, b), runs)))
    )
    rows.append(
        ("Pi^enc-elg verify", ms(cpu(lambda: pi_enc_elg.verify(SID, 0, rpj, pki, st_e, proof_e), runs)))
    )

    cj = pkj.encrypt(sample_signed(ELL), sample_unit(pkj.n))
    xa, ya = secrets.randbelow(Q), sample_signed(ELL_PRIME)
    r, ry = sample_unit(pkj.n), sample_unit(pki.n)
    st_a = pi_aff_g.AffGStatement(
        cj, pkj.add(pkj.mul(xa, cj), pkj.encrypt(ya, r)), ski.encrypt(ya, ry), point_mul_base(xa)
    )
    proof_a = pi_aff_g.prove(SID, 0, prm, pkj, ski, st_a, xa, ya, r, ry)

    def aff_prove_pre() -> None:
        nj, ni = pkj.sample_nonce(), ski.sample_nonce()  # excluded below: measured as off-line work
        t0 = time.process_time()
        pi_aff_g.prove(SID, 0, prm, pkj, ski, st_a, xa, ya, r, ry, nj, ni)
        pre.append(time.process_time() - t0)

    pre: list[float] = []
    for _ in range(runs):
        aff_prove_pre()
    rows.append(
        ("Pi^aff-g prove", ms(cpu(lambda: pi_aff_g.prove(SID, 0, prm, pkj, ski, st_a, xa, ya, r, ry), runs)))
    )
    rows.append(("Pi^aff-g prove, nonces precomputed off-line", ms(pre)))
    rows.append(
        (
            "Pi^aff-g verify (verifier's CRT key and trapdoor)",
            ms(cpu(lambda: pi_aff_g.verify(SID, 0, rpj, skj, pki, st_a, proof_a), runs)),
        )
    )
    rows.append(
        (
            "Pi^aff-g verify (public keys only)",
            ms(cpu(lambda: pi_aff_g.verify(SID, 0, prm, pkj, pki, st_a, proof_a), runs)),
        )
    )

    sizes = {
        "Pi^prm": len(proof_prm.to_bytes()),
        "Pi^mod": len(proof_mod.to_bytes()),
        "Pi^fac": len(proof_fac.to_bytes()),
        "Pi^enc-elg": len(proof_e.to_bytes()),
        "Pi^aff-g": len(proof_a.to_bytes()),
    }
    print(f"command: python loadtest/bench_cggmp24_primitives.py --primes {args.primes} --runs {args.runs}")
    print(f"machine: {cpu_model()}; CPU time (process_time), median unless stated\n")
    print("| operation | CPU time |\n|---|---|")
    for name, val in rows:
        print(f"| {name} | {val} |")
    print("\nproof sizes (bytes): " + ", ".join(f"{k} {v}" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
