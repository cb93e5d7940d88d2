"""The final-outcome arbiter (KV ``rounds`` ``final.<tx>``, create-only) on a real server: the broadcaster
may create it (and nothing else in ``rounds``), and consensus publishes ``tx.failed`` only when it wins it."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

import services.consensus.service as C
from schemas import kv as K
from schemas.messages import REGISTRY, TxFailed
from schemas.names import BUCKET_ROUNDS, publish_rights, subject_matches, tx_subject
from services.runtime.bus import CasConflict
from services.runtime.config import load_config
from services.runtime.logging import Logger
from services.runtime.lookup import last_message
from services.runtime.service import ServiceContext
from tests.integration.conftest import BusFactory


def test_broadcaster_may_write_only_the_final_entries_of_rounds() -> None:
    rights = publish_rights("broadcaster")
    assert any(subject_matches(p, "$KV.rounds.final.abc") for p in rights)
    assert not any(subject_matches(p, "$KV.rounds.abc") for p in rights)
    assert any(subject_matches(p, "$KV.rounds.abc") for p in publish_rights("consensus"))


async def test_fail_publishes_only_if_it_wins_the_final_outcome(
    pki: Path, nats_server: str, bus_factory: BusFactory
) -> None:
    broadcaster = await bus_factory("broadcaster", registry=REGISTRY)
    cons_bus = await bus_factory("consensus", registry=REGISTRY)
    ctx = ServiceContext(
        name="consensus",
        cfg=load_config("consensus", pki, nats_url=nats_server),
        log=Logger("consensus"),
        stop=asyncio.Event(),
        bus_=cons_bus,
    )
    consensus = C.Consensus(ctx)
    signed_tx, failed_tx = uuid.uuid4().hex, uuid.uuid4().hex

    # the broadcaster claims "signed" first (its own right on $KV.rounds.final.>); a second claim loses
    kv_b = await broadcaster.kv(BUCKET_ROUNDS)
    await kv_b.create(K.final_key(signed_tx), K.FinalRecord(outcome="signed", by="broadcaster", at_ms=1))
    with pytest.raises(CasConflict):
        await kv_b.create(K.final_key(signed_tx), K.FinalRecord(outcome="signed", by="broadcaster", at_ms=2))

    await consensus._fail(signed_tx, "gave up")
    assert await last_message(cons_bus, tx_subject("failed", signed_tx)) is None

    await consensus._fail(failed_tx, "gave up")
    msg = await last_message(cons_bus, tx_subject("failed", failed_tx))
    assert msg is not None and isinstance(msg.payload, TxFailed) and msg.sender == "consensus"
    entry = await kv_b.get(K.final_key(failed_tx))
    assert entry is not None and entry.decode(K.FinalRecord).outcome == "failed"
    # the broadcaster now finds "failed" and must not publish tx.signed
    with pytest.raises(CasConflict):
        await kv_b.create(K.final_key(failed_tx), K.FinalRecord(outcome="signed", by="broadcaster", at_ms=3))
    # the round itself is closed
    round_entry = await (await cons_bus.kv(BUCKET_ROUNDS)).get(failed_tx)
    assert round_entry is not None and round_entry.decode(K.RoundRecord).done
