"""JSON log lines: the direct path of a service's loggers (straight to the descriptor) and the ``logging``
path of other libraries write the same format; secret-looking fields are redacted, bytes are shown by
length (in lists too), the level filters, an exception is its type and message only."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

import services.runtime.logging as L


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    L._sink = None
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_lines_from_both_paths(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "svc.log"
    with path.open("w") as stream:
        log = L.setup_logging("signer-node-1", "INFO", stream)
        assert L._sink is not None  # a file has a descriptor: the direct path
        log.info("vote", tx_id="t1", nonce_sk=b"\x01" * 32, psig=b"\x02" * 32, approve=True, n=[1, b"x"])
        log.debug("not shown")
        logging.getLogger("sanic.error").warning("from %s", "a library")
        try:
            raise RuntimeError("it broke")
        except RuntimeError:
            log.exception("failed", secret_share="abc")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["msg"] for x in lines] == ["vote", "from a library", "failed"]
    vote, lib, failed = lines
    assert vote["level"] == "info" and vote["service"] == "signer-node-1" and isinstance(vote["ts"], float)
    assert vote["fields"] == {
        "tx_id": "t1", "nonce_sk": "[redacted]", "psig": "<32 bytes>", "approve": True, "n": [1, "<1 bytes>"],
    }  # fmt: skip
    assert lib["level"] == "warning" and lib["service"] == "signer-node-1" and lib["fields"] == {}
    assert failed["error"] == "RuntimeError: it broke" and failed["fields"] == {"secret_share": "[redacted]"}
    assert "abc" not in path.read_text()


def test_without_set_up_lines_go_through_logging(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    L.Logger("consensus").info("round opened", tx_id="t2")
    [rec] = [r for r in caplog.records if r.getMessage() == "round opened"]
    assert rec.fields == {"tx_id": "t2"}  # type: ignore[attr-defined]


SECRET = bytes(range(1, 33))
SECRET_NAMES = [
    "key", "sk", "kek", "hostkey", "secnonce", "seed", "passphrase", "api_key", "apiKey", "share",
    "secshare", "secret", "password", "token", "seckey", "deckey", "private_key", "signing_key",
    "nonce_sk", "host_seckey", "identity_seed", "tls_key", "x25519_key", "keys", "mnemonic",
]  # fmt: skip
PUBLIC_NAMES = [
    "key_id",
    "tx_id",
    "pubkey",
    "threshold_pubkey",
    "nonce_id",
    "kv_entry",
    "subject",
    "key_count",
]


def _line(fields: dict[str, object]) -> tuple[dict[str, object], bytes]:
    raw = L._line(0.0, "info", "svc", "m", fields, None)
    return json.loads(raw)["fields"], raw


@pytest.mark.parametrize("name", SECRET_NAMES)
@pytest.mark.parametrize(
    "value", [SECRET.hex(), SECRET.hex().upper(), SECRET, bytearray(SECRET), int.from_bytes(SECRET, "big")]
)
def test_secret_names_are_redacted_whatever_the_value(name: str, value: object) -> None:
    assert L.is_secret_name(name)
    fields, raw = _line({name: value, "tx_id": "t1"})
    assert fields == {name: "[redacted]", "tx_id": "t1"}
    for needle in (SECRET.hex().encode(), SECRET.hex().upper().encode(), str(int.from_bytes(SECRET, "big"))):
        assert (needle.encode() if isinstance(needle, str) else needle) not in raw


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_redacted_in_nested_structures(name: str) -> None:
    fields, raw = _line({"detail": {"node": "node-1", "inner": [{name: SECRET.hex()}], name: SECRET}})
    assert fields == {"detail": {"node": "node-1", "inner": [{name: "[redacted]"}], name: "[redacted]"}}
    assert SECRET.hex().encode() not in raw


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_public_names_are_logged(name: str) -> None:
    assert not L.is_secret_name(name)
    assert _line({name: "v"})[0] == {name: "v"}


def test_bytes_are_logged_by_length_at_any_depth() -> None:
    fields, raw = _line({"psig": SECRET, "n": [SECRET, {"x": (SECRET,)}], "d": {"a": {"b": {"c": {"d": 1}}}}})
    assert fields["psig"] == "<32 bytes>" and fields["n"] == ["<32 bytes>", {"x": ["<32 bytes>"]}]
    assert fields["d"] == {"a": {"b": {"c": "<nested>"}}}
    assert SECRET not in raw and SECRET.hex().encode() not in raw
