"""EsploraClient against a real devchain process, and against sockets that misbehave (refused,
silent, answering 503) for the retry and timeout paths."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from services.chain.esplora import (
    BroadcastRejected,
    ChainBackendUnavailable,
    EsploraBadRequest,
    EsploraClient,
    TxNotFound,
    TxStatus,
)
from tests.integration.test_devchain import Devchain, address_of, funded, new_key, running_devchain, spend
from wallet.transaction import serialize, txid

# the async fixtures live in the session loop (pyproject's asyncio_default_fixture_loop_scope)
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def devchain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Devchain]:
    with running_devchain(tmp_path_factory.mktemp("devchain-esplora")) as dc:
        yield dc


@pytest.fixture
async def esplora(devchain: Devchain) -> AsyncIterator[EsploraClient]:
    async with EsploraClient(devchain.url, timeout=5, retries=2, backoff=0.05) as client:
        yield client


async def test_tip_and_fee_estimates(devchain: Devchain, esplora: EsploraClient) -> None:
    assert await esplora.tip_height() == devchain.tip()
    assert await esplora.tip_hash() == devchain.c.get("/blocks/tip/hash").text
    est = await esplora.fee_estimates()
    assert {1, 2, 6, 144} <= set(est) and all(isinstance(v, float) and v >= 1 for v in est.values())


async def test_fund_broadcast_confirm(devchain: Devchain, esplora: EsploraClient) -> None:
    coin = funded(devchain, "p2tr", 80_000)
    [utxo] = await esplora.utxos(address_of(coin.key))
    assert (utxo.txid, utxo.vout, utxo.value) == (coin.txid, coin.vout, 80_000)
    assert utxo.status.confirmed and utxo.status.block_height == await esplora.tip_height()

    dest = new_key("p2wpkh")
    tx = spend([coin], [(dest.script_pubkey, 79_000)])
    assert await esplora.broadcast(serialize(tx).hex()) == txid(tx)
    assert await esplora.broadcast(serialize(tx).hex()) == txid(tx)  # idempotent while in the mempool
    assert await esplora.tx_status(txid(tx)) == TxStatus(False)
    assert await esplora.tx_hex(txid(tx)) == serialize(tx).hex()
    [pending] = await esplora.utxos(address_of(dest))
    assert not pending.status.confirmed and pending.status.confirmations(await esplora.tip_height()) == 0

    devchain.mine(2)
    status = await esplora.tx_status(txid(tx))
    assert status.confirmed and status.confirmations(await esplora.tip_height()) == 2
    assert status.block_height is not None and status.block_hash is not None
    # the broadcaster's block follower: a height's hash, then that block's txids
    assert await esplora.block_hash_at(status.block_height) == status.block_hash
    assert txid(tx) in await esplora.block_txids(status.block_hash)
    with pytest.raises(ChainBackendUnavailable):
        await esplora.block_hash_at(status.block_height + 1000)  # no such block: 404
    with pytest.raises(ValueError):
        await esplora.block_hash_at(-1)
    body = await esplora.tx(txid(tx))
    assert body["txid"] == txid(tx) and body["fee"] == 1_000
    assert body["vin"][0]["prevout"]["scriptpubkey_address"] == address_of(coin.key)


async def test_broadcast_rejections_are_typed(devchain: Devchain, esplora: EsploraClient) -> None:
    coin = funded(devchain, "p2wpkh", 60_000)
    first = spend([coin], [(new_key("p2tr").script_pubkey, 59_000)])
    second = spend([coin], [(new_key("p2tr").script_pubkey, 58_000)])
    await esplora.broadcast(serialize(first).hex())
    with pytest.raises(BroadcastRejected) as conflict:
        await esplora.broadcast(serialize(second).hex())
    assert conflict.value.code == -26 and conflict.value.reason == "txn-mempool-conflict"
    with pytest.raises(BroadcastRejected) as garbage:
        await esplora.broadcast("zz")
    assert garbage.value.code == -22 and "TX decode failed" in garbage.value.reason
    devchain.mine(1)
    with pytest.raises(BroadcastRejected) as spent:
        await esplora.broadcast(serialize(second).hex())
    assert spent.value.code == -25 and spent.value.reason == "bad-txns-inputs-missingorspent"


async def test_lookups_of_unknown_and_malformed(esplora: EsploraClient) -> None:
    unknown = "cd" * 32
    with pytest.raises(TxNotFound):
        await esplora.tx(unknown)
    with pytest.raises(TxNotFound):
        await esplora.tx_hex(unknown)
    assert await esplora.tx_status(unknown) == TxStatus(False)
    with pytest.raises(ValueError):
        await esplora.tx("not-a-txid")
    with pytest.raises(EsploraBadRequest):
        await esplora.utxos("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4")  # mainnet on regtest
    with pytest.raises(EsploraBadRequest):
        await esplora.utxos("../../blocks/tip/height")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_backend() -> None:
    async with EsploraClient(f"http://127.0.0.1:{_free_port()}", timeout=1, retries=2, backoff=0.01) as c:
        t0 = time.monotonic()
        with pytest.raises(ChainBackendUnavailable, match="3 attempts"):
            await c.tip_height()
        with pytest.raises(ChainBackendUnavailable):
            await c.broadcast("00")
        assert time.monotonic() - t0 < 5


async def test_silent_backend_times_out() -> None:
    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        await asyncio.sleep(30)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with EsploraClient(f"http://127.0.0.1:{port}", timeout=0.2, retries=1, backoff=0.01) as c:
            t0 = time.monotonic()
            with pytest.raises(ChainBackendUnavailable, match="Timeout"):
                await c.utxos("bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080")
            with pytest.raises(ChainBackendUnavailable, match="Timeout"):
                await c.broadcast("00")  # not retried after the request left
            assert time.monotonic() - t0 < 2
    finally:
        server.close()


async def test_transient_503_is_retried() -> None:
    seen = []

    async def flaky(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen.append(1)
        if len(seen) <= 2:
            writer.write(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
            )
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n812")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(flaky, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with EsploraClient(f"http://127.0.0.1:{port}", retries=3, backoff=0.01) as c:
            assert await c.tip_height() == 812
        assert len(seen) == 3
        seen.clear()
        async with EsploraClient(f"http://127.0.0.1:{port}", retries=1, backoff=0.01) as c:
            with pytest.raises(ChainBackendUnavailable, match="503"):
                await c.tip_height()
    finally:
        server.close()
