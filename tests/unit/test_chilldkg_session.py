"""The ChillDKG round state machines under a simulated message bus: happy path, reordering, replay,
drops with retransmission, corruption of every message kind (header and payload), equivocation and
junk. Every party is deterministic (fixed randomness), so a transcript can be replayed exactly."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tss import chilldkg
from tss.chilldkg import (
    FaultyCoordinatorError,
    FaultyParticipantError,
    FaultyParticipantOrCoordinatorError,
    SessionParams,
)
from tss.chilldkg_session import (
    BROADCAST,
    COORDINATOR,
    HEADER_LEN,
    CoordinatorSession,
    Kind,
    Message,
    ParticipantSession,
    Phase,
    coordinator_init,
    coordinator_retransmit,
    coordinator_round,
    participant_init,
    participant_retransmit,
    participant_round,
)

Party = int  # participant index or COORDINATOR
Tamper = Callable[[int, Party, bytes], list[bytes]]  # (delivery number, target, wire) -> what arrives


def _det(label: str, i: int) -> bytes:
    return hashlib.sha256(f"{label}/{i}".encode()).digest()


@dataclass
class Net:
    """All parties of one session plus the messages in flight; deliveries go one at a time."""

    parts: list[ParticipantSession]
    coord: CoordinatorSession
    in_flight: list[tuple[Party, bytes]] = field(default_factory=list)
    delivered: list[tuple[Party, bytes]] = field(default_factory=list)
    count: int = 0

    @staticmethod
    def create(n: int = 4, t: int = 3, seed: int = 0) -> Net:
        seckeys = [_det(f"host{seed}", i) for i in range(n)]
        params = SessionParams([chilldkg.hostpubkey_gen(k) for k in seckeys], t)
        parts = [
            participant_init(k, params, random=_det(f"rand{seed}", i), aux_rand=_det(f"aux{seed}", i))
            for i, k in enumerate(seckeys)
        ]
        return Net(parts, coordinator_init(params))

    def post(self, outbox: list[bytes]) -> None:
        for raw in outbox:
            msg = Message.from_bytes(raw)
            if msg.recipient == COORDINATOR:
                self.in_flight.append((COORDINATOR, raw))
            elif msg.recipient == BROADCAST:
                self.in_flight.extend((i, raw) for i in range(len(self.parts)))
            else:
                self.in_flight.append((msg.recipient, raw))

    def deliver(self, target: Party, raws: list[bytes]) -> None:
        if target == COORDINATOR:
            self.coord, out = coordinator_round(self.coord, raws)
        else:
            self.parts[target], out = participant_round(self.parts[target], raws)
        self.post(out)

    def start(self) -> None:
        for i in range(len(self.parts)):
            self.deliver(i, [])

    def run(
        self, tamper: Tamper | None = None, rng: random.Random | None = None, limit: int = 10_000
    ) -> None:
        while self.in_flight and limit:
            limit -= 1
            k = rng.randrange(len(self.in_flight)) if rng else 0
            target, raw = self.in_flight.pop(k)
            self.count += 1
            self.delivered.append((target, raw))
            arriving = tamper(self.count, target, raw) if tamper else [raw]
            self.deliver(target, arriving)

    def retransmit_all(self) -> None:
        for p in self.parts:
            self.post(participant_retransmit(p))
        self.post(coordinator_retransmit(self.coord))


def assert_confirmed(net: Net) -> None:
    assert net.coord.phase == Phase.CONFIRMED, net.coord
    assert net.coord.output is not None
    for p in net.parts:
        assert p.phase == Phase.CONFIRMED, p
        assert p.output is not None and p.recovery_data == net.coord.recovery_data
        assert p.output.thresh_pk == net.coord.output.thresh_pk
        assert p.output.pubshares == net.coord.output.pubshares
        assert p.error is None and p.rejected == ()
    assert net.coord.error is None and net.coord.rejected == ()


def assert_confirmed_except_rejections(net: Net) -> None:
    parties: list[ParticipantSession | CoordinatorSession] = [*net.parts, net.coord]
    assert all(p.phase == Phase.CONFIRMED and p.error is None for p in parties)


def full_run(n: int = 4, t: int = 3, seed: int = 0) -> Net:
    net = Net.create(n, t, seed)
    net.start()
    net.run()
    return net


def test_happy_path() -> None:
    net = full_run()
    assert_confirmed(net)
    # recovery data restores every participant's output
    assert net.coord.recovery_data is not None
    for i, p in enumerate(net.parts):
        out, _ = chilldkg.participant_recover(_det("host0", i), net.coord.recovery_data)
        assert out == p.output


def test_secrets_not_in_repr() -> None:
    net = full_run()
    p = net.parts[0]
    assert p.output is not None and p.output.secshare is not None
    text = repr(p) + repr(net.coord)
    assert p.hostseckey.hex() not in text and p.output.secshare.hex() not in text
    assert repr(p.hostseckey) not in text and repr(p.output.secshare) not in text


@pytest.mark.parametrize("seed", range(6))
def test_random_delivery_order(seed: int) -> None:
    net = Net.create(seed=seed)
    net.start()
    net.run(rng=random.Random(seed))
    assert_confirmed(net)


def test_coordinator_buffers_early_messages() -> None:
    """Feed a fresh coordinator the whole participant transcript backwards: PMSG2 and RACK before PMSG1."""
    ref = full_run()
    to_coord = [raw for target, raw in ref.delivered if target == COORDINATOR]
    kinds = [Message.from_bytes(r).kind for r in reversed(to_coord)]
    assert kinds.index(Kind.RACK) < kinds.index(Kind.PMSG1)
    coord = coordinator_init(ref.coord.params)
    outs: list[bytes] = []
    for raw in reversed(to_coord):
        coord, out = coordinator_round(coord, [raw])
        outs += out
    assert coord.phase == Phase.CONFIRMED and coord.rejected == ()
    assert coord.recovery_data == ref.coord.recovery_data
    ref_coord_out = list(dict.fromkeys(raw for target, raw in ref.delivered if target != COORDINATOR))
    assert outs == ref_coord_out  # CMSG1, CMSG2, RACKS: byte for byte what the in-order run sent


def test_participant_buffers_early_messages() -> None:
    """Participant 0 gets RACKS, CMSG2, CMSG1 in this order (one inbox each) and still confirms."""
    ref = full_run()
    to_p0 = [raw for target, raw in ref.delivered if target == 0]
    fresh = Net.create().parts[0]
    fresh, _ = participant_round(fresh, [])
    for raw in reversed(to_p0):
        fresh, _ = participant_round(fresh, [raw])
    assert fresh.phase == Phase.CONFIRMED and fresh.rejected == ()
    assert fresh.output == ref.parts[0].output
    # and all in one inbox, reversed
    fresh2, _ = participant_round(Net.create().parts[0], list(reversed(to_p0)))
    assert fresh2.phase == Phase.CONFIRMED


def test_every_message_replayed() -> None:
    net = Net.create()
    net.start()
    net.run(tamper=lambda _k, _t, raw: [raw, raw])
    assert_confirmed(net)
    # replaying the whole transcript afterwards changes nothing and sends nothing
    for target, raw in list(net.delivered):
        before = net.coord if target == COORDINATOR else net.parts[target]
        net.deliver(target, [raw])
        after = net.coord if target == COORDINATOR else net.parts[target]
        assert after == before
    assert net.in_flight == []


@pytest.mark.parametrize("drop", range(1, 25))  # a 4-party session has 24 deliveries
def test_drop_then_retransmit(drop: int) -> None:
    net = Net.create()
    net.start()
    net.run(tamper=lambda k, _t, raw: [] if k == drop else [raw])
    assert drop <= net.count
    assert net.coord.phase != Phase.CONFIRMED or any(p.phase != Phase.CONFIRMED for p in net.parts)
    for _ in range(4):  # retransmissions until quiet
        net.retransmit_all()
        net.run()
    assert_confirmed(net)


def _kind_and_sender(raw: bytes) -> tuple[Kind, int]:
    m = Message.from_bytes(raw)
    return m.kind, m.sender


def _flip(raw: bytes, pos: int) -> bytes:
    b = bytearray(raw)
    b[pos] ^= 0x01
    return bytes(b)


def _transcript_points() -> list[tuple[int, Kind, int]]:
    """(delivery number, kind, sender) of the first delivery of each (kind, sender) in a clean run."""
    ref = full_run()
    seen: set[tuple[Kind, int]] = set()
    points = []
    for k, (_, raw) in enumerate(ref.delivered, start=1):
        key = _kind_and_sender(raw)
        if key not in seen:
            seen.add(key)
            points.append((k, *key))
    return points


POINTS = _transcript_points()


@pytest.mark.parametrize(
    ("number", "kind", "sender"), POINTS, ids=[f"{k.name}-from-{s}" for _, k, s in POINTS]
)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_corrupt_payload_is_blamed_on_sender(number: int, kind: Kind, sender: int, where: str) -> None:
    net = Net.create()
    net.start()
    length = {}

    def tamper(k: int, _t: Party, raw: bytes) -> list[bytes]:
        if k != number:
            return [raw]
        plen = len(raw) - HEADER_LEN
        length["payload"] = plen
        if plen == 0:
            return [raw + b"\x00"]  # INV_REQ has no payload: append junk instead
        off = {"first": 0, "middle": plen // 2, "last": plen - 1}[where]
        return [_flip(raw, HEADER_LEN + off)]

    net.run(tamper=tamper)
    parties: list[ParticipantSession | CoordinatorSession] = [*net.parts, net.coord]
    failed = [p for p in parties if p.phase == Phase.FAILED]
    blamed = [p.blamed for p in parties if p.blamed is not None]
    rejections = [r for p in parties for r in p.rejected]
    if kind in (Kind.RACK, Kind.RACKS):  # acknowledgments are refused alone; the DKG itself succeeded
        assert [r.sender for r in rejections] == [sender] and not failed
        assert all(p.output is not None for p in parties)
        net.retransmit_all()  # a good copy still gets through
        net.run()
        assert_confirmed_except_rejections(net)
        return
    assert failed or rejections, "corruption went unnoticed"
    if sender == COORDINATOR:
        # participants can only say "the coordinator" or "participant j or the coordinator"
        for p in net.parts:
            if p.error is not None:
                assert isinstance(p.error, FaultyCoordinatorError | FaultyParticipantOrCoordinatorError) or (
                    kind == Kind.RACKS
                ), p.error
        return
    # a participant's message: the coordinator blames it, or the participants name it after
    # (if needed) investigating; the sender itself knows it is honest and blames the coordinator
    self_only = [i for i, p in enumerate(net.parts) if p.blamed is not None] == [sender]
    assert sender in blamed or sender in [r.sender for r in rejections] or self_only
    for i, p in enumerate(net.parts):
        if p.blamed is not None:
            assert p.blamed == (COORDINATOR if i == sender else sender), (i, p.error)
    if net.coord.blamed is not None:
        assert isinstance(net.coord.error, FaultyParticipantError) and net.coord.blamed == sender


@pytest.mark.parametrize("field_name", ["magic", "version", "kind", "session", "sender", "recipient"])
def test_corrupt_header_is_rejected_and_retransmit_recovers(field_name: str) -> None:
    offset = {"magic": 0, "version": 4, "kind": 5, "session": 10, "sender": 41, "recipient": 45}[field_name]
    net = Net.create()
    net.start()
    net.run(tamper=lambda k, _t, raw: [_flip(raw, offset)] if k == 2 else [raw])
    target, raw = net.delivered[1]
    receiver = net.coord if target == COORDINATOR else net.parts[target]
    assert len(receiver.rejected) == 1
    rej = receiver.rejected[0]
    if field_name in ("magic", "version"):
        assert rej.sender is None
    elif field_name != "sender":
        assert rej.sender == Message.from_bytes(raw).sender
    assert all(p.phase != Phase.FAILED for p in [*net.parts, net.coord])
    for _ in range(3):
        net.retransmit_all()
        net.run()
    assert net.coord.phase == Phase.CONFIRMED
    assert all(p.phase == Phase.CONFIRMED for p in net.parts)


def test_equivocating_participant_is_rejected() -> None:
    net = Net.create()
    net.start()
    other = participant_init(
        _det("host0", 1), net.parts[1].params, random=_det("other", 1), aux_rand=_det("x", 1)
    )
    _, out = participant_round(other, [])
    net.run()
    net.coord, extra = coordinator_round(net.coord, out)  # a second, different PMSG1 from participant 1
    assert extra == []
    assert [(r.sender, r.kind) for r in net.coord.rejected] == [(1, Kind.PMSG1)]
    assert "equivocation" in net.coord.rejected[0].reason
    assert net.coord.phase == Phase.CONFIRMED


def test_participant_may_not_speak_for_the_coordinator() -> None:
    net = full_run()
    p0 = net.parts[0]
    forged = Message(p0.session_id, Kind.CMSG2, 2, BROADCAST, b"\x00" * 64).to_bytes()
    p0b, out = participant_round(p0, [forged])
    assert out == [] and p0b.rejected[-1].sender == 2 and p0b.phase == Phase.CONFIRMED
    wrong_session = Message(b"\x01" * 32, Kind.PMSG2, 0, COORDINATOR, b"\x00" * 64).to_bytes()
    c, out = coordinator_round(net.coord, [wrong_session])
    assert out == [] and c.rejected[-1].reason == "wrong session"
    unknown_sender = Message(net.coord.session_id, Kind.PMSG2, 9, COORDINATOR, b"\x00" * 64).to_bytes()
    c, out = coordinator_round(c, [unknown_sender])
    assert c.rejected[-1].sender == 9


def test_malicious_share_triggers_investigation_through_the_bus() -> None:
    """Participant 2 sends participant 0 a bad encrypted share: 0 asks for an investigation and names 2."""
    net = Net.create()
    t, n = net.coord.params.t, len(net.parts)

    def tamper(_k: int, target: Party, raw: bytes) -> list[bytes]:
        m = Message.from_bytes(raw)
        if m.kind == Kind.PMSG1 and m.sender == 2 and target == COORDINATOR:
            pm = chilldkg.ParticipantMsg1.from_bytes(m.payload, t, n)
            pm.enc_pmsg.enc_shares[0] = (pm.enc_pmsg.enc_shares[0] + 1) % chilldkg.N
            return [m._replace(payload=pm.to_bytes()).to_bytes()]
        return [raw]

    net.start()
    net.run(tamper=tamper)
    p0 = net.parts[0]
    assert p0.phase == Phase.FAILED and p0.blamed == 2
    assert isinstance(p0.error, FaultyParticipantOrCoordinatorError)
    assert net.coord.investigated == frozenset({0})
    assert all(p.phase == Phase.AWAIT_CMSG2 for p in net.parts[1:])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(junk=st.lists(st.binary(max_size=200), max_size=5), prefix=st.booleans())
def test_junk_never_crashes(junk: list[bytes], prefix: bool) -> None:
    net = NET_FOR_JUNK
    if prefix:  # give the junk a plausible header so it reaches the payload checks
        junk = [Message(net.coord.session_id, Kind.PMSG1, 0, COORDINATOR, j).to_bytes() for j in junk]
    c, _ = coordinator_round(coordinator_init(net.coord.params), junk)
    assert c.phase in (Phase.AWAIT_PMSG1, Phase.FAILED)
    p, _ = participant_round(net.parts[0], junk)
    assert p.phase == Phase.CONFIRMED


NET_FOR_JUNK = full_run(3, 2, seed=7)
