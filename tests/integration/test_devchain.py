"""The devchain as a real process: funding, spending, every rejection, restarts and malformed input.

Each test starts from the module's one devchain process (a free port, a temporary data dir) and funds
its own fresh single-key addresses, so tests do not depend on each other's state.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from bitcoin.core import CTransaction

from tests.unit.wallet_test_helpers import Key, make_key, sign_input
from wallet.address import script_to_address
from wallet.sighash import SIGHASH_ALL, SIGHASH_DEFAULT, SighashCache
from wallet.transaction import (
    OutPoint,
    Prevout,
    TxOutput,
    build_transaction,
    input_witness,
    serialize,
    txid,
    vsize,
    weight,
    with_witnesses,
)

ROOT = Path(__file__).resolve().parents[2]
NETWORK = "regtest"
RNG = random.Random(0xDEC0C4A1)


class Devchain:
    """A ``python -m services.devchain`` subprocess on a free port over ``data_dir``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.http: httpx.Client | None = None

    def start(self) -> None:
        url_file = self.data_dir / "devchain.url"
        url_file.unlink(missing_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir / "devchain.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.devchain", "--data-dir", str(self.data_dir), "--port", "0"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        deadline = time.monotonic() + 20
        while not url_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"devchain exited with {self.proc.returncode}: see {self.data_dir}")
            if time.monotonic() > deadline:
                raise RuntimeError("devchain did not start within 20 s")
            time.sleep(0.05)
        self.url = url_file.read_text().strip()
        self.http = httpx.Client(base_url=self.url, timeout=10)

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    # -- calls ------------------------------------------------------------------------------------

    @property
    def c(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def tip(self) -> int:
        r = self.c.get("/blocks/tip/height")
        assert r.status_code == 200, r.text
        return int(r.text)

    def faucet(self, address: str, sats: int) -> tuple[str, int]:
        r = self.c.post("/dev/faucet", json={"address": address, "sats": sats})
        assert r.status_code == 200, r.text
        body = r.json()
        return body["txid"], body["vout"]

    def mine(self, blocks: int = 1) -> dict[str, Any]:
        r = self.c.post("/dev/mine", json={"blocks": blocks})
        assert r.status_code == 200, r.text
        return dict(r.json())

    def broadcast(self, tx: CTransaction) -> httpx.Response:
        return self.c.post("/tx", content=serialize(tx).hex())

    def utxos(self, address: str) -> list[dict[str, Any]]:
        r = self.c.get(f"/address/{address}/utxo")
        assert r.status_code == 200, r.text
        return list(r.json())


@contextmanager
def running_devchain(data_dir: Path) -> Iterator[Devchain]:
    dc = Devchain(data_dir)
    dc.start()
    try:
        yield dc
    finally:
        dc.stop()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devchain]:
    with running_devchain(tmp_path_factory.mktemp("devchain")) as dc:
        yield dc


# -- single-key wallets -------------------------------------------------------------------------


@dataclass(frozen=True)
class Coin:
    txid: str
    vout: int
    amount: int
    key: Key


def address_of(key: Key) -> str:
    return script_to_address(key.script_pubkey, NETWORK)


def new_key(kind: str) -> Key:
    return make_key(RNG, kind)


def funded(chain: Devchain, kind: str, sats: int = 100_000) -> Coin:
    key = new_key(kind)
    tx_id, vout = chain.faucet(address_of(key), sats)
    return Coin(tx_id, vout, sats, key)


def spend(
    coins: list[Coin],
    outputs: list[tuple[bytes, int]],
    *,
    signed_amounts: list[int] | None = None,
) -> CTransaction:
    """``coins`` spent to ``outputs``, each input signed by its key (SIGHASH_DEFAULT for P2TR, ALL for
    P2WPKH); ``signed_amounts`` makes the signer believe other prevout amounts."""
    inputs = [(OutPoint(c.txid, c.vout), 0xFFFFFFFD) for c in coins]
    tx = build_transaction(inputs, [TxOutput(v, s) for s, v in outputs], version=2)
    amounts = signed_amounts or [c.amount for c in coins]
    prevouts = [Prevout(a, c.key.script_pubkey) for a, c in zip(amounts, coins, strict=True)]
    cache = SighashCache(tx, prevouts)
    witnesses = [
        sign_input(tx, prevouts, i, c.key, SIGHASH_DEFAULT if c.key.kind == "p2tr" else SIGHASH_ALL, cache)
        for i, c in enumerate(coins)
    ]
    return with_witnesses(tx, witnesses)


def rejected(r: httpx.Response, *needles: str) -> None:
    assert r.status_code == 400, f"expected 400, got {r.status_code}: {r.text}"
    assert r.text.startswith("sendrawtransaction RPC error: "), r.text
    detail = json.loads(r.text.removeprefix("sendrawtransaction RPC error: "))
    assert isinstance(detail["code"], int) and detail["message"], r.text
    for n in needles:
        assert n in detail["message"], r.text


# -- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["p2wpkh", "p2tr"])
def test_fund_spend_mine_confirm(chain: Devchain, kind: str) -> None:
    coin = funded(chain, kind, 100_000)
    src = address_of(coin.key)
    [utxo] = chain.utxos(src)
    assert utxo["txid"] == coin.txid and utxo["vout"] == coin.vout and utxo["value"] == 100_000
    assert utxo["status"]["confirmed"] is True and utxo["status"]["block_height"] == chain.tip()

    dest = new_key("p2tr" if kind == "p2wpkh" else "p2wpkh")
    tx = spend([coin], [(dest.script_pubkey, 90_000)])
    r = chain.broadcast(tx)
    assert r.status_code == 200, r.text
    assert r.text == txid(tx)
    assert chain.broadcast(tx).text == txid(tx)  # already in the mempool: the txid again, as Core
    assert chain.c.get(f"/tx/{txid(tx)}/status").json() == {"confirmed": False}
    assert chain.c.get(f"/tx/{txid(tx)}/hex").text == serialize(tx).hex()
    assert chain.utxos(src) == []  # spent in the mempool
    [pending] = chain.utxos(address_of(dest))
    assert pending["status"] == {"confirmed": False} and pending["value"] == 90_000
    assert txid(tx) in chain.c.get("/mempool/txids").json()

    # a child of the unconfirmed transaction is accepted too
    child = spend([Coin(txid(tx), 0, 90_000, dest)], [(coin.key.script_pubkey, 89_000)])
    assert chain.broadcast(child).status_code == 200

    mined = chain.mine(1)
    tip = chain.tip()
    assert mined["height"] == tip and len(mined["block_hashes"]) == 1
    status = chain.c.get(f"/tx/{txid(tx)}/status").json()
    assert status["confirmed"] is True and status["block_height"] == tip
    assert status["block_hash"] == mined["block_hashes"][0] == chain.c.get("/blocks/tip/hash").text
    assert chain.c.get(f"/block/{status['block_hash']}/txids").json()[1:] == [txid(tx), txid(child)]
    chain.mine(2)
    assert chain.tip() - status["block_height"] + 1 == 3  # confirmations

    body = chain.c.get(f"/tx/{txid(tx)}").json()
    assert body["txid"] == txid(tx) and body["fee"] == 10_000 and body["status"]["confirmed"]
    assert body["weight"] == weight(tx)
    assert body["size"] == len(serialize(tx)) and body["vin"][0]["witness"] == [
        w.hex() for w in input_witness(tx, 0)
    ]
    prev = body["vin"][0]["prevout"]
    assert prev["value"] == 100_000 and prev["scriptpubkey_address"] == src
    assert prev["scriptpubkey_type"] == {"p2wpkh": "v0_p2wpkh", "p2tr": "v1_p2tr"}[kind]
    assert body["vout"][0]["scriptpubkey_address"] == address_of(dest)
    assert chain.utxos(address_of(dest)) == []
    [back] = chain.utxos(src)
    assert back["txid"] == txid(child) and back["status"]["confirmed"] is True
    rejected(chain.broadcast(tx), "already in block chain")
    spent = chain.c.get(f"/tx/{coin.txid}/outspend/{coin.vout}").json()
    assert spent["spent"] is True and spent["txid"] == txid(tx) and spent["vin"] == 0


@pytest.mark.parametrize("kind", ["p2wpkh", "p2tr"])
def test_tampering_is_rejected_with_reason(chain: Devchain, kind: str) -> None:
    coin = funded(chain, kind, 100_000)
    dest = new_key("p2tr")
    good = spend([coin], [(dest.script_pubkey, 60_000), (coin.key.script_pubkey, 39_000)])
    witness = input_witness(good, 0)
    sig = witness[0]

    # every bit of the signature (P2TR: the 64-byte Schnorr signature; P2WPKH: DER + hash type)
    for bit in range(len(sig) * 8):
        bad_sig = bytearray(sig)
        bad_sig[bit // 8] ^= 1 << (bit % 8)
        bad = with_witnesses(good, [[bytes(bad_sig), *witness[1:]]])
        rejected(chain.broadcast(bad), "mandatory-script-verify-flag-failed", "input 0")

    # a signature over another prevout amount (the signer was lied to)
    for lie in (coin.amount + 1, coin.amount - 1, 2 * coin.amount):
        bad = spend(
            [coin], [(dest.script_pubkey, 60_000), (coin.key.script_pubkey, 39_000)], signed_amounts=[lie]
        )
        rejected(chain.broadcast(bad), "mandatory-script-verify-flag-failed", "input 0")

    # an output changed after signing: its amount, a bit of its script
    raw = bytearray(serialize(good))
    amount_at = raw.index((60_000).to_bytes(8, "little"))
    for offset, flip in ((amount_at, 0x01), (amount_at + 8 + 1 + 5, 0x80)):
        changed = bytearray(raw)
        changed[offset] ^= flip
        r = chain.c.post("/tx", content=bytes(changed).hex())
        rejected(r, "mandatory-script-verify-flag-failed")

    # none of that touched the coin: the honest transaction still goes through
    assert chain.broadcast(good).status_code == 200


def test_double_spend_rejected(chain: Devchain) -> None:
    coin = funded(chain, "p2tr", 50_000)
    a, b = new_key("p2tr"), new_key("p2wpkh")
    first = spend([coin], [(a.script_pubkey, 49_000)])
    second = spend([coin], [(b.script_pubkey, 45_000)])  # higher fee: no RBF here either
    assert chain.broadcast(first).status_code == 200
    rejected(chain.broadcast(second), "txn-mempool-conflict")
    # the same transaction with another witness (SIGHASH_ALL instead of DEFAULT): same txid, new wtxid
    prevouts = [Prevout(coin.amount, coin.key.script_pubkey)]
    malleated = with_witnesses(first, [sign_input(first, prevouts, 0, coin.key, SIGHASH_ALL)])
    assert txid(malleated) == txid(first) and serialize(malleated) != serialize(first)
    rejected(chain.broadcast(malleated), "txn-same-nonwitness-data-in-mempool")
    chain.mine(1)
    rejected(chain.broadcast(second), "bad-txns-inputs-missingorspent")
    # an input that never existed
    ghost = Coin("11" * 32, 0, 50_000, coin.key)
    rejected(chain.broadcast(spend([ghost], [(a.script_pubkey, 40_000)])), "bad-txns-inputs-missingorspent")
    # two inputs spending the same outpoint inside one transaction
    dup = spend([coin, coin], [(a.script_pubkey, 40_000)])
    rejected(chain.broadcast(dup), "duplicate input")
    assert chain.c.get(f"/tx/{txid(second)}").status_code == 404


def test_fee_below_relay_minimum_rejected(chain: Devchain) -> None:
    coin = funded(chain, "p2wpkh", 50_000)
    dest = new_key("p2tr")
    probe = spend([coin], [(dest.script_pubkey, 49_000)])
    size = vsize(probe)  # the signature length does not change vsize here (witness discount)
    low = spend([coin], [(dest.script_pubkey, 50_000 - size + 1)])
    assert vsize(low) == size
    rejected(chain.broadcast(low), "min relay fee not met", f"{size - 1} < {size}")
    over = spend([coin], [(dest.script_pubkey, 50_001)])
    rejected(chain.broadcast(over), "bad-txns-in-belowout")
    dust = spend([coin], [(dest.script_pubkey, 329), (coin.key.script_pubkey, 40_000)])
    rejected(chain.broadcast(dust), "dust")
    exact = spend([coin], [(dest.script_pubkey, 50_000 - size)])
    assert chain.broadcast(exact).status_code == 200


def test_state_survives_restart(chain: Devchain) -> None:
    coin = funded(chain, "p2tr", 70_000)
    dest = new_key("p2wpkh")
    confirmed = spend([coin], [(dest.script_pubkey, 69_000)])
    assert chain.broadcast(confirmed).status_code == 200
    chain.mine(1)
    pending = spend([Coin(txid(confirmed), 0, 69_000, dest)], [(coin.key.script_pubkey, 68_000)])
    assert chain.broadcast(pending).status_code == 200

    def snapshot() -> dict[str, Any]:
        return {
            "tip": chain.tip(),
            "hash": chain.c.get("/blocks/tip/hash").text,
            "status": chain.c.get(f"/tx/{txid(confirmed)}/status").json(),
            "utxos": chain.utxos(address_of(coin.key)),
            "fees": chain.c.get("/fee-estimates").json(),
            "mempool": chain.c.get("/mempool/txids").json(),
        }

    before = snapshot()
    old_url = chain.url
    chain.stop()
    chain.start()
    after = snapshot()
    assert after == before, (old_url, chain.url)
    assert txid(pending) in after["mempool"]
    rejected(chain.broadcast(confirmed), "already in block chain")
    height = chain.mine(1)["height"]
    wrong = subprocess.run(
        [sys.executable, "-m", "services.devchain", "--data-dir", str(chain.data_dir), "--network=testnet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert wrong.returncode == 2 and "holds a regtest chain" in wrong.stderr
    assert chain.c.get(f"/tx/{txid(pending)}/status").json()["block_height"] == height


def test_fee_estimates(chain: Devchain) -> None:
    est = chain.c.get("/fee-estimates").json()
    for target in ("1", "2", "6", "144", "1008"):
        assert est[target] >= 1
    r = chain.c.post("/dev/fee-estimates", json={"1": 25.5, "6": 10, "144": 2})
    assert r.status_code == 200, r.text
    assert chain.c.get("/fee-estimates").json() == {"1": 25.5, "6": 10.0, "144": 2.0}


def _malformed_requests(chain: Devchain) -> list[tuple[str, str, Any]]:
    known = funded(chain, "p2wpkh", 10_000)
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    good_raw = serialize(spend([known], [(known.key.script_pubkey, 9_000)])).hex()
    t = known.txid
    return [
        ("POST", "/tx", ""),
        ("POST", "/tx", "zz"),
        ("POST", "/tx", "0"),
        ("POST", "/tx", "00"),
        ("POST", "/tx", "deadbeef"),
        ("POST", "/tx", good_raw[:-2]),  # truncated
        ("POST", "/tx", good_raw + "00"),  # trailing byte
        ("POST", "/tx", good_raw.replace("02000000", "ff", 1)),
        ("POST", "/tx", b"\xff\xfe\x00garbage"),
        ("POST", "/tx", "é" * 10),
        ("POST", "/tx", "00" * 100_000),
        ("GET", "/tx/xyz", None),
        ("GET", f"/tx/{t[:-1]}", None),
        ("GET", f"/tx/{t}0", None),
        ("GET", "/tx/" + "g" * 64, None),
        ("GET", "/tx/" + "g" * 64 + "/hex", None),
        ("GET", "/tx/" + "g" * 64 + "/raw", None),
        ("GET", "/tx/zz/status", None),
        ("GET", f"/tx/{t}/outspend/-1", None),
        ("GET", f"/tx/{t}/outspend/x", None),
        ("GET", f"/tx/{t}/outspend/99999999999999", None),
        ("GET", "/address/notanaddress/utxo", None),
        ("GET", f"/address/{mainnet}/utxo", None),
        ("GET", "/address/bcrt1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq/utxo", None),
        ("GET", "/address/mipcBbFg9gMiCh81Kj8tqqdgoZub1ZJRfn/utxo", None),  # testnet P2PKH on regtest: ok
        ("GET", "/address/1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2/utxo", None),
        ("GET", "/block-height/abc", None),
        ("GET", "/block-height/-1", None),
        ("GET", "/block/123", None),
        ("POST", "/dev/faucet", "{not json"),
        ("POST", "/dev/faucet", "[1, 2]"),
        ("POST", "/dev/faucet", ""),
        ("POST", "/dev/faucet", {"sats": 1000}),
        ("POST", "/dev/faucet", {"address": 5, "sats": 1000}),
        ("POST", "/dev/faucet", {"address": mainnet, "sats": 1000}),
        ("POST", "/dev/faucet", {"address": address_of(known.key)}),
        ("POST", "/dev/faucet", {"address": address_of(known.key), "sats": -1}),
        ("POST", "/dev/faucet", {"address": address_of(known.key), "sats": 0}),
        ("POST", "/dev/faucet", {"address": address_of(known.key), "sats": 21_000_000 * 10**8 + 1}),
        ("POST", "/dev/faucet", {"address": address_of(known.key), "sats": 10**40}),
        ("POST", "/dev/faucet", {"address": address_of(known.key), "sats": 1.5}),
        ("POST", "/dev/faucet", {"address": address_of(known.key), "sats": "1000"}),
        ("POST", "/dev/faucet", {"address": address_of(known.key), "sats": True}),
        ("POST", "/dev/mine", {"blocks": 0}),
        ("POST", "/dev/mine", {"blocks": -3}),
        ("POST", "/dev/mine", {"blocks": 10**9}),
        ("POST", "/dev/mine", {"blocks": "2"}),
        ("POST", "/dev/mine", {"blocks": 1, "address": "nope"}),
        ("POST", "/dev/mine", "null"),
        ("POST", "/dev/fee-estimates", {"0": 5}),
        ("POST", "/dev/fee-estimates", {"x": 5}),
        ("POST", "/dev/fee-estimates", {"6": -1}),
        ("POST", "/dev/fee-estimates", {"6": "NaN"}),
        ("POST", "/dev/fee-estimates", {}),
    ]


def test_malformed_requests_are_400_with_reason(chain: Devchain) -> None:
    tip_before = chain.tip()
    for method, path, body in _malformed_requests(chain):
        if path.startswith("/address/mipc"):
            r = chain.c.get(path)
            assert r.status_code == 200 and r.json() == [], r.text  # a valid regtest address
            continue
        if isinstance(body, dict):
            r = chain.c.request(method, path, json=body)
        elif body is None:
            r = chain.c.request(method, path)
        else:
            r = chain.c.request(method, path, content=body.encode() if isinstance(body, str) else body)
        assert r.status_code == 400, f"{method} {path} {str(body)[:60]!r}: {r.status_code} {r.text[:200]}"
        assert len(r.text) > 5, f"{method} {path}: no reason"
    assert chain.tip() == tip_before + 1  # only the one faucet block of the setup
    # unknown but well-formed: 404, and the process is still fine
    assert chain.c.get("/tx/" + "ab" * 32).status_code == 404
    assert chain.c.get("/tx/" + "ab" * 32 + "/status").json() == {"confirmed": False}
    assert chain.c.get("/block-height/999999").status_code == 404


def test_concurrent_and_sequential_clients(chain: Devchain) -> None:
    n = 40

    async def run() -> None:
        async with httpx.AsyncClient(base_url=chain.url, timeout=30) as client:
            keys = [new_key("p2tr" if i % 2 else "p2wpkh") for i in range(n)]
            funded_ = await asyncio.gather(
                *(client.post("/dev/faucet", json={"address": address_of(k), "sats": 20_000}) for k in keys)
            )
            coins = []
            for k, r in zip(keys, funded_, strict=True):
                assert r.status_code == 200, r.text
                coins.append(Coin(r.json()["txid"], r.json()["vout"], 20_000, k))
            txs = [spend([c], [(new_key("p2tr").script_pubkey, 19_000)]) for c in coins]

            async def timed(tx: CTransaction) -> float:
                t0 = time.perf_counter()
                r = await client.post("/tx", content=serialize(tx).hex())
                assert r.status_code == 200, r.text
                return time.perf_counter() - t0

            await asyncio.gather(*(timed(tx) for tx in txs))  # all at once
            mempool = set((await client.get("/mempool/txids")).json())
            assert {txid(tx) for tx in txs} <= mempool

    asyncio.run(run())

    # one client, one request at a time (its speed is measured by loadtest/bench_devchain.py)
    coins = [funded(chain, "p2tr", 20_000) for _ in range(30)]
    for c in coins:
        tx = spend([c], [(new_key("p2tr").script_pubkey, 19_000)])
        r = chain.c.post("/tx", content=serialize(tx).hex())
        assert r.status_code == 200, r.text
