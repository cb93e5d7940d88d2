"""The local PKI: a CA, TLS client certificates per identity, a server certificate, node identity keys.

Public half, under the data directory (directories 0700, files 0600: the owner's business)::

    pki/ca.crt                        the CA (ECDSA P-256)
    pki/server.crt                    nats-server (CN/SAN localhost, 127.0.0.1; also clientAuth for routes)
    pki/<identity>.crt                TLS client certificate, subject ``CN=<identity>`` (nats verify_and_map)
    pki/identities.json               {identity: {"ed25519": hex, "x25519": hex}}: public identity keys

Private half, in the cluster's secrets directory (:mod:`services.runtime.secrets_dir`; 0600 in 0700),
never in the data directory (where each file is: :mod:`services.runtime.pki_files`)::

    pki/ca.key, pki/server.key, pki/<identity>.key   PEM (nats-server and Python's ssl read the paths)
    identities/<identity>/ed25519.key                raw 32-byte Ed25519 seed (signs envelopes)
    identities/<identity>/x25519.key                 raw 32-byte X25519 private key (point-to-point)

``init_pki`` is idempotent: it keeps what exists and adds missing identities (e.g. more nodes); it first
moves private keys an earlier version left in the data directory into the secrets directory.

Rotation (``mpcw certs rotate``, run by the supervisor: :mod:`services.localcluster.cert_rotation`): each
identity's TLS certificate has an *epoch*, kept in ``pki/epochs.json``. Epoch 0 is the certificate
``init_pki`` issues (subject ``CN=<identity>``); epoch ``e >= 1`` has subject ``CN=<identity>,OU=epoch-<e>``.
nats-server maps a client certificate to a user by its whole subject (``verify_and_map``), so the broker
accepts exactly the subjects :func:`cert_subjects` lists: the current epoch, and while a rotation runs
the previous one. :func:`issue_rotated` issues the next epoch (the previous stays accepted until
:func:`finish_rotation`); after that, the old certificate is refused: rotation is also revocation.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, x25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from schemas.names import all_identities
from services.runtime.pki_files import identities_path, identity_key_dir, pki_dir, private_pki_dir
from services.runtime.secrets_dir import (
    move_legacy_secrets,
    private_dir,
    read_secret,
    secrets_dir,
    write_private,
)

CA_NAME = "mpcw-ca"
VALID_DAYS = 3650


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(cn: str, epoch: int = 0) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if epoch:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"epoch-{epoch}"))
    return x509.Name(attrs)


def _load_ca(d: Path, keys: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key(read_secret(keys / "ca.key", "the CA's key"), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def _make_ca(d: Path, keys: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(keys / "ca.key", _key_pem(key))
    write_private(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _issue(
    d: Path,
    keys: Path,
    stem: str,
    cn: str,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
    epoch: int = 0,
    valid_days: int = VALID_DAYS,
) -> None:
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, epoch))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(keys / f"{stem}.key", _key_pem(key))
    write_private(d / f"{stem}.crt", cert.public_bytes(serialization.Encoding.PEM))


def _raw_public(key: ed25519.Ed25519PublicKey | x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _ensure_identity_keys(data_dir: Path, name: str) -> dict[str, str]:
    d = identity_key_dir(data_dir, name)
    ed_path, x_path = d / "ed25519.key", d / "x25519.key"
    if not ed_path.exists():
        write_private(
            ed_path,
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ),
        )
    if not x_path.exists():
        write_private(
            x_path,
            x25519.X25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            ),
        )
    ed = ed25519.Ed25519PrivateKey.from_private_bytes(ed_path.read_bytes())
    xk = x25519.X25519PrivateKey.from_private_bytes(x_path.read_bytes())
    return {"ed25519": _raw_public(ed.public_key()).hex(), "x25519": _raw_public(xk.public_key()).hex()}


def init_pki(data_dir: Path, nodes: int = 5, extra: tuple[str, ...] = ()) -> list[str]:
    """Create (or complete) the PKI for ``node-1..node-<nodes>``, the services and ``extra`` identities.

    Returns the identity names that were newly created.
    """
    if nodes < 1:
        raise ValueError("nodes must be >= 1")
    private_dir(data_dir)
    d = private_dir(pki_dir(data_dir))
    secrets_dir(data_dir, create=True)
    move_legacy_secrets(data_dir)
    keys = private_dir(private_pki_dir(data_dir))
    ca = _load_ca(d, keys) if (d / "ca.crt").exists() else _make_ca(d, keys)
    if not (d / "server.crt").exists() or not (keys / "server.key").exists():
        _issue(d, keys, "server", "localhost", ca, server=True)
    created: list[str] = []
    ids_file = identities_path(data_dir)
    public: dict[str, dict[str, str]] = json.loads(ids_file.read_text()) if ids_file.exists() else {}
    for name in [*all_identities(nodes), *extra]:
        if not (d / f"{name}.crt").exists() or not (keys / f"{name}.key").exists():
            _issue(d, keys, name, name, ca, server=False)
            created.append(name)
        public[name] = _ensure_identity_keys(data_dir, name)
    write_private(ids_file, (json.dumps(public, indent=2, sort_keys=True) + "\n").encode())
    return created


def pki_exists(data_dir: Path) -> bool:
    d = pki_dir(data_dir)
    return (d / "ca.crt").exists() and (d / "server.crt").exists() and identities_path(data_dir).exists()


# ---- rotation -----------------------------------------------------------------------------------------

SERVER = "server"  # the nats-server certificate (not an identity: no user, no subject to accept)


def _epochs_path(data_dir: Path) -> Path:
    return pki_dir(data_dir) / "epochs.json"


def read_epochs(data_dir: Path) -> dict[str, dict[str, int]]:
    """``{"current": {identity: epoch}, "previous": {identity: epoch}}`` (missing: epoch 0, none)."""
    path = _epochs_path(data_dir)
    if not path.exists():
        return {"current": {}, "previous": {}}
    data = json.loads(path.read_text())
    return {"current": dict(data.get("current", {})), "previous": dict(data.get("previous", {}))}


def _write_epochs(data_dir: Path, epochs: dict[str, dict[str, int]]) -> None:
    write_private(_epochs_path(data_dir), (json.dumps(epochs, indent=2, sort_keys=True) + "\n").encode())


def subject_of(identity: str, epoch: int) -> str:
    """The certificate subject nats-server maps to ``identity``'s user at ``epoch``."""
    return f"CN={identity}" if epoch == 0 else f"CN={identity},OU=epoch-{epoch}"


def cert_subjects(data_dir: Path, identities: list[str]) -> dict[str, list[str]]:
    """The subjects the broker accepts per identity: the current epoch, and the previous one while a
    rotation runs."""
    epochs = read_epochs(data_dir)
    out: dict[str, list[str]] = {}
    for name in identities:
        subjects = [subject_of(name, epochs["current"].get(name, 0))]
        if name in epochs["previous"]:
            subjects.append(subject_of(name, epochs["previous"][name]))
        out[name] = subjects
    return out


def issue_rotated(
    data_dir: Path, identities: list[str], *, server: bool, valid_days: int = VALID_DAYS
) -> dict[str, int]:
    """Issue the next epoch's certificate (and key) of each of ``identities`` and, with ``server``, a new
    server certificate; the previous epoch stays accepted (:func:`cert_subjects`) until
    :func:`finish_rotation`. Returns the new epochs. The epochs are recorded before the files are
    replaced, so a crash in between leaves both subjects accepted and the rotation can run again."""
    d = pki_dir(data_dir)
    keys = private_pki_dir(data_dir)
    ca = _load_ca(d, keys)
    epochs = read_epochs(data_dir)
    new: dict[str, int] = {}
    for name in identities:
        old = epochs["current"].get(name, 0)
        epochs["previous"].setdefault(name, old)  # an interrupted rotation keeps the oldest still in use
        new[name] = epochs["current"][name] = old + 1
    _write_epochs(data_dir, epochs)
    for name, epoch in new.items():
        _issue(d, keys, name, name, ca, server=False, epoch=epoch, valid_days=valid_days)
    if server:
        _issue(d, keys, SERVER, "localhost", ca, server=True, valid_days=valid_days)
    return new


def finish_rotation(data_dir: Path) -> list[str]:
    """Stop accepting the previous epochs; returns the identities whose old certificate is now refused."""
    epochs = read_epochs(data_dir)
    done = sorted(epochs["previous"])
    epochs["previous"] = {}
    _write_epochs(data_dir, epochs)
    return done


def cert_expiry(data_dir: Path, names: list[str]) -> dict[str, dt.datetime]:
    """When each certificate (identities, ``server``, ``ca``) stops being valid."""
    d = pki_dir(data_dir)
    out: dict[str, dt.datetime] = {}
    for name in [*names, SERVER, "ca"]:
        path = d / f"{name}.crt"
        if path.exists():
            out[name] = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
    return out
