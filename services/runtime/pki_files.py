"""Where the PKI's files are: the public half under the data directory, the private half in the
cluster's secrets directory (:mod:`services.runtime.secrets_dir`; 0600 in 0700)::

    DIR/pki/ca.crt                        the CA (ECDSA P-256)
    DIR/pki/server.crt                    nats-server (CN/SAN localhost, 127.0.0.1)
    DIR/pki/<identity>.crt                TLS client certificate, subject ``CN=<identity>``
    DIR/pki/identities.json               {identity: {"ed25519": hex, "x25519": hex}}: public identity keys
    SECRETS/pki/ca.key, server.key, <identity>.key   PEM (nats-server and Python's ssl read the paths)
    SECRETS/identities/<identity>/ed25519.key, x25519.key

Every service reads its files through these; :func:`services.localcluster.pki.init_pki` creates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .secrets_dir import secrets_dir


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path


def pki_dir(data_dir: Path) -> Path:
    return data_dir / "pki"


def identities_path(data_dir: Path) -> Path:
    return pki_dir(data_dir) / "identities.json"


def private_pki_dir(data_dir: Path) -> Path:
    """Where the TLS private keys are: ``pki/`` of the cluster's secrets directory."""
    return secrets_dir(data_dir) / "pki"


def identity_key_dir(data_dir: Path, identity: str) -> Path:
    """Where ``identity``'s private identity keys are (in the cluster's secrets directory)."""
    return secrets_dir(data_dir) / "identities" / identity


def tls_files(data_dir: Path, identity: str) -> TlsFiles:
    d = pki_dir(data_dir)
    return TlsFiles(
        ca=d / "ca.crt", cert=d / f"{identity}.crt", key=private_pki_dir(data_dir) / f"{identity}.key"
    )


def server_tls_files(data_dir: Path) -> TlsFiles:
    d = pki_dir(data_dir)
    return TlsFiles(ca=d / "ca.crt", cert=d / "server.crt", key=private_pki_dir(data_dir) / "server.key")
