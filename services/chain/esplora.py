"""Async client of an Esplora REST API (Blockstream esplora / electrs, mempool.space, the devchain).

Only what the services need: the tip, a block's hash and txids, an address's UTXOs, a transaction
(JSON, hex, status), broadcast and fee estimates. Paths and shapes follow esplora's ``API.md``.

Errors are types:

- :class:`ChainBackendUnavailable`: the backend could not be reached or answered 5xx/429 (after the
  retries, for reads), or answered something that is not Esplora.
- :class:`BroadcastRejected`: ``POST /tx`` answered 400; ``code``/``reason`` are bitcoind's when the body
  is the usual ``sendrawtransaction RPC error: {"code":..,"message":..}``.
- :class:`TxNotFound`: 404 for a transaction.
- :class:`EsploraBadRequest` (also a ``ValueError``): the backend refused our input with 400 (an address
  of another network, say).

Reads (GET) are idempotent and retried on transport errors, timeouts, 429 and 5xx with exponential
backoff, ``retries`` times. A broadcast is retried when the connection could not be opened (the
request never left); after a timeout the caller may broadcast again, which Esplora answers with the
txid (mempool) or ``-27`` (already confirmed). A broadcast is also retried when a kept-alive connection
turns out closed (a restarted backend): repeating it is harmless for the same reason.
"""

from __future__ import annotations

import asyncio
import json
import re
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import msgspec

_TXID = re.compile(r"^[0-9a-fA-F]{64}\Z")
_RPC_ERROR_PREFIX = "sendrawtransaction RPC error: "
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class EsploraError(Exception):
    """Base of every error the client raises."""


class ChainBackendUnavailable(EsploraError):
    """The chain backend is unreachable, overloaded, or not answering like Esplora."""


class TxNotFound(EsploraError, LookupError):
    def __init__(self, txid: str) -> None:
        self.txid = txid
        super().__init__(f"transaction {txid} not found")


class EsploraBadRequest(EsploraError, ValueError):
    """The backend answered 400 to a read: our input is malformed for it."""


class BroadcastRejected(EsploraError):
    """The backend refused the transaction; ``reason`` is bitcoind's reject reason when known."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason if code is None else f"{reason} (code {code})")


class TxStatus(msgspec.Struct, frozen=True):
    confirmed: bool
    block_height: int | None = None
    block_hash: str | None = None
    block_time: int | None = None

    def confirmations(self, tip_height: int) -> int:
        """0 while unconfirmed, else ``tip - block_height + 1``."""
        if not self.confirmed or self.block_height is None:
            return 0
        return max(0, tip_height - self.block_height + 1)

    @classmethod
    def from_json(cls, obj: Any) -> TxStatus:
        if not isinstance(obj, dict) or not isinstance(obj.get("confirmed"), bool):
            raise ChainBackendUnavailable(f"malformed status from backend: {str(obj)[:200]}")
        if not obj["confirmed"]:
            return cls(False)
        try:
            return cls(True, int(obj["block_height"]), str(obj["block_hash"]), int(obj["block_time"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ChainBackendUnavailable(f"malformed status from backend: {str(obj)[:200]}") from exc


class Utxo(msgspec.Struct, frozen=True):
    txid: str
    vout: int
    value: int
    status: TxStatus


# a wallet can hold tens of thousands of UTXOs: their list is decoded straight into structs
_UTXO_LIST = msgspec.json.Decoder(list[Utxo])


def _utxo_list(body: str) -> list[Utxo]:
    """Esplora's ``/address/:address/utxo`` answer; ChainBackendUnavailable if it is not that."""
    try:
        utxos = _UTXO_LIST.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ChainBackendUnavailable(f"malformed utxo list from backend: {str(exc)[:200]}") from exc
    for u in utxos:
        st = u.status
        if st.confirmed and (st.block_height is None or st.block_hash is None or st.block_time is None):
            raise ChainBackendUnavailable(f"malformed status from backend: {st}")
    return utxos


def _check_txid(txid: str) -> str:
    if not isinstance(txid, str) or not _TXID.match(txid):
        raise ValueError(f"not a txid (64 hex characters): {str(txid)[:80]!r}")
    return txid.lower()


def parse_broadcast_error(body: str) -> BroadcastRejected:
    """The rejection Esplora relays: bitcoind's code and message when the body has them."""
    text = body.strip()
    if text.startswith(_RPC_ERROR_PREFIX):
        try:
            detail = json.loads(text[len(_RPC_ERROR_PREFIX) :])
            if isinstance(detail, dict) and isinstance(detail.get("message"), str):
                code = detail.get("code")
                return BroadcastRejected(detail["message"], code if isinstance(code, int) else None)
        except ValueError:
            pass
        return BroadcastRejected(text[len(_RPC_ERROR_PREFIX) :])
    return BroadcastRejected(text or "rejected without a reason")


@dataclass(frozen=True)
class _Response:
    status_code: int
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


_TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError)


def _describe(exc: BaseException) -> str:
    name = "Timeout" if isinstance(exc, asyncio.TimeoutError) else type(exc).__name__
    return f"{name}: {exc}"


class EsploraClient(AbstractAsyncContextManager["EsploraClient"]):
    """``async with EsploraClient("http://127.0.0.1:3002") as esplora: await esplora.tip_height()``.

    One keep-alive connection pool (aiohttp: the broadcaster calls this on every spend, and httpx cost
    several times more CPU per request), opened on first use inside the running loop.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff: float = 0.2,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- transport --------------------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": "mpc-wallet"},
            )
        return self._session

    async def _request(self, method: str, path: str, body: str | None = None) -> _Response:
        headers = {"Content-Type": "text/plain"} if body is not None else None
        async with self._http().request(method, self.base_url + path, data=body, headers=headers) as r:
            return _Response(r.status, await r.text(errors="replace"))

    async def _get(self, path: str) -> _Response:
        """GET with bounded retries; answers 2xx/4xx responses, raises for the rest."""
        last: str = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = await self._request("GET", path)
            except _TRANSPORT_ERRORS as exc:  # connect/read/write errors and timeouts
                last = _describe(exc)
                continue
            if r.status_code in _RETRY_STATUS:
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                continue
            if r.status_code >= 500 or (300 <= r.status_code < 400):
                raise ChainBackendUnavailable(f"GET {path}: HTTP {r.status_code}: {r.text[:200]}")
            return r
        raise ChainBackendUnavailable(f"GET {path} failed after {self.retries + 1} attempts: {last}")

    async def _get_ok(self, path: str) -> _Response:
        r = await self._get(path)
        if r.status_code == 400:
            raise EsploraBadRequest(f"GET {path}: {r.text[:300]}")
        if r.status_code != 200:
            raise ChainBackendUnavailable(f"GET {path}: HTTP {r.status_code}: {r.text[:200]}")
        return r

    async def _get_json(self, path: str) -> Any:
        r = await self._get_ok(path)
        try:
            return r.json()
        except ValueError as exc:
            raise ChainBackendUnavailable(f"GET {path}: not JSON: {r.text[:200]}") from exc

    async def _get_tx(self, txid: str, suffix: str = "") -> _Response:
        path = f"/tx/{_check_txid(txid)}{suffix}"
        r = await self._get(path)
        if r.status_code == 404:
            raise TxNotFound(txid)
        if r.status_code == 400:
            raise EsploraBadRequest(f"GET {path}: {r.text[:300]}")
        if r.status_code != 200:
            raise ChainBackendUnavailable(f"GET {path}: HTTP {r.status_code}: {r.text[:200]}")
        return r

    # -- API --------------------------------------------------------------------------------------

    async def tip_height(self) -> int:
        r = await self._get_ok("/blocks/tip/height")
        try:
            return int(r.text.strip())
        except ValueError as exc:
            raise ChainBackendUnavailable(f"tip height is not a number: {r.text[:100]!r}") from exc

    async def tip_hash(self) -> str:
        r = await self._get_ok("/blocks/tip/hash")
        text = r.text.strip()
        if not _TXID.match(text):
            raise ChainBackendUnavailable(f"tip hash is not a hash: {text[:100]!r}")
        return text

    async def block_hash_at(self, height: int) -> str:
        """The hash of the main-chain block at ``height``."""
        if not isinstance(height, int) or height < 0:
            raise ValueError(f"block height must be a non-negative int: {height!r}")
        r = await self._get_ok(f"/block-height/{height}")
        text = r.text.strip()
        if not _TXID.match(text):
            raise ChainBackendUnavailable(f"block hash is not a hash: {text[:100]!r}")
        return text.lower()

    async def block_txids(self, block_hash: str) -> list[str]:
        """The txids of a block, in block order."""
        body = await self._get_json(f"/block/{_check_txid(block_hash)}/txids")
        if not isinstance(body, list) or not all(isinstance(t, str) and _TXID.match(t) for t in body):
            raise ChainBackendUnavailable(f"txid list expected, got {str(body)[:200]}")
        return [t.lower() for t in body]

    async def utxos(self, address: str) -> list[Utxo]:
        """Unspent outputs of ``address``, unconfirmed ones included (Esplora's mempool view)."""
        if not isinstance(address, str) or not address:
            raise ValueError("address must be a non-empty string")
        return _utxo_list((await self._get_ok(f"/address/{quote(address, safe='')}/utxo")).text)

    async def tx(self, txid: str) -> dict[str, Any]:
        """Esplora's transaction JSON; :class:`TxNotFound` if unknown."""
        r = await self._get_tx(txid)
        try:
            body = r.json()
        except ValueError as exc:
            raise ChainBackendUnavailable(f"transaction is not JSON: {r.text[:200]}") from exc
        if not isinstance(body, dict):
            raise ChainBackendUnavailable(f"transaction object expected, got {str(body)[:200]}")
        return body

    async def tx_hex(self, txid: str) -> str:
        r = await self._get_tx(txid, "/hex")
        text = r.text.strip()
        try:
            bytes.fromhex(text)
        except ValueError as exc:
            raise ChainBackendUnavailable(f"transaction hex is not hex: {text[:100]!r}") from exc
        return text

    async def tx_status(self, txid: str) -> TxStatus:
        """Confirmation status; an unknown txid is unconfirmed (Esplora does not tell them apart:
        use :meth:`tx` for that)."""
        r = await self._get_tx(txid, "/status")
        try:
            return TxStatus.from_json(r.json())
        except ValueError as exc:
            raise ChainBackendUnavailable(f"status is not JSON: {r.text[:200]}") from exc

    async def broadcast(self, raw_hex: str) -> str:
        """``POST /tx``; the txid, or :class:`BroadcastRejected` with the backend's reason."""
        if not isinstance(raw_hex, str):
            raise ValueError("raw transaction must be a hex string")
        body = raw_hex.strip()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff * 2 ** (attempt - 1))
            try:
                r = await self._request("POST", "/tx", body)
            except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                # not connected, or a kept-alive connection the server had closed: try again (a
                # transaction broadcast twice is answered with its txid or "already known")
                last = _describe(exc)
                continue
            except _TRANSPORT_ERRORS as exc:
                raise ChainBackendUnavailable(f"POST /tx: {_describe(exc)}") from exc
            if r.status_code == 200:
                txid = r.text.strip()
                if not _TXID.match(txid):
                    raise ChainBackendUnavailable(f"POST /tx answered no txid: {txid[:100]!r}")
                return txid.lower()
            if r.status_code == 400:
                raise parse_broadcast_error(r.text)
            raise ChainBackendUnavailable(f"POST /tx: HTTP {r.status_code}: {r.text[:200]}")
        raise ChainBackendUnavailable(f"POST /tx: cannot connect after {self.retries + 1} attempts: {last}")

    async def fee_estimates(self) -> dict[int, float]:
        """Confirmation target (blocks) -> fee rate (sat/vB)."""
        body = await self._get_json("/fee-estimates")
        if not isinstance(body, dict):
            raise ChainBackendUnavailable(f"fee estimates object expected, got {str(body)[:200]}")
        try:
            return {int(k): float(v) for k, v in body.items()}
        except (TypeError, ValueError) as exc:
            raise ChainBackendUnavailable(f"malformed fee estimates: {str(body)[:200]}") from exc
