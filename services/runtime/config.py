"""Service configuration: ``DIR/cluster.json`` (written by ``mpcw up``) plus environment overrides.

Precedence: explicit arguments > environment (``MPCW_DATA_DIR``, ``MPCW_NATS_URL``, ``MPCW_DATABASE_URL``)
> ``cluster.json`` > defaults. TLS files come from the identity: ``DIR/pki/<identity>.crt`` and
``DIR/pki/ca.crt``, the private key from the cluster's secrets directory (``<secrets>/pki/<identity>.key``,
:mod:`services.runtime.secrets_dir`). ``network`` (``cluster.json``, default ``regtest``) is the Bitcoin
network; on ``mainnet`` a signer refuses to start without ``MPCW_NODE_PASSPHRASE``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from schemas.names import node_names

from .pki_files import identities_path, tls_files

DEFAULT_DATA_DIR = "~/.mpcw"
CLUSTER_FILE = "cluster.json"


def default_data_dir() -> Path:
    return Path(os.environ.get("MPCW_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()


@dataclass(frozen=True)
class ServiceConfig:
    identity: str
    data_dir: Path
    nats_url: str
    ca_file: Path
    cert_file: Path
    key_file: Path
    identities_file: Path
    database_url: str | None = None
    service: str = ""  # process name (``signer-node-3``); defaults to the identity
    metrics_port: int | None = None
    n: int = 5
    t: int = 4
    nodes: tuple[str, ...] = ()
    devchain_url: str | None = None
    esplora_url: str | None = None
    intake_url: str | None = None
    intake_port: int | None = None
    devchain_port: int | None = None
    network: str = "regtest"
    extra: dict[str, Any] = field(default_factory=dict)  # the rest of cluster.json, untouched

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def name(self) -> str:
        return self.service or self.identity

    def with_identity(self, identity: str, service: str | None = None) -> ServiceConfig:
        tls = tls_files(self.data_dir, identity)
        ports: dict[str, int] = self.extra.get("metrics_ports", {})
        svc = service or identity
        return replace(
            self,
            identity=identity,
            service=svc,
            ca_file=tls.ca,
            cert_file=tls.cert,
            key_file=tls.key,
            metrics_port=ports.get(svc, self.metrics_port if svc == self.name else None),
        )


def read_cluster(data_dir: Path) -> dict[str, Any]:
    path = data_dir / CLUSTER_FILE
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def write_cluster(data_dir: Path, data: dict[str, Any]) -> Path:
    """Write cluster.json atomically, 0600 (it holds the admin API key)."""
    path = data_dir / CLUSTER_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    tmp.replace(path)
    return path


def load_config(
    identity: str,
    data_dir: Path | str | None = None,
    *,
    service: str | None = None,
    nats_url: str | None = None,
    database_url: str | None = None,
) -> ServiceConfig:
    """The configuration of ``service`` (default: the identity) running as ``identity``."""
    ddir = Path(data_dir).expanduser().resolve() if data_dir is not None else default_data_dir()
    cluster = read_cluster(ddir)
    n = int(cluster.get("n", 5))
    svc = service or identity
    tls = tls_files(ddir, identity)
    cfg = ServiceConfig(
        identity=identity,
        service=svc,
        data_dir=ddir,
        nats_url=nats_url
        or os.environ.get("MPCW_NATS_URL")
        or cluster.get("nats_url")
        or "tls://127.0.0.1:4222",
        ca_file=tls.ca,
        cert_file=tls.cert,
        key_file=tls.key,
        identities_file=identities_path(ddir),
        database_url=database_url or os.environ.get("MPCW_DATABASE_URL") or cluster.get("database_url"),
        metrics_port=cluster.get("metrics_ports", {}).get(svc),
        n=n,
        t=int(cluster.get("t", 4)),
        nodes=tuple(cluster.get("nodes") or node_names(n)),
        devchain_url=cluster.get("devchain_url"),
        esplora_url=cluster.get("esplora_url") or cluster.get("devchain_url"),
        intake_url=cluster.get("intake_url"),
        intake_port=cluster.get("intake_port"),
        devchain_port=cluster.get("devchain_port"),
        network=cluster.get("network", "regtest"),
        extra=cluster,
    )
    return cfg
