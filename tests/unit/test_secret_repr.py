"""No secret in any ``repr``: share records, DKG outputs, investigation data, signing states, identity
keys. A ``repr`` reaches logs, tracebacks and assertion messages; each object is built around a known
secret and its ``repr`` (and ``str``, and inside a list) must not show it in any encoding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.localcluster.pki import init_pki
from services.runtime.seal import IdentityKeys
from services.runtime.secrets_dir import secrets_dir
from services.signer.keystore import ShareRecord
from tss.chilldkg import DKGOutput, encpedpop, simplpedpop
from tss.secp256k1 import G

SECRET = bytes(range(101, 133))
SECRET_INT = int.from_bytes(SECRET, "big")


def renderings(obj: Any) -> list[str]:
    return [repr(obj), str(obj), f"{obj}", repr([obj]), repr({"k": obj})]


def needles(secret: bytes) -> list[str]:
    return [secret.hex(), secret.hex().upper(), repr(secret)[2:-1], str(int.from_bytes(secret, "big"))]


def assert_hidden(obj: Any, secret: bytes = SECRET) -> None:
    for text in renderings(obj):
        for needle in needles(secret):
            assert needle not in text, (type(obj).__name__, text)


def share_record() -> ShareRecord:
    return ShareRecord(
        key_id="default", scheme="frost", index=0, secshare=SECRET, threshold_pubkey=b"\x02" * 33,
        pubshares=[b"\x03" * 33], chain_code=b"\x00" * 32, n=5, t=4,
    )  # fmt: skip


def simpl_investigation() -> simplpedpop.ParticipantInvestigationData:
    return simplpedpop.ParticipantInvestigationData(n=2, participant_id=0, secshare=SECRET_INT, pubshare=G)


OBJECTS: dict[str, Callable[[], Any]] = {
    "ShareRecord": share_record,
    "chilldkg.DKGOutput": lambda: DKGOutput(SECRET, b"\x02" * 33, [b"\x03" * 33]),
    "simplpedpop.DKGOutput": lambda: simplpedpop.DKGOutput(SECRET, b"\x02" * 33, [b"\x03" * 33]),
    "simplpedpop.ParticipantInvestigationData": simpl_investigation,
    "encpedpop.ParticipantInvestigationData": lambda: encpedpop.ParticipantInvestigationData(
        simpl_investigation(), enc_secshare=7, pads=[SECRET_INT]
    ),
}


@pytest.mark.parametrize("name", sorted(OBJECTS))
def test_repr_hides_the_secret(name: str) -> None:
    obj = OBJECTS[name]()
    assert_hidden(obj)
    assert type(obj).__name__ in repr(obj)


def test_identity_keys_repr_hides_the_private_keys(tmp_path: Path) -> None:
    init_pki(tmp_path, nodes=1)
    keys = IdentityKeys.load(tmp_path, "node-1")
    ed_seed = (secrets_dir(tmp_path) / "identities" / "node-1" / "ed25519.key").read_bytes()
    x_key = (secrets_dir(tmp_path) / "identities" / "node-1" / "x25519.key").read_bytes()
    for obj in (keys, keys.signing, keys.exchange):
        assert_hidden(obj, ed_seed)
        assert_hidden(obj, x_key)
