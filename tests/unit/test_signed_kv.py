"""Signed KV values (``services.runtime.signed_kv``): a value is acted on only when the identity entitled to
write its key signed it for that key, newer than the value in force; anything else is ignored, the value
in force stays, and a violation is reported against the signer when its signature convicts it, else
against ``unknown``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
from nats.aio.msg import Msg

from schemas import envelope as E
from schemas import kv as K
from schemas.names import UNKNOWN, kv_writer_allowed
from schemas.rest import Policy
from services.runtime.bus import KvEntry, KvWatcher
from services.runtime.signed_kv import (
    NoVerifiedValue,
    Removed,
    Signed,
    SignedKV,
    seal_value,
    value_digest,
)
from tests.unit.service_fakes import FakeKV, SignedFakeBus, fake_identities, identity_keys, service_context

NAMES = ["node-1", "node-2", "node-3", "admin", "monitor", "consensus"]


IDENTITIES = fake_identities(NAMES)
keys = identity_keys


class ScriptedKV(FakeKV):
    """A bucket whose watch hands out what the test scripts (as a watch would deliver it)."""

    def __init__(self, bucket: str) -> None:
        super().__init__(bucket)
        self.script: list[KvEntry | None] = []

    async def watch(self, key: str = ">") -> AsyncIterator[KvEntry | None]:
        for item in self.script:
            yield item


def reader_bus(identity: str = "node-1") -> SignedFakeBus:
    """What SignedKV uses of a bus: the identity keys, a log, and ``report``."""
    return SignedFakeBus(identity=identity, identities=IDENTITIES)


def policy_value(
    signer: str, ts_ms: int, max_tx: int, key: str = K.POLICY_KEY, bucket: str = "config"
) -> bytes:
    return seal_value(keys(signer), IDENTITIES, "config", key, Policy(max_tx_sats=max_tx), ts_ms)


GOOD_TS = 1_700_000_000_000
GOOD = policy_value("admin", GOOD_TS, 5_000_000)


def reader() -> tuple[SignedKV, ScriptedKV, SignedFakeBus]:
    bus = reader_bus()
    kv = ScriptedKV("config")
    return SignedKV(bus, kv), kv, bus  # type: ignore[arg-type]


async def watched(skv: SignedKV, kv: ScriptedKV, entries: list[KvEntry | None]) -> list[Any]:
    kv.script = entries
    return [item async for item in skv.watch(K.POLICY_KEY, Policy)]


def _flip(raw: bytes) -> bytes:
    env = E.decode(raw)
    payload = msgspec.msgpack.encode(Policy(max_tx_sats=10_000_000_000))
    return E.encode(msgspec.structs.replace(env, payload=payload))  # the admin's signature, another payload


BAD_VALUES: dict[str, tuple[bytes, str, str]] = {
    # name: (stored bytes, expected kind, expected offender)
    "forged by node-3": (policy_value("node-3", GOOD_TS + 5, 10_000_000_000), "sender-not-allowed", "node-3"),
    "unsigned": (msgspec.msgpack.encode(Policy(max_tx_sats=10_000_000_000)), "malformed", UNKNOWN),
    "copied from another key": (
        policy_value("admin", GOOD_TS + 5, 10_000_000_000, key="dkg.s1"),
        "subject-mismatch",
        UNKNOWN,
    ),
    "copied from another bucket": (
        seal_value(keys("monitor"), IDENTITIES, "bans", "policy", Policy(max_tx_sats=10**10), GOOD_TS + 5),
        "subject-mismatch",
        UNKNOWN,
    ),
    "stale (an older admin value replayed)": (
        policy_value("admin", GOOD_TS - 1, 10_000_000_000),
        "stale",
        UNKNOWN,
    ),
    "same version, other content": (policy_value("admin", GOOD_TS, 10_000_000_000), "stale", UNKNOWN),
    "bad signature": (_flip(GOOD), "bad-signature", UNKNOWN),
    "wrong type": (
        seal_value(
            keys("admin"),
            IDENTITIES,
            "config",
            "policy",
            K.DkgRequest(session_id="s", scheme="frost", key_id="k", nodes=[], threshold=1),
            GOOD_TS + 5,
        ),
        "unknown-type",
        "admin",
    ),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
async def test_a_bad_value_is_ignored_reported_and_the_good_one_stays(case: str) -> None:
    raw, kind, offender = BAD_VALUES[case]
    skv, kv, bus = reader()
    got = await watched(skv, kv, [KvEntry("policy", GOOD, 1), None, KvEntry("policy", raw, 2)])
    assert [type(g) for g in got] == [Signed, type(None)]  # the bad value never reaches the reader
    assert got[0].value.max_tx_sats == 5_000_000
    held = skv.in_force("policy", Policy)
    assert held is not None and held.raw == GOOD
    assert [(r.offender, r.kind) for r in bus.reports] == [(offender, kind)]
    assert bus.reports[0].raw == raw and bus.reports[0].subject == "$KV.config.policy"


@pytest.mark.parametrize("case", list(BAD_VALUES))
async def test_get_keeps_the_last_good_value_and_refuses_without_one(case: str) -> None:
    raw, kind, _ = BAD_VALUES[case]
    skv, kv, bus = reader()
    kv.data["policy"] = (1, GOOD)
    assert (await skv.get("policy", Policy)).value.max_tx_sats == 5_000_000  # type: ignore[union-attr]
    kv.data["policy"] = (2, raw)
    got = await skv.get("policy", Policy)
    assert got is not None and got.raw == GOOD
    assert [r.kind for r in bus.reports] == [kind]
    fresh, kv2, _ = reader()
    kv2.data["policy"] = (2, raw)
    if kind == "stale":  # on its own a replayed value is the newest this reader knows: nothing to compare
        return
    with pytest.raises(NoVerifiedValue):
        await fresh.get("policy", Policy)


async def test_a_newer_admin_value_replaces_it_and_the_same_bytes_again_are_no_replay() -> None:
    skv, kv, bus = reader()
    newer = policy_value("admin", GOOD_TS + 1, 7_000_000)
    got = await watched(skv, kv, [KvEntry("policy", GOOD, 1), None, KvEntry("policy", GOOD, 1),
                                  KvEntry("policy", newer, 2), KvEntry("policy", newer, 2)])  # fmt: skip
    assert [g.value.max_tx_sats if isinstance(g, Signed) else g for g in got] == [5_000_000, None, 7_000_000]
    assert bus.reports == []
    assert value_digest(newer) != value_digest(GOOD)


async def test_an_old_deletion_marker_does_not_remove_the_value_in_force() -> None:
    skv, kv, _ = reader()
    got = await watched(skv, kv, [KvEntry("policy", GOOD, 5), KvEntry("policy", b"", 3, "DEL")])
    assert [type(g) for g in got] == [Signed]
    got = await watched(skv, kv, [KvEntry("policy", b"", 6, "DEL")])
    assert got == [Removed("policy", 6, "DEL")] and skv.in_force("policy", Policy) is None
    # and the value deleted cannot come back by a replay
    got = await watched(skv, kv, [KvEntry("policy", GOOD, 5)])
    assert got == []


async def test_writes_are_signed_with_growing_versions() -> None:
    bus = reader_bus(identity="admin")
    kv = ScriptedKV("config")
    skv = SignedKV(bus, kv)  # type: ignore[arg-type]
    future = policy_value("admin", 9_999_999_999_999, 1)  # a value from a clock far ahead
    kv.data["policy"] = (1, future)
    await skv.update("policy", Policy(max_tx_sats=2), 1)
    env = E.decode(kv.data["policy"][1])
    assert env.sender == "admin" and env.subject == "$KV.config.policy" and env.ts_ms == 9_999_999_999_999 + 1
    reader_kv, rkv, rbus = reader()
    rkv.data["policy"] = kv.data["policy"]
    got = await reader_kv.get("policy", Policy)
    assert got is not None and got.value.max_tx_sats == 2 and rbus.reports == []


def test_the_writers_table() -> None:
    assert kv_writer_allowed("admin", "config", "policy")
    assert not kv_writer_allowed("node-3", "config", "policy")
    assert not kv_writer_allowed("consensus", "config", "policy")
    assert kv_writer_allowed("admin", "config", "dkg.s1")
    assert kv_writer_allowed("monitor", "bans", "node-1")
    assert not kv_writer_allowed("node-3", "bans", "node-1")
    assert not kv_writer_allowed("admin", "bans", "node-1")
    assert kv_writer_allowed("node-3", "keys", "hostpubkey.node-3")
    assert not kv_writer_allowed("node-3", "keys", "hostpubkey.node-2")
    assert not kv_writer_allowed("node-3", "keys", "hostpubkey.node-3.x")


def _delivery(subject: str, stream: str | None) -> Msg:
    reply = f"$JS.ACK.{stream}.watcher.1.42.7.1700000000000000000.0" if stream else ""
    return Msg(_client=None, subject=subject, reply=reply, data=b"x")  # type: ignore[arg-type]


async def _never(msg: Msg, why: str) -> None:
    raise AssertionError("not reported here")


@pytest.mark.parametrize(
    ("subject", "stream", "foreign"),
    [
        ("$KV.config.policy", "KV_config", False),
        ("$KV.nodes.node-3", "KV_nodes", True),  # node-3's own key, pointed at our inbox
        ("$KV.config.policy", "KV_nodes", True),  # the right subject from another stream
        ("$KV.config.dkg.s1", "KV_config", True),  # the right stream, outside the watched keys
        ("$KV.config.policy", None, True),  # no JetStream delivery at all
    ],
)
def test_a_watch_takes_only_its_own_bucket_and_keys(subject: str, stream: str | None, foreign: bool) -> None:
    w = KvWatcher("config", "policy", _never)
    assert bool(w.foreign(_delivery(subject, stream))) is foreign


def test_a_signer_without_a_verified_policy_refuses_every_spend(tmp_path: Any) -> None:
    """The stored policy never verified (unsigned, forged): the node votes no, whatever the spend."""
    from services.signer.keystore import Keystore
    from services.signer.node import SignerNode
    from tests.unit.test_core_policy import ACCOUNT, make_request

    bus: Any = reader_bus()
    node = SignerNode(service_context("node-1", bus).cfg, bus, Keystore(tmp_path, "node-1", passphrase="t"))
    node.share = lambda key_id: (None, ACCOUNT)  # type: ignore[assignment,method-assign,return-value]
    assert node._decide(make_request()).approve  # control: the defaults allow it
    node.policy = None
    entry = node._decide(make_request())
    assert not entry.approve and any("no verified policy" in r for r in entry.reasons), entry
