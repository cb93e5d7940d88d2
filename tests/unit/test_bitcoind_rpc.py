"""BitcoindRpcClient against recorded bitcoind answers (``fixtures/bitcoind/*.json``, Bitcoin Core's
documented formats), replayed by an ``httpx.MockTransport`` that also checks what the client sent:
the method, the params, the JSON-RPC version, the id and the Basic credentials."""

from __future__ import annotations

import base64
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.chain.bitcoind_rpc import (
    BitcoindRpcClient,
    BitcoindRpcError,
    BitcoindUnavailable,
    btc_to_sats,
)
from wallet.transaction import parse_transaction, txid

FIXTURES = Path(__file__).parent / "fixtures" / "bitcoind"
URL = "http://127.0.0.1:18443/"


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / f"{name}.json").read_text()))


class Replay:
    """Serves one recorded answer per request, in order; records what was asked."""

    def __init__(self, *names: str, credentials: tuple[str, str] = ("alice", "s3cret")) -> None:
        self.fixtures = [load(n) for n in names]
        self.credentials = credentials
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.method == "POST" and str(request.url) == URL
        assert request.headers["content-type"] == "application/json"
        body = json.loads(request.content)
        self.requests.append(body)
        user, password = self.credentials
        expected_auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        if request.headers.get("authorization") != expected_auth and self.fixtures[0]["http_status"] != 401:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        fixture = self.fixtures.pop(0)
        assert body["method"] == fixture["request"]["method"]
        assert body["params"] == fixture["request"]["params"]
        assert body["jsonrpc"] == fixture["jsonrpc"]
        if "raw_body" in fixture:
            return httpx.Response(fixture["http_status"], text=fixture["raw_body"])
        # the recorded text, with the request's id where the recording has "__ID__"
        text = json.dumps(fixture["response"]).replace('"__ID__"', json.dumps(body["id"]))
        return httpx.Response(
            fixture["http_status"], content=text.encode(), headers={"Content-Type": "application/json"}
        )


def client(replay: Replay, **kw: Any) -> BitcoindRpcClient:
    if "cookie_file" not in kw:
        kw.setdefault("user", "alice")
        kw.setdefault("password", "s3cret")
    return BitcoindRpcClient(URL, transport=httpx.MockTransport(replay), **kw)


RAW = load("sendrawtransaction_ok")["request"]["params"][0]
TXID = txid(parse_transaction(bytes.fromhex(RAW)))


async def test_sendrawtransaction_both_dialects() -> None:
    replay = Replay("sendrawtransaction_ok", "sendrawtransaction_ok_legacy")
    async with client(replay) as rpc:
        assert await rpc.sendrawtransaction(RAW) == TXID
    async with client(replay, jsonrpc="1.0") as rpc:
        assert await rpc.sendrawtransaction(RAW) == TXID
    assert [r["jsonrpc"] for r in replay.requests] == ["2.0", "1.0"]


@pytest.mark.parametrize(
    ("fixture", "jsonrpc", "code", "message"),
    [
        ("sendrawtransaction_min_relay_fee_legacy", "1.0", -26, "min relay fee not met, 110 < 141"),
        ("sendrawtransaction_missingorspent", "2.0", -25, "bad-txns-inputs-missingorspent"),
        ("method_not_found_legacy", "1.0", -32601, "Method not found"),
    ],
)
async def test_rpc_errors_are_typed(fixture: str, jsonrpc: str, code: int, message: str) -> None:
    async with client(Replay(fixture), jsonrpc=jsonrpc) as rpc:
        with pytest.raises(BitcoindRpcError) as err:
            if fixture.startswith("method_not_found"):
                await rpc.call("sendrawtransactionz", RAW)
            else:
                await rpc.sendrawtransaction(RAW)
    assert (err.value.code, err.value.message) == (code, message)


async def test_sendrawtransaction_maxfeerate() -> None:
    async with client(Replay("sendrawtransaction_maxfeerate")) as rpc:
        with pytest.raises(BitcoindRpcError) as err:
            await rpc.sendrawtransaction(RAW, maxfeerate=Decimal("0.00100000"))
    assert err.value.code == -25 and "maxfeerate" in err.value.message


async def test_testmempoolaccept() -> None:
    async with client(Replay("testmempoolaccept_allowed", "testmempoolaccept_rejected")) as rpc:
        [ok] = await rpc.testmempoolaccept([RAW])
        [bad] = await rpc.testmempoolaccept([RAW])
    assert ok.allowed is True and ok.txid == TXID and ok.vsize == 153 and ok.fee_sats == 1141
    assert ok.reject_reason is None
    assert bad.allowed is False and bad.fee_sats is None and bad.vsize is None
    assert bad.reject_reason is not None and bad.reject_reason.startswith(
        "mandatory-script-verify-flag-failed"
    )
    assert bad.reject_details is not None and TXID in bad.reject_details


async def test_getrawtransaction_verbose() -> None:
    replay = Replay("getrawtransaction_confirmed", "getrawtransaction_mempool", "getrawtransaction_unknown")
    async with client(replay) as rpc:
        confirmed = await rpc.getrawtransaction(TXID)
        pending = await rpc.getrawtransaction(TXID)
        with pytest.raises(BitcoindRpcError) as err:
            await rpc.getrawtransaction("00" * 32)
    assert confirmed["txid"] == TXID and confirmed["hex"] == RAW and confirmed["confirmations"] == 3
    assert "confirmations" not in pending and "blockhash" not in pending
    values = [btc_to_sats(o["value"]) for o in confirmed["vout"]]
    assert values == [o.nValue for o in parse_transaction(bytes.fromhex(RAW)).vout] == [150_000, 48_859]
    assert isinstance(confirmed["vout"][0]["value"], Decimal)  # never a float
    assert err.value.code == -5


async def test_scantxoutset() -> None:
    fixture = load("scantxoutset_start")
    descriptor = fixture["request"]["params"][1][0]
    async with client(Replay("scantxoutset_start")) as rpc:
        scan = await rpc.scantxoutset([descriptor])
    assert scan.success and scan.height == 205 and len(scan.unspents) == 2
    assert [u.amount_sats for u in scan.unspents] == [48_859, 5_000_000_000]
    assert scan.total_sats == 5_000_048_859 == sum(u.amount_sats for u in scan.unspents)
    assert scan.unspents[0].txid == TXID and scan.unspents[1].coinbase is True
    assert scan.unspents[0].script_pubkey == bytes.fromhex("0014327a5290c902d8a498ecd2b720ce3a3b6ad5cf2e")


async def test_estimatesmartfee() -> None:
    async with client(Replay("estimatesmartfee_ok", "estimatesmartfee_no_data")) as rpc:
        est = await rpc.estimatesmartfee(6, "economical")
        none = await rpc.estimatesmartfee(2)
    assert est.feerate_btc_per_kvb == Decimal("0.00012345") and est.blocks == 6
    assert est.sat_per_vb == Decimal("12.345")
    assert none.feerate_btc_per_kvb is None and none.sat_per_vb is None and none.errors


async def test_wrong_credentials_and_busy_node() -> None:
    async with client(Replay("unauthorized"), password="wrong") as rpc:
        with pytest.raises(BitcoindUnavailable, match="401"):
            await rpc.estimatesmartfee(6)
    async with client(Replay("work_queue_exceeded")) as rpc:
        with pytest.raises(BitcoindUnavailable, match="Work queue depth exceeded"):
            await rpc.estimatesmartfee(6)


async def test_cookie_file_reread_after_restart(tmp_path: Path) -> None:
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:old")
    replay = Replay("estimatesmartfee_ok", credentials=("__cookie__", "new"))
    async with client(replay, cookie_file=cookie) as rpc:
        cookie.write_text("__cookie__:new")  # bitcoind restarted
        est = await rpc.estimatesmartfee(6, "economical")
    assert est.blocks == 6 and len(replay.requests) == 2  # one 401, one retry with the new cookie


async def test_unreachable_node() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with BitcoindRpcClient(URL, "u", "p", transport=httpx.MockTransport(refuse)) as rpc:
        with pytest.raises(BitcoindUnavailable, match="cannot reach"):
            await rpc.sendrawtransaction(RAW)


def test_constructor_and_amounts() -> None:
    with pytest.raises(ValueError):
        BitcoindRpcClient(URL)
    with pytest.raises(ValueError):
        BitcoindRpcClient(URL, user="u")
    assert btc_to_sats(Decimal("20999999.97690000")) == 2_099_999_997_690_000
    with pytest.raises(ValueError):
        btc_to_sats(Decimal("0.000000001"))
    with pytest.raises(ValueError):
        btc_to_sats(0.1)
