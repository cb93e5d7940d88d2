"""Micro-benchmark of the bus's per-message decode: ``Bus.open`` (verify, then decode the payload by its
type) and the decode step alone, on the wire samples of ``tests/unit/wire_samples.py``.

    .venv/bin/python -m loadtest.bench_decode [--number 20000] [--repeat 7]

Prints the best of ``repeat`` runs, in microseconds per message, for a Vote (the hottest message), a
TxRequested (the largest) and the mean over every sample.
"""

from __future__ import annotations

import argparse
import timeit
from functools import partial
from types import SimpleNamespace
from typing import Any

import msgspec

from schemas import envelope as E
from schemas.messages import REGISTRY
from schemas.names import proto_recipient
from schemas.wire import decode_payload
from services.runtime.bus import Bus
from services.runtime.seal import seal
from tests.unit.service_fakes import fake_identities, identity_keys
from tests.unit.wire_samples import samples

SENDERS = ["intake", "consensus", "broadcaster", "presig", "recorder", *(f"node-{i}" for i in range(1, 6))]


def _bus(ids: Any) -> Bus:
    cfg = SimpleNamespace(identity="monitor", name="bench")
    nc = SimpleNamespace(jetstream=lambda: None)
    return Bus(cfg, nc, identity_keys("monitor"), ids, REGISTRY)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    ids = fake_identities([*SENDERS, "monitor"])
    bus = _bus(ids)
    rows = []
    for i, (subject, sender, msg) in enumerate(samples()):
        if proto_recipient(subject):
            continue  # encrypted to someone else: the monitor never decodes it
        env = seal(
            identity_keys(sender),
            ids,
            subject=subject,
            type_name=type(msg).__name__,
            payload=msgspec.msgpack.encode(msg),
            msg_id=f"b{i}",
        )
        raw = E.encode(env)
        assert bus.open(raw, subject)[1] == msg
        t_open = min(
            timeit.repeat(
                partial(bus.open, raw, subject),
                number=a.number // 20,
                repeat=a.repeat,
            )
        )
        t_dec = min(
            timeit.repeat(
                partial(decode_payload, bus.registry, env.type, env.payload),
                number=a.number,
                repeat=a.repeat,
            )
        )
        rows.append(
            (type(msg).__name__, len(env.payload), 1e6 * t_open / (a.number // 20), 1e6 * t_dec / a.number)
        )
    for name, size, t_open, t_dec in rows:
        if name in ("Vote", "TxRequested"):
            print(f"{name:12s} payload {size:4d} B   open {t_open:6.2f} us   decode {t_dec:5.3f} us")
    n = len(rows)
    print(
        f"mean of {n:2d}    payload {sum(r[1] for r in rows) / n:6.1f} B"
        f" open {sum(r[2] for r in rows) / n:6.2f} us"
        f"   decode {sum(r[3] for r in rows) / n:5.3f} us"
    )


if __name__ == "__main__":
    main()
