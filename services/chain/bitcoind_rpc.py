"""Async JSON-RPC client of Bitcoin Core (``bitcoind``), for the calls a broadcaster needs.

Both dialects Core speaks: JSON-RPC 2.0 (Core >= 28 when the request says ``"jsonrpc": "2.0"``: HTTP 200
for every answer, either ``result`` or ``error``) and the legacy 1.0 (``result`` and ``error`` both present,
errors on HTTP 500, 404 for an unknown method). Authentication by ``rpcuser``/``rpcpassword`` or by the
cookie file (``__cookie__:<hex>``), re-read once on HTTP 401 because bitcoind writes a new one when it
restarts.

Amounts arrive in BTC as JSON numbers; they are parsed as ``Decimal`` and turned into integer satoshis,
never floats.

Errors are types: :class:`BitcoindRpcError` ``(code, message)`` for an RPC error answer (``-26`` policy
reject, ``-25`` missing inputs, ``-5`` unknown transaction, ...); :class:`BitcoindUnavailable` when the
node cannot be reached, refuses our credentials, is busy (``Work queue depth exceeded``) or answers
something that is not JSON-RPC.
"""

from __future__ import annotations

import base64
import itertools
import json
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import httpx

COIN = Decimal(100_000_000)

RPC_INVALID_ADDRESS_OR_KEY = -5  # getrawtransaction of an unknown txid
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_METHOD_NOT_FOUND = -32601


class BitcoindRpcError(Exception):
    """An error answer from bitcoind."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"bitcoind RPC error {code}: {message}")


class BitcoindUnavailable(Exception):
    """bitcoind unreachable, busy, refusing our credentials, or not speaking JSON-RPC."""


def btc_to_sats(value: Any) -> int:
    """An exact BTC amount (Decimal or int from the JSON) in satoshis; ValueError if not whole sats."""
    if isinstance(value, bool) or not isinstance(value, (Decimal, int)):
        raise ValueError(f"amount must be a number, got {value!r}")
    sats = Decimal(value) * COIN
    if sats != sats.to_integral_value():
        raise ValueError(f"amount {value} BTC is not a whole number of satoshis")
    return int(sats)


@dataclass(frozen=True)
class MempoolAcceptResult:
    """One entry of ``testmempoolaccept``."""

    txid: str
    wtxid: str | None
    allowed: bool | None  # None: not validated because another package member failed
    vsize: int | None
    fee_sats: int | None
    reject_reason: str | None
    reject_details: str | None = None

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> MempoolAcceptResult:
        fees = obj.get("fees") or {}
        return cls(
            txid=str(obj["txid"]),
            wtxid=obj.get("wtxid"),
            allowed=obj.get("allowed"),
            vsize=obj.get("vsize"),
            fee_sats=btc_to_sats(fees["base"]) if "base" in fees else None,
            reject_reason=obj.get("reject-reason") or obj.get("package-error"),
            reject_details=obj.get("reject-details"),
        )


@dataclass(frozen=True)
class ScannedUtxo:
    txid: str
    vout: int
    script_pubkey: bytes
    desc: str | None
    amount_sats: int
    height: int
    coinbase: bool | None = None  # Core >= 25


@dataclass(frozen=True)
class ScanResult:
    """``scantxoutset start``."""

    success: bool
    height: int | None
    bestblock: str | None
    unspents: list[ScannedUtxo]
    total_sats: int

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ScanResult:
        unspents = [
            ScannedUtxo(
                txid=str(u["txid"]),
                vout=int(u["vout"]),
                script_pubkey=bytes.fromhex(u["scriptPubKey"]),
                desc=u.get("desc"),
                amount_sats=btc_to_sats(u["amount"]),
                height=int(u["height"]),
                coinbase=u.get("coinbase"),
            )
            for u in obj.get("unspents", [])
        ]
        return cls(
            success=bool(obj.get("success", True)),
            height=obj.get("height"),
            bestblock=obj.get("bestblock"),
            unspents=unspents,
            total_sats=btc_to_sats(obj["total_amount"]),
        )


@dataclass(frozen=True)
class FeeEstimate:
    """``estimatesmartfee``: ``feerate`` in BTC/kvB (None when Core has no estimate; see ``errors``)."""

    feerate_btc_per_kvb: Decimal | None
    blocks: int
    errors: list[str]

    @property
    def sat_per_vb(self) -> Decimal | None:
        """The estimate in sat/vB (1 BTC/kvB = 100,000 sat/vB)."""
        if self.feerate_btc_per_kvb is None:
            return None
        return self.feerate_btc_per_kvb * COIN / 1000

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> FeeEstimate:
        rate = obj.get("feerate")
        return cls(
            None if rate is None else Decimal(rate),
            int(obj.get("blocks", 0)),
            [str(e) for e in obj.get("errors", [])],
        )


class BitcoindRpcClient(AbstractAsyncContextManager["BitcoindRpcClient"]):
    """``BitcoindRpcClient("http://127.0.0.1:18443", user="u", password="p")`` or
    ``BitcoindRpcClient(url, cookie_file="~/.bitcoin/regtest/.cookie")``."""

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        *,
        cookie_file: str | Path | None = None,
        jsonrpc: Literal["1.0", "2.0"] = "2.0",
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if (user is None) != (password is None):
            raise ValueError("give both user and password, or neither")
        if user is None and cookie_file is None:
            raise ValueError("give user and password, or a cookie file")
        self.url = url
        self.jsonrpc = jsonrpc
        self._userpass = (user, password) if user is not None and password is not None else None
        self._cookie_file = Path(cookie_file).expanduser() if cookie_file is not None else None
        self._auth = self._read_auth()
        self._ids = itertools.count(1)
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(timeout), transport=transport)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def _read_auth(self) -> str:
        if self._userpass is not None:
            user, password = self._userpass
        else:
            assert self._cookie_file is not None
            try:
                cookie = self._cookie_file.read_text().strip()
            except OSError as exc:
                raise BitcoindUnavailable(f"cannot read cookie file {self._cookie_file}: {exc}") from exc
            user, sep, password = cookie.partition(":")
            if not sep:
                raise BitcoindUnavailable(f"cookie file {self._cookie_file} is not user:password")
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    # -- transport --------------------------------------------------------------------------------

    async def call(self, method: str, *params: Any) -> Any:
        """One RPC; its ``result``, :class:`BitcoindRpcError` or :class:`BitcoindUnavailable`."""
        request_id = next(self._ids)
        body: dict[str, Any] = {"method": method, "params": list(params), "id": request_id}
        body["jsonrpc"] = self.jsonrpc
        payload = json.dumps(body, default=str)
        r = await self._post(payload)
        if r.status_code == 401 and self._cookie_file is not None:
            self._auth = self._read_auth()  # bitcoind restarted and wrote a new cookie
            r = await self._post(payload)
        if r.status_code == 401:
            raise BitcoindUnavailable("bitcoind refused the RPC credentials (HTTP 401)")
        if r.status_code == 503 or (r.status_code == 500 and "Work queue depth exceeded" in r.text):
            raise BitcoindUnavailable(f"bitcoind is busy: {r.text.strip()[:200]}")
        try:
            answer = json.loads(r.text, parse_float=Decimal)
        except ValueError as exc:
            raise BitcoindUnavailable(f"HTTP {r.status_code}, not JSON-RPC: {r.text[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise BitcoindUnavailable(f"HTTP {r.status_code}, not a JSON-RPC response: {r.text[:200]!r}")
        if answer.get("id") != request_id:
            raise BitcoindUnavailable(f"response id {answer.get('id')!r} does not match request {request_id}")
        error = answer.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise BitcoindRpcError(0, str(error))
            raise BitcoindRpcError(int(error.get("code", 0)), str(error.get("message", "")))
        if r.status_code != 200:
            raise BitcoindUnavailable(f"HTTP {r.status_code} without an error object: {r.text[:200]!r}")
        if "result" not in answer:
            raise BitcoindUnavailable(f"response has neither result nor error: {r.text[:200]!r}")
        return answer["result"]

    async def _post(self, payload: str) -> httpx.Response:
        try:
            return await self._http.post(
                self.url,
                content=payload,
                headers={"Authorization": self._auth, "Content-Type": "application/json"},
            )
        except httpx.TransportError as exc:
            raise BitcoindUnavailable(f"cannot reach bitcoind: {type(exc).__name__}: {exc}") from exc

    # -- calls ------------------------------------------------------------------------------------

    async def sendrawtransaction(self, raw_hex: str, maxfeerate: Decimal | None = None) -> str:
        """Broadcast; the txid. ``maxfeerate`` in BTC/kvB (Core's default 0.10 when None)."""
        params: list[Any] = [raw_hex] if maxfeerate is None else [raw_hex, maxfeerate]
        return str(await self.call("sendrawtransaction", *params))

    async def testmempoolaccept(
        self, raw_hexes: list[str], maxfeerate: Decimal | None = None
    ) -> list[MempoolAcceptResult]:
        params: list[Any] = [raw_hexes] if maxfeerate is None else [raw_hexes, maxfeerate]
        result = await self.call("testmempoolaccept", *params)
        if not isinstance(result, list):
            raise BitcoindUnavailable(f"testmempoolaccept answered {str(result)[:200]}")
        return [MempoolAcceptResult.from_json(r) for r in result]

    async def getrawtransaction(self, txid: str, blockhash: str | None = None) -> dict[str, Any]:
        """The verbose (decoded) transaction, amounts as ``Decimal`` BTC; ``BitcoindRpcError(-5, ...)``
        if the node does not know it (needs ``-txindex`` for confirmed transactions not in a given
        block)."""
        params: list[Any] = [txid, True] if blockhash is None else [txid, True, blockhash]
        result = await self.call("getrawtransaction", *params)
        if not isinstance(result, dict):
            raise BitcoindUnavailable(f"getrawtransaction answered {str(result)[:200]}")
        return result

    async def scantxoutset(self, descriptors: list[str]) -> ScanResult:
        """``scantxoutset start``: the confirmed UTXOs matching ``descriptors`` (``addr(...)``,
        ``raw(...)``, ``tr(...)``, ...)."""
        result = await self.call("scantxoutset", "start", descriptors)
        if not isinstance(result, dict):
            raise BitcoindUnavailable(f"scantxoutset answered {str(result)[:200]}")
        return ScanResult.from_json(result)

    async def estimatesmartfee(
        self, conf_target: int, mode: Literal["unset", "economical", "conservative"] | None = None
    ) -> FeeEstimate:
        params: list[Any] = [conf_target] if mode is None else [conf_target, mode]
        result = await self.call("estimatesmartfee", *params)
        if not isinstance(result, dict):
            raise BitcoindUnavailable(f"estimatesmartfee answered {str(result)[:200]}")
        return FeeEstimate.from_json(result)
