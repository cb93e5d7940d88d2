"""The base structs of the wire contract, and the tagged union every bus message belongs to.

Theory of operation
-------------------
Every struct on the bus derives from :class:`WireStruct` (frozen, keyword-only, unknown fields refused).
Every bus *message* derives from :class:`BusMessage`, a msgspec tagged struct: its tag is its class name,
written under ``type`` in its msgpack payload, so a union of message types (``schemas.messages.AnyMessage``)
decodes to the right class by msgspec alone, and a wrong or unknown tag is refused by msgspec.

The envelope (``schemas.envelope``) carries the same name in its own ``type`` field, signed and bound into
the encryption's associated data. That field is the one a receiver dispatches on: it is authenticated
before the payload is even opened, and payloads written before the tag existed (in the streams, in quorum
certificates, in stored requests) have no tag of their own. :func:`decode_payload` looks the class up in a
registry derived from the union (:func:`registry_of`, never written by hand) and decodes with a msgspec
decoder of that class: it accepts a payload without a tag and refuses one whose tag names another class
(``$.type``). Old readers do not know the tag: an older version refuses payloads this one writes.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import msgspec


class WireStruct(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The options every struct on the wire shares: immutable, keyword-only, unknown fields refused.

    A subclass inherits ``forbid_unknown_fields`` (and the tag of :class:`BusMessage`) but says
    ``frozen=True, kw_only=True`` again: msgspec applies ``kw_only`` to the fields a class declares itself,
    and mypy's dataclass view wants ``frozen`` restated."""


class BusMessage(WireStruct, frozen=True, tag_field="type", tag=True):
    """A message that travels on the bus in a signed envelope; its tag (``type``) is its class name."""


class UnknownType(LookupError):
    """A payload type the decoder does not know."""

    def __init__(self, type_name: str) -> None:
        super().__init__(f"type {type_name[:64]!r} not in registry")
        self.type_name = type_name


def tag_of(cls: type[msgspec.Struct]) -> str:
    """The name a struct travels under: its msgspec tag, the class name for an untagged struct."""
    tag = cls.__struct_config__.tag
    return tag if isinstance(tag, str) else cls.__name__


def registry_of(union: Any) -> dict[str, type[msgspec.Struct]]:
    """``tag -> class`` of a union of structs (or of one struct). msgspec checks that the union is a valid
    tagged union (distinct tags, one tag field) when every member is tagged."""
    members: tuple[type[msgspec.Struct], ...] = typing.get_args(union) or (union,)
    out: dict[str, type[msgspec.Struct]] = {}
    for cls in members:
        name = tag_of(cls)
        if name in out:
            raise ValueError(f"two message types named {name!r}")
        out[name] = cls
    if len(members) > 1 and all(isinstance(c.__struct_config__.tag, str) for c in members):
        msgspec.msgpack.Decoder(union)  # raises TypeError on an invalid tagged union
    return out


def check_registry(registry: Mapping[str, type[msgspec.Struct]]) -> None:
    """Every class is registered under the name it travels as; ValueError otherwise."""
    for name, cls in registry.items():
        if name != tag_of(cls):
            raise ValueError(f"{cls.__name__} registered as {name!r}, but it travels as {tag_of(cls)!r}")


_DECODERS: dict[type[msgspec.Struct], msgspec.msgpack.Decoder[Any]] = {}


def decode_payload(registry: Mapping[str, type[msgspec.Struct]], type_name: str, payload: bytes) -> Any:
    """Decode ``payload`` as the message type named ``type_name`` (the envelope's ``type``) with one cached
    msgspec decoder per class. Raises :class:`UnknownType`, or ``msgspec.DecodeError``/``ValidationError``
    when the payload is not a valid message of that type (a tag naming another type, a missing or unknown
    field, a value outside its ``Literal``)."""
    cls = registry.get(type_name)
    if cls is None:
        raise UnknownType(type_name)
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.msgpack.Decoder(cls)
    return decoder.decode(payload)
