"""The wire contract in msgspec's own terms: every bus message is a member of one tagged union, its closed
vocabularies are ``Literal`` types checked when it is decoded, and what the code before the union wrote
(``tests/unit/fixtures/wire_v1_envelopes.json``, ``kv_v1_values.json``) still verifies and decodes."""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

from schemas import envelope as E
from schemas import kv as K
from schemas import messages as m
from schemas import rest as R
from schemas.kinds import REJECTION_KINDS, VIOLATION_KINDS, TxState
from schemas.wire import BusMessage, UnknownType, check_registry, decode_payload, registry_of, tag_of
from services.runtime.bus import Bus
from services.runtime.seal import EnvelopeError, seal, verify_envelope
from tests.unit.service_fakes import fake_identities, identity_keys
from tests.unit.wire_samples import SENDERS, samples

FIXTURES = Path(__file__).with_name("fixtures")
IDS = fake_identities(SENDERS)
UNION = msgspec.msgpack.Decoder(m.AnyMessage)


def make_bus(identity: str) -> Bus:
    """A bus that never connects: enough for ``open`` and ``_receive``'s verify-and-decode step."""
    cfg = SimpleNamespace(identity=identity, name=f"test-{identity}", extra={})
    return Bus(cfg, SimpleNamespace(jetstream=lambda: None), identity_keys(identity), IDS, m.REGISTRY)  # type: ignore[arg-type]


def sealed(sender: str, subject: str, type_name: str, payload: bytes, to: str | None = None) -> bytes:
    env = seal(
        identity_keys(sender), IDS, subject=subject, type_name=type_name, payload=payload, msg_id="t", to=to
    )
    return E.encode(env)


# ---- the union ---------------------------------------------------------------------------------------------


def test_every_message_type_has_a_sample_and_the_registry_is_the_union() -> None:
    members = typing.get_args(m.AnyMessage)
    assert {type(msg) for _, _, msg in samples()} == set(members)
    assert m.REGISTRY == {cls.__name__: cls for cls in members}
    assert all(issubclass(cls, BusMessage) and tag_of(cls) == cls.__name__ for cls in members)
    assert m.REGISTRY["BusRejection"] is E.BusRejection


@pytest.mark.parametrize("msg", [msg for _, _, msg in samples()], ids=lambda msg: type(msg).__name__)
def test_every_message_round_trips_through_the_union(msg: Any) -> None:
    raw = msgspec.msgpack.encode(msg)
    assert msgspec.msgpack.decode(raw)["type"] == type(msg).__name__  # the payload carries its own tag
    assert UNION.decode(raw) == msg
    assert type(UNION.decode(raw)) is type(msg)
    assert decode_payload(m.REGISTRY, type(msg).__name__, raw) == msg


def test_shared_options_hold_for_every_message() -> None:
    for cls in typing.get_args(m.AnyMessage):
        cfg = cls.__struct_config__
        assert cfg.frozen and cfg.forbid_unknown_fields and cfg.tag_field == "type", cls
        kinds = {p.kind for p in inspect.signature(cls).parameters.values()}
        assert kinds == {inspect.Parameter.KEYWORD_ONLY}, cls
    vote = m.Vote(tx_id="t", node="node-1", approve=True)
    with pytest.raises(AttributeError):
        vote.approve = False  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.Vote("t", "node-1", True)  # type: ignore[call-arg]  # keyword-only
    raw = msgspec.msgpack.encode({**msgspec.to_builtins(vote), "extra": 1})
    with pytest.raises(msgspec.ValidationError, match="unknown field `extra`"):
        UNION.decode(raw)


def test_an_unknown_tag_is_refused() -> None:
    raw = msgspec.msgpack.encode({"type": "TxStolen", "tx_id": "t"})
    with pytest.raises(msgspec.ValidationError, match=r"Invalid value 'TxStolen' - at `\$.type`"):
        UNION.decode(raw)
    with pytest.raises(UnknownType, match="TxStolen"):
        decode_payload(m.REGISTRY, "TxStolen", raw)


def test_a_payload_whose_tag_names_another_type_than_its_envelope_is_refused() -> None:
    vote = msgspec.msgpack.encode(m.Vote(tx_id="t", node="node-1", approve=True))
    with pytest.raises(msgspec.ValidationError, match=r"Invalid value 'Vote' - at `\$.type`"):
        decode_payload(m.REGISTRY, "TxVoting", vote)


@pytest.mark.parametrize(
    ("msg", "field_name", "bad"),
    [
        (
            m.Violation(offender="node-3", kind="equivocation", detail="d", reporter="consensus"),
            "kind",
            "made-up",
        ),
        (samples()[0][2], "scheme", "ecdsa"),
        (samples()[15][2], "scheme", "musig"),
        (samples()[-1][2], "kind", "rude"),
    ],
    ids=["violation-kind", "tx-scheme", "dkg-scheme", "rejection-kind"],
)
def test_a_value_outside_its_literal_is_refused(msg: Any, field_name: str, bad: str) -> None:
    raw = msgspec.msgpack.encode({**msgspec.to_builtins(msg), field_name: bad})
    with pytest.raises(msgspec.ValidationError, match=rf"Invalid enum value '{bad}' - at `\$.{field_name}`"):
        UNION.decode(raw)
    with pytest.raises(msgspec.ValidationError, match=rf"at `\$.{field_name}`"):
        decode_payload(m.REGISTRY, type(msg).__name__, raw)


def test_the_vocabularies_cover_what_the_services_write() -> None:
    assert {"equivocation", "bad-vote", "sighash-mismatch", "invalid-partial-sig", "bad-event"} <= set(
        VIOLATION_KINDS
    )
    assert {"malformed", "bad-payload", "unknown-type", "poison", "stale", "key-record-unproven"} <= set(
        REJECTION_KINDS
    )
    assert E.REJECTION_KINDS == REJECTION_KINDS


def test_registries_are_derived_never_mislabelled() -> None:
    class Vote(BusMessage, frozen=True):  # another class travelling under an existing name
        x: int

    with pytest.raises(ValueError, match="two message types named 'Vote'"):
        registry_of(m.Vote | Vote)
    with pytest.raises(ValueError, match="travels as 'Vote'"):
        check_registry({"TxVoting": m.Vote})
    with pytest.raises(ValueError, match="travels as"):
        Bus(
            SimpleNamespace(identity="node-1", name="t", extra={}),  # type: ignore[arg-type]
            SimpleNamespace(jetstream=lambda: None),  # type: ignore[arg-type]
            identity_keys("node-1"),
            IDS,
            {"Alias": m.Vote},
        )


# ---- on the bus --------------------------------------------------------------------------------------------


def test_bus_open_refuses_an_unknown_type_and_a_bad_literal_naming_the_verified_sender() -> None:
    bus = make_bus("monitor")
    raw = sealed(
        "consensus", "node.violation.node-3", "TxStolen", msgspec.msgpack.encode({"type": "TxStolen"})
    )
    with pytest.raises(EnvelopeError) as unknown:
        bus.open(raw, "node.violation.node-3")
    assert (unknown.value.kind, unknown.value.sender, unknown.value.verified) == (
        "unknown-type",
        "consensus",
        True,
    )

    bad = {**msgspec.to_builtins(samples()[13][2]), "kind": "made-up"}
    raw = sealed("consensus", "node.violation.node-3", "Violation", msgspec.msgpack.encode(bad))
    with pytest.raises(EnvelopeError) as payload:
        bus.open(raw, "node.violation.node-3")
    assert (payload.value.kind, payload.value.sender, payload.value.verified) == (
        "bad-payload",
        "consensus",
        True,
    )
    assert "Violation" in payload.value.detail and "$.kind" in payload.value.detail


@dataclass
class FakeMsg:
    """What ``Bus._receive`` reads of a JetStream delivery, and whether it was terminated."""

    data: bytes
    subject: str
    terminated: bool = False
    metadata: Any = field(
        default_factory=lambda: SimpleNamespace(
            sequence=SimpleNamespace(stream=7), stream="CONTROL", num_delivered=1
        )
    )

    async def term(self) -> None:
        self.terminated = True


async def test_a_bad_payload_on_the_bus_is_dropped_and_reported_as_before() -> None:
    bus = make_bus("monitor")
    reports: list[tuple[Any, ...]] = []

    async def report(*args: Any) -> None:
        reports.append(args)

    bus.report = report  # type: ignore[method-assign, assignment]
    bad = {**msgspec.to_builtins(samples()[13][2]), "kind": "made-up"}
    msg = FakeMsg(
        sealed("consensus", "node.violation.node-3", "Violation", msgspec.msgpack.encode(bad)),
        "node.violation.node-3",
    )
    assert await bus._receive(msg, bus.registry) is None  # type: ignore[arg-type]
    assert msg.terminated
    [(offender, kind, detail, subject, stream, seq, raw)] = reports
    assert (offender, kind, subject, stream, seq, raw) == (
        "consensus",
        "bad-payload",
        "node.violation.node-3",
        "CONTROL",
        7,
        msg.data,
    )
    assert "$.kind" in detail

    good = FakeMsg(
        sealed("consensus", "node.violation.node-3", "Violation", msgspec.msgpack.encode(samples()[13][2])),
        "node.violation.node-3",
    )
    rec = await bus._receive(good, bus.registry)  # type: ignore[arg-type]
    assert rec is not None and rec.payload == samples()[13][2] and not good.terminated


# ---- what the old code wrote -------------------------------------------------------------------------------


def _fixtures() -> list[dict[str, str]]:
    entries: list[dict[str, str]] = json.loads((FIXTURES / "wire_v1_envelopes.json").read_text())
    return entries


ADDED_AFTER_V1 = {"NodeUnban"}  # message types new since the fixtures were written: no old envelope exists


def test_the_fixtures_cover_every_message_type() -> None:
    in_v1 = [type(msg).__name__ for _, _, msg in samples() if type(msg).__name__ not in ADDED_AFTER_V1]
    assert [e["type"] for e in _fixtures()] == in_v1


@pytest.mark.parametrize("entry", _fixtures(), ids=lambda e: e["type"])
def test_envelopes_written_before_the_union_verify_and_decode(entry: dict[str, str]) -> None:
    raw = bytes.fromhex(entry["envelope_hex"])
    env = verify_envelope(raw, IDS)  # the signature over the unchanged signed bytes
    assert E.encode(env) == raw  # the envelope's wire format is unchanged, byte for byte
    assert env.type == entry["type"] and env.sender == entry["sender"] and env.to == entry["to"]
    old_payload = bytes.fromhex(entry["payload_hex"])
    assert "type" not in msgspec.msgpack.decode(old_payload)  # written without a tag
    [expected] = [msg for subject, _, msg in samples() if subject == entry["subject"]]
    # a receiver (the recipient, for the encrypted ones) opens and decodes it as the old code did
    receiver = entry["to"] or "monitor"
    got_env, got = make_bus(receiver).open(raw, entry["subject"])
    assert got_env == env and got == expected
    assert decode_payload(m.REGISTRY, env.type, old_payload) == expected
    # the new code writes the same fields plus the tag, and fields added since only at their defaults
    new_fields = msgspec.msgpack.decode(msgspec.msgpack.encode(expected))
    old_fields = msgspec.msgpack.decode(old_payload)
    added = {k: v for k, v in new_fields.items() if k not in old_fields and k != "type"}
    defaults = {f.encode_name: f.default for f in msgspec.structs.fields(type(expected))}
    assert all(defaults.get(k, msgspec.NODEFAULT) == v for k, v in added.items()), added
    assert {k: v for k, v in new_fields.items() if k not in added} == {"type": env.type, **old_fields}


def test_kv_values_and_the_policy_written_before_the_union_decode() -> None:
    types: dict[str, type[msgspec.Struct]] = {
        "RoundRecord": K.RoundRecord,
        "FinalRecord": K.FinalRecord,
        "DkgRequest": K.DkgRequest,
        "KeyRecord": K.KeyRecord,
        "Policy": R.Policy,
    }
    entries = json.loads((FIXTURES / "kv_v1_values.json").read_text())
    assert len(entries) == 8
    for e in entries:
        raw = bytes.fromhex(e["value_hex"])
        value = msgspec.msgpack.decode(raw, type=types[e["type"]])
        again = msgspec.msgpack.encode(value)
        if e["type"] == "RoundRecord":
            # a round gained ``final`` (core.round: the outcome it was closed with), None on old rounds
            assert msgspec.msgpack.decode(again) == {**msgspec.msgpack.decode(raw), "final": None}
        else:
            assert again == raw  # KV values keep their encoding: no tag there
    key = msgspec.msgpack.decode(bytes.fromhex(entries[6]["value_hex"]), type=K.KeyRecord)
    assert key.scheme == "frost"
    bad = msgspec.msgpack.encode({**msgspec.to_builtins(key), "scheme": "rsa"})
    with pytest.raises(msgspec.ValidationError, match=r"at `\$.scheme`"):
        msgspec.msgpack.decode(bad, type=K.KeyRecord)


def test_rest_bodies_keep_their_json_and_refuse_an_unknown_state_or_scheme() -> None:
    body = (
        b'{"id":"t1","state":"broadcast","recipient":"bcrt1q","amount_sats":5,'
        b'"timeline":[{"state":"pending","at_ms":1},{"state":"broadcast","at_ms":2}]}'
    )
    view = msgspec.json.decode(body, type=R.TransactionView)
    assert view.state is TxState.BROADCAST and view.timeline[0].state is TxState.PENDING
    again = msgspec.json.decode(msgspec.json.encode(view))  # the same strings on the wire
    assert again["state"] == "broadcast" and [t["state"] for t in again["timeline"]] == [
        "pending",
        "broadcast",
    ]
    with pytest.raises(msgspec.ValidationError, match=r"Invalid enum value 'stolen' - at `\$.state`"):
        msgspec.json.decode(
            body.replace(b'"broadcast","recipient"', b'"stolen","recipient"'), type=R.TransactionView
        )
    spend = b'{"recipient":"bcrt1qexampleexample","amount_sats":1000,"scheme":"rsa"}'
    with pytest.raises(msgspec.ValidationError, match=r"at `\$.scheme`"):
        msgspec.json.decode(spend, type=R.SpendRequest)
