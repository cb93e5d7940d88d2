"""Micro-benchmark of the bus's per-message decode: the decode step (``schemas.wire.decode_payload``, what
``Bus.open`` does after verifying and decrypting) and the whole ``Bus.open`` (Ed25519 verify included), on
the wire samples of ``tests/unit/wire_samples.py``.

    .venv/bin/python -m loadtest.bench_decode [--number 20000] [--repeat 15]
    git show 0574b8e:schemas/messages.py > /tmp/old_messages.py
    .venv/bin/python -m loadtest.bench_decode --old-messages /tmp/old_messages.py

With ``--old-messages`` (a ``schemas/messages.py`` of the code before the tagged union) it also times, in
the same process and interleaved, the decode step as that code did it (``msgspec.msgpack.decode(payload,
type=cls)`` after a registry lookup, untagged payloads) and the new decoder on those old payloads (messages
already in the streams). Prints the best of ``repeat`` runs in microseconds per message.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import timeit
from collections.abc import Callable
from functools import partial
from types import ModuleType, SimpleNamespace
from typing import Any

import msgspec

from schemas import envelope as E
from schemas.messages import REGISTRY
from schemas.names import proto_recipient
from schemas.wire import decode_payload
from services.runtime.bus import Bus
from services.runtime.seal import seal
from tests.unit.service_fakes import fake_identities, identity_keys
from tests.unit.wire_samples import SENDERS, samples


def _bus(ids: Any) -> Bus:
    cfg = SimpleNamespace(identity="monitor", name="bench")
    nc = SimpleNamespace(jetstream=lambda: None)
    return Bus(cfg, nc, identity_keys("monitor"), ids, REGISTRY)  # type: ignore[arg-type]


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("old_messages", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_messages"] = mod  # msgspec resolves the annotations through it
    spec.loader.exec_module(mod)
    return mod


def _old_decode(registry: dict[str, type[msgspec.Struct]], type_name: str, payload: bytes) -> Any:
    """The decode step of ``Bus.open`` before the tagged union, line for line."""
    typ = registry.get(type_name) or {"BusRejection": E.BusRejection}.get(type_name)
    return msgspec.msgpack.decode(payload, type=typ)


def _best(fns: dict[str, Callable[[], Any]], number: int, repeat: int) -> dict[str, float]:
    """Microseconds per call, best of ``repeat``; the candidates take turns so load hits them alike."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], 1e6 * timeit.timeit(fn, number=number) / number)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--number", type=int, default=20000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--old-messages", help="schemas/messages.py of the code before the tagged union")
    a = ap.parse_args()
    old = _load(a.old_messages) if a.old_messages else None
    ids = fake_identities(SENDERS)
    bus = _bus(ids)
    totals: dict[str, float] = {}
    sizes = {"new": 0, "old": 0}
    n = 0
    for i, (subject, sender, msg) in enumerate(samples()):
        if proto_recipient(subject):
            continue  # encrypted to someone else: the monitor never decodes it
        name = type(msg).__name__
        payload = msgspec.msgpack.encode(msg)
        env = seal(
            identity_keys(sender), ids, subject=subject, type_name=name, payload=payload, msg_id=f"b{i}"
        )
        raw = E.encode(env)
        assert bus.open(raw, subject)[1] == msg
        fns: dict[str, Callable[[], Any]] = {"new": partial(decode_payload, bus.registry, name, payload)}
        sizes["new"] += len(payload)
        if old is not None:
            old_cls = old.REGISTRY.get(name) or E.BusRejection
            fields = msgspec.to_builtins(msg, builtin_types=(bytes,))
            del fields["type"]  # the old classes have no tag
            old_payload = msgspec.msgpack.encode(msgspec.convert(fields, old_cls))
            assert decode_payload(bus.registry, name, old_payload) == msg
            sizes["old"] += len(old_payload)
            fns["old code"] = partial(_old_decode, old.REGISTRY, name, old_payload)
            fns["new on old payload"] = partial(decode_payload, bus.registry, name, old_payload)
        best = _best(fns, a.number, a.repeat)
        best["open"] = _best({"open": partial(bus.open, raw, subject)}, a.number // 20, 3)["open"]
        if name in ("Vote", "TxRequested"):
            print(f"{name:12s} " + "  ".join(f"{k} {v:6.3f} us" for k, v in best.items()))
        for k, v in best.items():
            totals[k] = totals.get(k, 0.0) + v
        n += 1
    print(f"mean of {n:2d}  " + "  ".join(f"{k} {v / n:6.3f} us" for k, v in totals.items()))
    print("mean payload " + "  ".join(f"{k} {v / n:6.1f} B" for k, v in sizes.items() if v))


if __name__ == "__main__":
    main()
