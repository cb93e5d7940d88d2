"""node-3, with its real client certificate, tries to steer the others through KV: the policy a signer
enforces and the bans consensus honours. Every attempt of the outside test report is made again:

- writing ``$KV.config.policy`` / ``$KV.bans.node-1`` directly (the broker refuses);
- writing its own ``$KV.nodes.node-3`` (which it may) with a policy or ban of its own making, signed by
  itself or unsigned, or with a copy of an older admin policy, then creating a consumer on ``KV_nodes``
  whose deliver subject is the inbox the victim's watcher listens on, with the consumer sequence that
  watcher expects next (so nats-py's ordered consumer takes it in);
- the same with a consumer on ``KV_config`` itself, delivering the admin's older (looser) policy again.

Whether the broker lets node-3 create such consumers is the broker's business (it may close it); these
tests hold either way: the victims keep the admin's policy and no forged ban, a policy the operator sets
afterwards still arrives, and what did reach a watcher is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from schemas import kv as K
from schemas.envelope import BusRejection
from schemas.names import BUCKET_BANS, BUCKET_CONFIG
from schemas.rest import Policy
from services.consensus.service import Consensus
from services.runtime.bus import Bus
from services.runtime.seal import Identities, IdentityKeys
from services.runtime.signed_kv import SignedKV, seal_value
from services.signer.keystore import Keystore
from services.signer.node import SignerNode
from tests.integration.test_nats_security import connect, ctx
from tests.unit.service_fakes import service_context

BusFactory = Callable[..., Awaitable[Bus]]
BTC = 100_000_000


async def eventually(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Attacker:
    """node-3's own NATS connection (its certificate, its inbox prefix)."""

    def __init__(self, nc: Any, keys: IdentityKeys, identities: Any) -> None:
        self.nc = nc
        self.keys = keys
        self.identities = identities
        self.errors: list[str] = []
        self.victim_prefix = "_INBOX.node-1."

    async def api(self, subject: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """A JetStream API request; None when the broker refuses it (no answer) or answers an error."""
        try:
            msg = await self.nc.request(subject, json.dumps(body).encode(), timeout=2.0)
        except Exception:
            return None
        out: dict[str, Any] = json.loads(msg.data)
        if "error" in out:
            self.errors.append(str(out["error"]))
            return None
        return out

    async def write_own(self, data: bytes) -> int:
        """Put ``data`` at ``$KV.nodes.node-3`` (its own key); the stream sequence."""
        ack = await self.nc.request("$KV.nodes.node-3", data, timeout=2.0)
        return int(json.loads(ack.data)["seq"])

    async def try_write(self, subject: str, data: bytes) -> bool:
        """A direct KV write outside its rights: True only if the broker stored it."""
        try:
            ack = await self.nc.request(subject, data, timeout=1.0)
        except Exception:
            return False
        return "error" not in json.loads(ack.data)

    async def watchers_of(self, stream: str, inbox_prefix: str, filter_subject: str) -> list[tuple[str, int]]:
        """The victim's watch consumers on ``stream`` (it lists them like anyone): (deliver subject, the
        consumer sequence it expects next), newest first."""
        listing = await self.api(f"$JS.API.CONSUMER.LIST.{stream}", {})
        found = []
        for info in (listing or {}).get("consumers", []):
            cfg = info["config"]
            if (
                cfg.get("deliver_subject", "").startswith(inbox_prefix)
                and cfg.get("filter_subject") == filter_subject
            ):
                found.append(
                    (info["created"], cfg["deliver_subject"], int(info["delivered"]["consumer_seq"]) + 1)
                )
        return [(deliver, want) for _, deliver, want in sorted(found, reverse=True)]

    async def push(self, stream: str, filter_subject: str, deliver: str, since: int) -> bool:
        """An ephemeral consumer (what the broker lets every identity create on a KV stream, for watches)
        pushing ``filter_subject`` from stream sequence ``since`` to ``deliver``; False when refused."""
        config = {
            "deliver_subject": deliver,
            "filter_subject": filter_subject,
            "deliver_policy": "by_start_sequence",
            "opt_start_seq": since,
            "ack_policy": "none",
            "inactive_threshold": 30_000_000_000,
        }
        return (
            await self.api(f"$JS.API.CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config})
            is not None
        )

    async def inject(self, stream: str, filter_subject: str, watch: tuple[str, str], since: int) -> bool:
        """Deliver the message of ``filter_subject`` at stream sequence ``since`` into the victim's watcher
        (``watch``: its stream and filter; node-1's or consensus's inbox prefix first) so that nats-py's
        ordered consumer takes it in: a watcher expecting a consumer sequence above 1 is first made to
        reset (anything delivered out of sequence does that), and its new consumer, which expects 1,
        gets the message as its first. False when the broker refuses it or no watcher is found."""
        (victim_stream, victim_filter), prefix = watch, self.victim_prefix
        await asyncio.sleep(1.0)  # a watcher replaced after the last injection has its current values by now
        found = await self.watchers_of(victim_stream, prefix, victim_filter)
        if not found:
            return False
        deliver, want = found[0]
        if want > 1:
            if not await self.push(stream, filter_subject, deliver, since):
                return False
            before = {d for d, _ in found}
            deadline = time.monotonic() + 5
            while True:  # its replacement: a consumer not there before, on a new inbox, expecting 1
                listed = await self.watchers_of(victim_stream, prefix, victim_filter)
                fresh = [d for d, w in listed if w == 1 and d not in before]
                if fresh:
                    deliver = fresh[0]
                    break
                if time.monotonic() > deadline:
                    self.errors.append("the victim's watcher was not replaced")
                    return False
                await asyncio.sleep(0.05)
        if not await self.push(stream, filter_subject, deliver, since):
            return False
        await self.nc.flush()
        return True


@contextlib.asynccontextmanager
async def node3_connected(pki: Path, nats_server: str) -> AsyncIterator[Attacker]:
    """node-3's connection, opened in the test's own event loop."""
    attacker = Attacker(
        None, IdentityKeys.load(pki, "node-3"), Identities.load(pki / "pki" / "identities.json")
    )
    attacker.nc = await connect(
        nats_server, ctx(pki, "node-3"), attacker.errors, inbox_prefix="_INBOX.node-3"
    )
    try:
        yield attacker
    finally:
        await attacker.nc.close()


Node3 = Callable[[], contextlib.AbstractAsyncContextManager[Attacker]]


@pytest.fixture
def node3(pki: Path, nats_server: str) -> Node3:
    return lambda: node3_connected(pki, nats_server)


async def reports_on(admin: Bus) -> tuple[list[BusRejection], Any]:
    """Every bus rejection published from now on (as admin, a core subscription on the violations)."""
    seen: list[BusRejection] = []

    async def on(msg: Any) -> None:
        with contextlib.suppress(Exception):
            _, payload = admin.open(msg.data, msg.subject)
            if isinstance(payload, BusRejection):
                seen.append(payload)

    sub = await admin.nc.subscribe("node.violation.>", cb=on)
    return seen, sub


def foreign_reports(seen: list[BusRejection]) -> int:
    return sum(1 for r in seen if r.kind == "wrong-stream")


def policy(max_tx_btc: float, version: int) -> Policy:
    return Policy(version=version, max_tx_sats=int(max_tx_btc * BTC))


async def test_node3_cannot_make_a_signer_take_its_policy(
    pki: Path, tmp_path: Path, bus_factory: BusFactory, node3: Node3
) -> None:
    async with node3() as attacker:
        admin = await bus_factory("admin")
        n1 = await bus_factory("node-1")
        config = await SignedKV.open(admin, BUCKET_CONFIG)
        seen, sub = await reports_on(admin)
        old = await config.get(K.POLICY_KEY, Policy)
        signer_task = None
        try:
            # the admin's policy history: a loose one, then the one in force (0.05 BTC)
            await config.write(K.POLICY_KEY, policy(10, 101), old.revision if old else None)
            loose = await config.kv.get(K.POLICY_KEY)
            assert loose is not None
            await config.write(K.POLICY_KEY, policy(0.05, 102), loose.revision)

            # node-1's signer, as it runs: load the policy, then follow it
            signer = SignerNode(n1.cfg, n1, Keystore(tmp_path, "node-1", passphrase="test"))
            signer.config = await SignedKV.open(n1, BUCKET_CONFIG)
            await signer._load_policy()
            assert signer.policy is not None and signer.policy.max_tx_sats == int(0.05 * BTC)
            signer_task = asyncio.create_task(signer._watch_policy())
            await asyncio.sleep(0.5)

            forged = policy(10, 999)
            # 1. straight at the key: the broker refuses
            signed_by_3 = seal_value(
                attacker.keys, attacker.identities, BUCKET_CONFIG, K.POLICY_KEY, forged, 2**50
            )
            assert not await attacker.try_write("$KV.config.policy", signed_by_3)

            # 2. its own key, delivered into the signer's watcher: signed by itself, unsigned, and a copy of
            #    the admin's older policy; each in turn (the watcher it hits is replaced)
            watch = ("KV_config", "$KV.config.policy")
            injected = 0
            for value in (signed_by_3, msgspec.msgpack.encode(forged), loose.value):
                seq = await attacker.write_own(value)
                if await attacker.inject("KV_nodes", "$KV.nodes.node-3", watch, seq):
                    injected += 1
                    await eventually(lambda: foreign_reports(seen) >= injected, 10, "report")  # noqa: B023
            # 3. the admin's older policy again, from KV_config itself
            replayed = await attacker.inject("KV_config", "$KV.config.policy", watch, loose.revision)
            if replayed:
                await eventually(
                    lambda: any(r.kind == "stale" for r in seen),
                    10,
                    f"stale report ({[(r.kind, r.reporter) for r in seen]}, {attacker.errors})",
                )

            await asyncio.sleep(0.5)
            assert signer.policy is not None and signer.policy.max_tx_sats == int(0.05 * BTC), signer.policy
            assert signer.policy.version == 102

            # the operator sets a new policy: it arrives (the watch was not left behind by the injections)
            current = await config.kv.get(K.POLICY_KEY)
            assert current is not None
            await config.write(K.POLICY_KEY, policy(0.04, 103), current.revision)
            await eventually(
                lambda: signer.policy is not None and signer.policy.version == 103, 10, "policy 103"
            )
            assert signer.policy is not None and signer.policy.max_tx_sats == int(0.04 * BTC)

            # what reached the watcher was reported; nothing blamed node-1 or the admin
            assert {r.offender for r in seen if r.reporter == "node-1"} <= {"unknown", "node-3"}, seen
            print(f"injected into the watcher: {injected} from KV_nodes, replay from KV_config: {replayed}")
        finally:
            if signer_task is not None:
                signer_task.cancel()
                with contextlib.suppress(BaseException):
                    await signer_task
            await sub.unsubscribe()
            # leave no policy behind for the other suites (they expect the defaults)
            with contextlib.suppress(Exception):
                await config.kv.delete(K.POLICY_KEY)


async def test_consensus_ignores_bans_node3_forges(pki: Path, bus_factory: BusFactory, node3: Node3) -> None:
    async with node3() as attacker:
        admin = await bus_factory("admin")
        cons_bus = await bus_factory("consensus")
        seen, sub = await reports_on(admin)
        c = Consensus(service_context("consensus", cons_bus))
        task = asyncio.create_task(c.watch_bans())
        try:
            await asyncio.sleep(0.5)
            until = int(time.time() * 1000) + 3600_000
            bans: list[bytes] = []
            for node in ("node-1", "node-2"):
                ban = K.BanRecord(node=node, until_ms=until, banned_at_ms=until - 3600_000, violations=5)
                bans.append(seal_value(attacker.keys, attacker.identities, BUCKET_BANS, node, ban, until))
                bans.append(msgspec.msgpack.encode(ban))
                assert not await attacker.try_write(f"$KV.bans.{node}", bans[-1])

            attacker.victim_prefix = "_INBOX.consensus."
            injected = 0
            for value in bans:
                seq = await attacker.write_own(value)
                if await attacker.inject("KV_nodes", "$KV.nodes.node-3", ("KV_bans", "$KV.bans.>"), seq):
                    injected += 1
                    await eventually(lambda: foreign_reports(seen) >= injected, 10, "report")  # noqa: B023
            await asyncio.sleep(0.5)
            assert "node-1" not in c.bans and "node-2" not in c.bans, c.bans

            # a ban the monitor signs still counts (the watch is alive)
            monitor = await bus_factory("monitor")
            member = f"node-{uuid.uuid4().int % 100_000 + 700_000}"
            real = K.BanRecord(node=member, until_ms=until, banned_at_ms=until - 3600_000, violations=5)
            await (await SignedKV.open(monitor, BUCKET_BANS)).put(member, real)
            await eventually(lambda: member in c.bans, 10, "the monitor's ban")
            await (await monitor.kv(BUCKET_BANS)).delete(member)
            print(f"forged bans injected into consensus's watcher: {injected}")
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await sub.unsubscribe()
