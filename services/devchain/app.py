"""The devchain's HTTP face: an Esplora-compatible REST subset plus ``/dev/*`` controls.

Esplora paths and shapes (Blockstream esplora ``API.md``): text answers are ``text/plain``, objects are
JSON, an unknown transaction or block is 404, malformed input (bad hex, bad txid, an address of another
network, bad JSON, out-of-range numbers) is 400 with the reason as text, and a refused broadcast is 400
with the body Esplora relays from bitcoind: ``sendrawtransaction RPC error: {"code":-26,"message":...}``.

Development controls (not Esplora):

- ``POST /dev/faucet`` ``{"address": str, "sats": int}`` mines one block whose coinbase pays ``sats`` to
  the address, so the funds are confirmed at once (the mempool is not mined); answers
  ``{"txid", "vout", "block_height", "block_hash"}``.
- ``POST /dev/mine`` ``{"blocks": int, "address": str (optional)}`` mines ``blocks`` blocks, the first
  taking the whole mempool; the coinbases pay subsidy + fees to ``address`` (burnt if absent); answers
  ``{"height", "block_hashes"}``.
- ``POST /dev/fee-estimates`` ``{"<target>": sat_per_vb, ...}`` replaces what ``GET /fee-estimates``
  answers (targets 1..1008 blocks, rates 1..1,000,000 sat/vB).
"""

from __future__ import annotations

import json
import math
from typing import Any, TypeVar

import msgspec
from sanic import Request, Sanic
from sanic.exceptions import NotFound
from sanic.response import HTTPResponse, raw, text

from services.devchain.chain import (
    RPC_DESERIALIZATION_ERROR,
    BadRequest,
    Chain,
    Rejected,
    parse_txid,
)

MAX_BODY = 4_000_000  # hex of a max-weight transaction fits with room to spare
T = TypeVar("T")


def json_response(body: Any, status: int = 200) -> HTTPResponse:
    """JSON with msgspec (a wallet's UTXO list can hold tens of thousands of entries)."""
    return raw(msgspec.json.encode(body), status=status, content_type="application/json")


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.body or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _int_field(body: dict[str, Any], name: str, *, default: int | None = None) -> int:
    value = body.get(name, default)
    if value is None:
        raise BadRequest(f"missing field {name!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name!r} must be an integer")
    return value


def _nonneg_int(value: str, what: str) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 10:
        raise BadRequest(f"invalid {what}: {value[:80]!r}")
    return int(value)


def _found(value: T | None, what: str) -> T:
    """``value``, or a 404 naming ``what``."""
    if value is None:
        raise NotFound(f"{what} not found")
    return value


def create_app(chain: Chain, name: str = "devchain") -> Sanic[Any, Any]:
    app = Sanic(name)
    app.config.REQUEST_MAX_SIZE = MAX_BODY
    app.config.FALLBACK_ERROR_FORMAT = "text"
    app.ctx.chain = chain

    # -- blocks -----------------------------------------------------------------------------------

    @app.get("/blocks/tip/height")
    async def tip_height(request: Request) -> HTTPResponse:
        return text(str(chain.tip()[0]))

    @app.get("/blocks/tip/hash")
    async def tip_hash(request: Request) -> HTTPResponse:
        return text(chain.tip()[1])

    @app.get("/block-height/<height:str>")
    async def block_height(request: Request, height: str) -> HTTPResponse:
        return text(_found(chain.block_hash_at(_nonneg_int(height, "block height")), "Block"))

    @app.get("/block/<block_hash:str>")
    async def block(request: Request, block_hash: str) -> HTTPResponse:
        return json_response(_found(chain.block_json(parse_txid(block_hash)), "Block"))

    @app.get("/block/<block_hash:str>/txids")
    async def block_txids(request: Request, block_hash: str) -> HTTPResponse:
        return json_response(_found(chain.block_txids(parse_txid(block_hash)), "Block"))

    # -- addresses --------------------------------------------------------------------------------

    @app.get("/address/<address:str>/utxo")
    async def address_utxo(request: Request, address: str) -> HTTPResponse:
        script = chain.address_script(address)
        return json_response([u.json() for u in chain.utxos(script)])

    # -- transactions -----------------------------------------------------------------------------

    @app.get("/tx/<txid:str>")
    async def tx(request: Request, txid: str) -> HTTPResponse:
        return json_response(_found(chain.tx_json(parse_txid(txid)), "Transaction"))

    @app.get("/tx/<txid:str>/hex")
    async def tx_hex(request: Request, txid: str) -> HTTPResponse:
        return text(_found(chain.tx_raw(parse_txid(txid)), "Transaction").hex())

    @app.get("/tx/<txid:str>/raw")
    async def tx_raw(request: Request, txid: str) -> HTTPResponse:
        found = _found(chain.tx_raw(parse_txid(txid)), "Transaction")
        return raw(found, content_type="application/octet-stream")

    @app.get("/tx/<txid:str>/status")
    async def tx_status(request: Request, txid: str) -> HTTPResponse:
        return json_response(chain.tx_status(parse_txid(txid)))

    @app.get("/tx/<txid:str>/outspend/<vout:str>")
    async def tx_outspend(request: Request, txid: str, vout: str) -> HTTPResponse:
        found = chain.outspend(parse_txid(txid), _nonneg_int(vout, "vout"))
        return json_response(found if found is not None else {"spent": False})

    @app.post("/tx")
    async def broadcast(request: Request) -> HTTPResponse:
        try:
            body = (request.body or b"").decode("ascii").strip()
            if not body:
                raise ValueError("empty body")
            raw_tx = bytes.fromhex(body)
        except ValueError as exc:  # UnicodeDecodeError is a ValueError
            raise Rejected(RPC_DESERIALIZATION_ERROR, f"TX decode failed (body is not hex: {exc})") from exc
        return text(chain.accept(raw_tx))

    @app.get("/mempool/txids")
    async def mempool_txids(request: Request) -> HTTPResponse:
        return json_response(chain.mempool_txids())

    @app.get("/fee-estimates")
    async def fee_estimates(request: Request) -> HTTPResponse:
        return json_response(chain.fee_estimates())

    # -- development controls ---------------------------------------------------------------------

    @app.post("/dev/faucet")
    async def faucet(request: Request) -> HTTPResponse:
        body = _json_body(request)
        address = body.get("address")
        if not isinstance(address, str):
            raise BadRequest("'address' must be a string")
        script = chain.address_script(address)
        sats = _int_field(body, "sats")
        txid, vout, height, block_hash = chain.faucet(script, sats)
        return json_response({"txid": txid, "vout": vout, "block_height": height, "block_hash": block_hash})

    @app.post("/dev/mine")
    async def mine(request: Request) -> HTTPResponse:
        body = _json_body(request) if request.body else {}
        blocks = _int_field(body, "blocks", default=1)
        address = body.get("address")
        if address is not None and not isinstance(address, str):
            raise BadRequest("'address' must be a string")
        script = chain.address_script(address) if address is not None else None
        height, hashes = chain.mine(blocks, script)
        return json_response({"height": height, "block_hashes": hashes})

    @app.post("/dev/fee-estimates")
    async def set_fee_estimates(request: Request) -> HTTPResponse:
        body = _json_body(request)
        if not body:
            raise BadRequest("no estimates given")
        rates: dict[str, float] = {}
        for target, rate in body.items():
            n = _nonneg_int(target, "confirmation target")
            if not 1 <= n <= 1008:
                raise BadRequest(f"confirmation target {n} not in 1..1008")
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate):
                raise BadRequest(f"fee rate for target {n} must be a number")
            if not 1 <= rate <= 1_000_000:
                raise BadRequest(f"fee rate for target {n} must be in 1..1000000 sat/vB")
            rates[str(n)] = float(rate)
        chain.set_fee_estimates(dict(sorted(rates.items(), key=lambda kv: int(kv[0]))))
        return json_response(chain.fee_estimates())

    # -- errors -----------------------------------------------------------------------------------

    @app.exception(BadRequest)
    async def bad_request(request: Request, exc: BadRequest) -> HTTPResponse:
        return text(str(exc), status=400)

    @app.exception(NotFound)
    async def not_found(request: Request, exc: NotFound) -> HTTPResponse:
        return text(str(exc), status=404)

    @app.exception(Rejected)
    async def rejected(request: Request, exc: Rejected) -> HTTPResponse:
        return text(exc.esplora_text(), status=400)

    return app
