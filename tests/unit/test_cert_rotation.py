"""Certificate epochs (services.localcluster.pki) and what the broker accepts during and after a rotation
(services.runtime.natsconf): the pure parts of ``mpcw certs rotate``."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509

from schemas.names import all_identities
from services.localcluster.cert_rotation import (
    RotationRequest,
    identity_of,
    read_status,
    take_request,
    write_request,
)
from services.localcluster.pki import (
    cert_subjects,
    finish_rotation,
    init_pki,
    issue_rotated,
    read_epochs,
    subject_of,
)
from services.localcluster.supervisor import Proc
from services.runtime.natsconf import NatsPorts, render_server_config
from services.runtime.pki_files import pki_dir


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MPCW_SECRETS_DIR", str(tmp_path / "secrets"))
    d = tmp_path / "c"
    init_pki(d, 5)
    return d


def _subject(d: Path, name: str) -> str:
    return x509.load_pem_x509_certificate((pki_dir(d) / f"{name}.crt").read_bytes()).subject.rfc4514_string()


def test_epochs_accept_old_and_new_until_finished(pki: Path) -> None:
    everyone = all_identities(5)
    assert cert_subjects(pki, ["node-3"]) == {"node-3": ["CN=node-3"]}
    server_before = (pki_dir(pki) / "server.crt").read_bytes()
    assert issue_rotated(pki, ["node-3", "admin"], server=True) == {"node-3": 1, "admin": 1}
    assert (pki_dir(pki) / "server.crt").read_bytes() != server_before
    assert "OU=epoch-1" in _subject(pki, "node-3") and _subject(pki, "node-1") == "CN=node-1"
    during = cert_subjects(pki, everyone)
    assert during["node-3"] == ["CN=node-3,OU=epoch-1", "CN=node-3"] and during["node-1"] == ["CN=node-1"]
    # an interrupted rotation run again keeps accepting the oldest certificate still in use
    issue_rotated(pki, ["node-3"], server=False)
    assert cert_subjects(pki, ["node-3"])["node-3"] == ["CN=node-3,OU=epoch-2", "CN=node-3"]
    assert finish_rotation(pki) == ["admin", "node-3"]
    after = cert_subjects(pki, everyone)
    assert after["node-3"] == [subject_of("node-3", 2)] and after["admin"] == ["CN=admin,OU=epoch-1"]
    assert read_epochs(pki)["previous"] == {}


def test_the_broker_config_has_one_user_per_accepted_subject(pki: Path) -> None:
    issue_rotated(pki, ["node-3"], server=False)
    subjects = cert_subjects(pki, ["node-3", "node-1"])
    conf = render_server_config(
        identities=["node-3", "node-1"],
        ports=NatsPorts(1, 2),
        store_dir=pki / "store",
        ca_file=pki / "ca.crt",
        server_cert=pki / "s.crt",
        server_key=pki / "s.key",
        subjects=subjects,
    )
    assert conf.count('user: "CN=node-3,OU=epoch-1"') == 1 and conf.count('user: "CN=node-3"') == 1
    assert conf.count('user: "CN=node-1"') == 1
    # both users of node-3 carry the same rights
    blocks = [b for b in conf.split("{ user: ")[1:] if b.startswith('"CN=node-3')]
    rights = {b[b.index("permissions") :] for b in blocks}
    assert len(blocks) == 2 and len(rights) == 1


def test_requests_and_identities(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert take_request(run) is None
    write_request(run, RotationRequest(id="abc", identities=["node-2"], revoke=True))
    req = take_request(run)
    assert req is not None and req.identities == ["node-2"] and req.revoke and req.server
    assert take_request(run) is None  # taken once
    (run / "rotation.request").write_text("{not json")
    assert take_request(run) is None
    st = read_status(run)
    assert st is not None and st.state == "failed" and "malformed" in st.error
    assert (
        identity_of(Proc(name="signer-node-4", module="services.signer", args=["--identity", "node-4"]))
        == "node-4"
    )
    assert identity_of(Proc(name="intake", module="services.intake", args=[])) == "intake"
