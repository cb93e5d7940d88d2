"""Test-only network for the CGGMP24 round machines: delivers messages between parties' states, with hooks
to drop, tamper with, duplicate or reorder them."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from tss.cggmp24.rounds import Message

S = TypeVar("S")
RoundFn = Callable[[S, Sequence[object]], tuple[S, list[Message]]]
Filter = Callable[[Message, int], Sequence[Message]]  # (message, receiver) -> what is delivered


def recipients(m: Message, parties: Sequence[int]) -> list[int]:
    if m.recipient is None:
        return [p for p in parties if p != m.sender]
    return [m.recipient]


def run_network(
    states: Mapping[int, S],
    first: Sequence[Message],
    round_fn: Callable[[S, list[object]], tuple[S, list[Message]]],
    *,
    filt: Filter | None = None,
    shuffle: random.Random | None = None,
    max_steps: int = 100,
) -> dict[int, S]:
    """Deliver until no party has anything left to say. ``filt`` maps each (message, receiver) to what
    that receiver gets (``[]`` drops it, ``[m, m]`` duplicates it, a modified message tampers)."""
    st: dict[int, Any] = dict(states)
    parties = list(st)
    queue = list(first)
    for _ in range(max_steps):
        if not queue:
            return st
        inboxes: dict[int, list[object]] = {p: [] for p in parties}
        for m in queue:
            for r in recipients(m, parties):
                if r in inboxes:
                    inboxes[r].extend(filt(m, r) if filt else [m])
        queue = []
        for p in parties:
            box = inboxes[p]
            if shuffle is not None:
                shuffle.shuffle(box)
            if not box:
                continue
            st[p], out = round_fn(st[p], box)
            queue.extend(out)
    raise AssertionError("network did not quiesce")


def replace_body(m: Message, new_body: bytes) -> Message:
    return Message(m.sender, m.recipient, m.payload[:38] + new_body)


def slot_of(m: Message) -> int:
    return m.payload[5]


def body_of(m: Message) -> bytes:
    return m.payload[38:]
