"""Certificate rotation under load: ``mpcw certs rotate --revoke`` on a running cluster while spends are
requested; every spend ends confirmed and every invariant of ``tests.suites.invariants`` holds. Afterwards
the old certificates, and an expired one, are refused by the broker; the new ones are accepted."""

from __future__ import annotations

import asyncio
import datetime as dt
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import nats.errors
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

import nats
from loadtest.chaos import ROOT, Load, cluster_json, mpcw, run_load, start_cluster, stop_cluster
from services.runtime.pki_files import pki_dir, private_pki_dir
from services.runtime.secrets_dir import read_secret
from tests.suites.invariants import check_invariants, wait_terminal

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

SPENDS = 24
DURATION_S = 16.0


def _copy_identity(d: Path, name: str, to: Path) -> tuple[Path, Path]:
    crt, key = to / f"{name}.crt", to / f"{name}.key"
    shutil.copy(pki_dir(d) / f"{name}.crt", crt)
    key.write_bytes(read_secret(private_pki_dir(d) / f"{name}.key", "test copy"))
    return crt, key


async def _connects(d: Path, crt: Path, key: Path) -> str:
    """``ok`` when the broker accepts a client with this certificate, else why not."""
    ctx = ssl.create_default_context(cafile=str(pki_dir(d) / "ca.crt"))
    ctx.load_cert_chain(str(crt), str(key))
    url = cluster_json(d)["nats_url"].split(",")[0]
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(repr(exc))

    try:
        nc = await nats.connect(
            url,
            tls=ctx,
            allow_reconnect=False,
            connect_timeout=5,
            max_reconnect_attempts=0,
            error_cb=on_error,
        )
    except (nats.errors.Error, OSError, ssl.SSLError, TimeoutError) as exc:
        return f"refused: {exc!r} {errors}"
    await nc.close()
    return "ok"


def _expired_cert(d: Path, name: str, to: Path) -> tuple[Path, Path]:
    """A certificate for ``name`` with the current subject, signed by the cluster's CA, expired yesterday."""
    ca_cert = x509.load_pem_x509_certificate((pki_dir(d) / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key(read_secret(private_pki_dir(d) / "ca.key", "test"), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    current = x509.load_pem_x509_certificate((pki_dir(d) / f"{name}.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(current.subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == name
    crt, kf = to / f"{name}-expired.crt", to / f"{name}-expired.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kf.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return crt, kf


def test_rotate_under_load_then_old_and_expired_certificates_are_refused(tmp_path: Path) -> None:
    d = tmp_path / "cluster"
    d.mkdir()
    kept = tmp_path / "kept"
    kept.mkdir()
    try:
        start_cluster(d, nats_servers=1, coins=SPENDS + 6)
        old_node = _copy_identity(d, "node-3", kept)
        old_admin = _copy_identity(d, "admin", kept)
        assert asyncio.run(_connects(d, *old_node)) == "ok"

        async def run() -> tuple[Load, subprocess.CompletedProcess[str]]:
            load = Load()
            stop = asyncio.Event()
            load_task = asyncio.create_task(run_load(d, load, SPENDS / DURATION_S, 6, DURATION_S, stop))
            await asyncio.sleep(3.0)  # spends in flight when the rotation starts
            rotate = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "services.mpcw", "--data-dir", str(d), "certs", "rotate", "--revoke"],
                cwd=ROOT, capture_output=True, text=True, timeout=480, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            await load_task
            return load, rotate

        load, rotate = asyncio.run(run())
        print(rotate.stdout, rotate.stderr)
        assert rotate.returncode == 0, rotate.stdout + rotate.stderr
        assert "old certificates refused" in rotate.stdout and "restarting signer-node-3" in rotate.stdout
        assert "restarting nats-server 1/1" in rotate.stdout
        assert len(load.accepted) == SPENDS and not load.refused and not load.gave_up, load

        open_ids = asyncio.run(wait_terminal(d, set(load.accepted), 150.0))
        assert not open_ids, open_ids
        report = asyncio.run(check_invariants(d, load.accepted, bound_s=240.0))
        print(report.markdown())
        assert report.ok, report.markdown()
        assert report.row("confirmed").value == str(SPENDS), report.markdown()

        # the old certificates are refused, the new ones accepted; an expired one is refused too
        for crt, key in (old_node, old_admin):
            assert asyncio.run(_connects(d, crt, key)).startswith("refused"), crt.name
        new_node = _copy_identity(d, "node-3", tmp_path)
        assert asyncio.run(_connects(d, *new_node)) == "ok"
        assert asyncio.run(_connects(d, *_expired_cert(d, "node-3", kept))).startswith("refused")
        status = mpcw(d, "certs", "status").stdout
        assert "node-3       epoch 1" in status and "rotation in progress" not in status, status
        assert "cluster ready" in mpcw(d, "status").stdout
    finally:
        stop_cluster(d)
