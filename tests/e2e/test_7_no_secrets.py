"""No secret anywhere but in its encrypted keystore or in the secrets directory outside the data dir.

The secrets are read test-side: from every node's keystore the key share and the ChillDKG host key;
from the secrets directory every node's key-encryption key, every identity's Ed25519 seed and X25519 key,
every TLS private key (its PEM, and its raw scalar) and the CA's; the admin API key. (Secret nonces cannot
be read from outside their signer process: they are encrypted under a key only that process holds;
tests/unit/test_signer_gate.py checks, inside one process, that no secret nonce the signer pooled or signed
with appears in anything it publishes or logs.) Each is searched for raw, as lower/upper-case hex and as
base64 in:

- every message stored in every stream (TX, VOTE, PROTO, NODE), read back one by one as ``admin``;
- every stored value of every KV bucket (the bucket streams, so overwritten revisions count too);
- every row of every table in PostgreSQL's ``public`` schema;
- every log file in ``D/logs/``;
- every service's Prometheus metrics page;
- and, as a catch-all, every other file under the cluster directory (NATS and PostgreSQL storage, the
  devchain, pid/run files, the PKI's public half) except the encrypted keystore files themselves and
  ``cluster.json`` (which holds the admin API key, for the operator).

A copy of one node's data directory, without the secrets directory, opens nothing: a clear error, no
share.

This module runs last on purpose (after spends, rejections, replays and restarts have written their logs).
A positive control proves the scanner finds a planted secret in each kind of place it searches.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.runtime.bus import Bus
from services.runtime.secrets_dir import SECRETS_DIR_ENV, secrets_dir
from services.signer.keystore import Keystore, KeystoreError
from tests.e2e.conftest import BUCKETS, STREAMS, Cluster, StoredMsg, read_stream

pytestmark = pytest.mark.e2e

KEYSTORE_FILES = ("kek.argon2id",)  # public KDF parameters; plus *.enc under nodes/<node>/
OPERATOR_FILES = ("cluster.json",)  # holds the admin API key on purpose


@dataclass(frozen=True)
class Secret:
    label: str
    value: bytes

    def needles(self) -> Iterator[tuple[str, bytes]]:
        v = self.value
        yield "raw", v
        yield "hex", v.hex().encode()
        yield "HEX", v.hex().upper().encode()
        yield "base64", base64.b64encode(v).rstrip(b"=")
        yield "base64url", base64.urlsafe_b64encode(v).rstrip(b"=")


def tls_key_secrets(label: str, pem: bytes) -> list[Secret]:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return [Secret(f"{label} (PEM)", pem.strip()), Secret(f"{label} (scalar)", scalar)]


def collect_secrets(cluster: Cluster) -> list[Secret]:
    out: list[Secret] = []
    sdir = secrets_dir(cluster.data_dir)
    for node in cluster.info["nodes"]:
        ks = Keystore(cluster.data_dir, node)
        share = ks.load_share("default")
        assert len(share.secshare) == 32
        out.append(Secret(f"{node} secret share", share.secshare))
        out.append(Secret(f"{node} host key", ks._open(ks.root / "hostkey.enc", "hostkey", "host")))
        out.append(Secret(f"{node} key-encryption key", ks.dev_kek_path.read_bytes()))
        ks.close()  # (never opened its nonce store: the running signer holds it)
    identities = sorted(p.name for p in (sdir / "identities").iterdir())
    assert len(identities) >= len(cluster.info["nodes"]) + 5, identities
    for name in identities:
        out.append(Secret(f"{name} Ed25519 seed", (sdir / "identities" / name / "ed25519.key").read_bytes()))
        out.append(Secret(f"{name} X25519 key", (sdir / "identities" / name / "x25519.key").read_bytes()))
    tls_keys = sorted((sdir / "pki").glob("*.key"))
    assert {"ca.key", "server.key", "admin.key", "node-1.key"} <= {p.name for p in tls_keys}
    for path in tls_keys:
        out += tls_key_secrets(f"TLS key {path.name}", path.read_bytes())
    api_key = cluster.info["admin_api_key"]
    out.append(Secret("admin API key", api_key.encode()))
    out.append(Secret("admin API key (secret part)", api_key.split("_", 2)[2].encode()))
    assert len({s.value for s in out}) == len(out), "two secrets are equal?!"
    return out


class Scanner:
    def __init__(self, secrets: list[Secret]) -> None:
        self.needles = [(s.label, kind, n) for s in secrets for kind, n in s.needles()]
        self.scanned: dict[str, int] = {}
        self.hits: list[str] = []

    def scan(self, where: str, category: str, blob: bytes) -> None:
        self.scanned[category] = self.scanned.get(category, 0) + 1
        for label, kind, needle in self.needles:
            if needle in blob:
                self.hits.append(f"{label} ({kind}) in {where}")


async def _bus_blobs(bus: Bus) -> list[StoredMsg]:
    msgs: list[StoredMsg] = []
    for stream in (*STREAMS, *(f"KV_{b}" for b in BUCKETS)):
        msgs += await read_stream(bus, stream)
    return msgs


def _row_bytes(row: asyncpg.Record) -> bytes:
    parts = []
    for v in row.values():
        if isinstance(v, (bytes, bytearray, memoryview)):
            parts.append(bytes(v))
        elif isinstance(v, (list, tuple)):
            parts += [bytes(x) if isinstance(x, (bytes, bytearray)) else str(x).encode() for x in v]
        parts.append(str(v).encode())
    return b"\x00".join(parts)


def _db_rows(cluster: Cluster) -> list[tuple[str, bytes]]:
    async def go(conn: asyncpg.Connection) -> list[tuple[str, bytes]]:
        tables = [
            r["table_name"]
            for r in await conn.fetch(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY table_name"
            )
        ]
        out = []
        for t in tables:
            for i, row in enumerate(await conn.fetch(f'SELECT * FROM "{t}"')):
                out.append((f"{t} row {i}", _row_bytes(row)))
            out.append((f"{t} (table)", b""))
        return out

    return cluster.with_db(go)


def _is_keystore_file(path: Path, data_dir: Path) -> bool:
    rel = path.relative_to(data_dir).parts
    if rel[0] in OPERATOR_FILES:
        return True
    return len(rel) >= 3 and rel[0] == "nodes" and (path.suffix == ".enc" or path.name in KEYSTORE_FILES)


def _other_files(data_dir: Path) -> Iterable[Path]:
    for p in sorted(data_dir.rglob("*")):
        if p.is_file() and not p.is_symlink() and not _is_keystore_file(p, data_dir):
            yield p


def _metrics_pages(cluster: Cluster) -> list[tuple[str, bytes]]:
    pages = []
    for name, port in sorted(cluster.info["metrics_ports"].items()):
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5.0)
        except httpx.HTTPError:
            continue  # a service without a metrics server (devchain)
        pages.append((f"metrics of {name}", r.content))
    return pages


def scan_everything(cluster: Cluster, scanner: Scanner) -> None:
    for m in cluster.with_bus(_bus_blobs):
        scanner.scan(f"{m.stream} #{m.seq} {m.subject}", m.stream, m.subject.encode() + b"\x00" + m.data)
    for where, blob in _db_rows(cluster):
        scanner.scan(where, "db row" if blob else "db table", blob)
    for where, page in _metrics_pages(cluster):
        scanner.scan(where, "metrics", page)
    logs = cluster.data_dir / "logs"
    for f in sorted(logs.glob("*")):
        if f.is_file():
            scanner.scan(str(f.relative_to(cluster.data_dir)), "log file", f.read_bytes())
    for f in _other_files(cluster.data_dir):
        if f.parent != logs:
            try:
                data = f.read_bytes()
            except OSError:
                continue  # a file removed while walking (postgres temp files)
            scanner.scan(str(f.relative_to(cluster.data_dir)), "other file", data)


def test_no_node_secret_anywhere(cluster: Cluster, confirmed_spend: dict[str, object]) -> None:
    assert confirmed_spend["state"] == "confirmed"  # at least one signing happened
    secrets = collect_secrets(cluster)
    scanner = Scanner(secrets)
    scan_everything(cluster, scanner)
    # the scan really covered every kind of place, and a lot of it
    for stream in (*STREAMS, "KV_nodes", "KV_presig", "KV_keys", "KV_config", "KV_rounds"):
        assert scanner.scanned.get(stream, 0) > 0, (stream, scanner.scanned)
    assert scanner.scanned.get("db row", 0) > 20, scanner.scanned
    assert scanner.scanned.get("log file", 0) >= len(cluster.info["services"]), scanner.scanned
    assert scanner.scanned.get("other file", 0) > 50, scanner.scanned
    assert scanner.scanned.get("metrics", 0) >= len(cluster.info["services"]) - 1, scanner.scanned
    assert scanner.hits == [], "\n".join(scanner.hits[:50])


@pytest.mark.parametrize("with_cluster_id", [True, False])
def test_a_copy_of_a_node_directory_alone_opens_nothing(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_cluster_id: bool
) -> None:
    """An attacker with a copy of node-1's data directory (and the cluster id, or not) but not the
    secrets directory gets a clear error and no share; the real keystore still opens."""
    node = cluster.info["nodes"][0]
    stolen = tmp_path / "stolen"
    shutil.copytree(cluster.data_dir / "nodes" / node, stolen / "nodes" / node)
    if with_cluster_id:
        shutil.copy(cluster.data_dir / "cluster.id", stolen / "cluster.id")
    assert list((stolen / "nodes" / node / "shares").glob("*.enc"))
    monkeypatch.setenv(SECRETS_DIR_ENV, str(tmp_path / "the-attackers-machine"))
    with pytest.raises(KeystoreError, match="secrets directory") as err:
        Keystore(stolen, node).load_share("default")
    assert "restore the secrets directory" in str(err.value).lower()
    assert not list((tmp_path / "the-attackers-machine").rglob("kek"))  # nothing made up in its place
    monkeypatch.undo()
    real = Keystore(cluster.data_dir, node)
    assert len(real.load_share("default").secshare) == 32
    real.close()


def test_scanner_finds_a_planted_secret(cluster: Cluster) -> None:
    """Positive control: the same scanner, over the same places, sees a known value in each of them."""
    planted = next(s for s in collect_secrets(cluster) if s.label == "node-1 secret share")
    pem = next(s for s in collect_secrets(cluster) if s.label == "TLS key node-1.key (PEM)")
    scanner = Scanner([planted])
    scanner.scan("message", "stream message", b"\x92\xc4\x20" + planted.value + b"tail")
    scanner.scan("log", "log file", b'{"msg": "x", "share": "' + planted.value.hex().encode() + b'"}\n')
    scanner.scan("row", "db row", _row_bytes({"a": 1, "b": planted.value}))
    scanner.scan("upper", "other file", b"..." + planted.value.hex().upper().encode())
    scanner.scan("b64", "other file", base64.b64encode(planted.value))
    scanner.scan("metrics", "metrics", b'mpcw_x{node="' + planted.value.hex().encode() + b'"} 1\n')
    assert len({h.split(" in ")[1] for h in scanner.hits}) == 6, scanner.hits
    pem_scanner = Scanner([pem])
    pem_scanner.scan("pem", "other file", b"x\n" + pem.value + b"\n")
    assert pem_scanner.hits == [f"{pem.label} (raw) in pem"]
