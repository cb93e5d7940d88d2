"""REST request and response bodies of ``intake`` (``/api/v1``), and the policy document in KV ``config``.

Requests are decoded strictly: unknown fields, wrong types and out-of-range values are refused with a
4xx that names the field (``msgspec.ValidationError`` carries the path).
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.kinds import Scheme, TxState

MAX_SATS = 21_000_000 * 100_000_000
# free text that is stored and shown: no NUL (PostgreSQL text cannot hold it) and no other C0 control
# character but tab; \Z, not $ ("$" also matches before a trailing newline)
_TEXT = r"^[^\x00-\x08\x0a-\x1f\x7f]*\Z"

Sats = Annotated[int, msgspec.Meta(gt=0, le=MAX_SATS)]
FeeRate = Annotated[float, msgspec.Meta(ge=1.0, le=10_000.0)]


class SpendRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``POST /api/v1/transactions``."""

    recipient: Annotated[str, msgspec.Meta(min_length=14, max_length=90)]
    amount_sats: Sats
    fee_rate: FeeRate | None = None  # sat/vB; default from the chain's estimate
    scheme: Scheme = "frost"
    idempotency_key: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=_TEXT)] | None = None
    memo: Annotated[str, msgspec.Meta(max_length=256, pattern=_TEXT)] = ""


class Policy(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The spending policy every signer enforces on its own (KV ``config`` key ``policy``)."""

    version: int = 1
    max_tx_sats: Annotated[int, msgspec.Meta(ge=0, le=MAX_SATS)] = 10 * 100_000_000
    daily_limit_sats: Annotated[int, msgspec.Meta(ge=0, le=MAX_SATS)] = 50 * 100_000_000
    max_fee_rate: Annotated[float, msgspec.Meta(ge=1.0, le=100_000.0)] = 500.0  # sat/vB
    max_fee_sats: Annotated[int, msgspec.Meta(ge=0, le=MAX_SATS)] = 1_000_000
    allowlist: list[str] = []  # when non-empty, only these destinations
    denylist: list[str] = []


class TransitionView(msgspec.Struct, kw_only=True):
    state: TxState
    at_ms: int
    detail: str = ""


class VoteView(msgspec.Struct, kw_only=True):
    node: str
    approve: bool
    reasons: list[str] = []


class TransactionView(msgspec.Struct, kw_only=True):
    """``GET /api/v1/transactions/{id}``."""

    id: str
    state: TxState
    recipient: str
    amount_sats: int
    fee_sats: int | None = None
    fee_rate: float | None = None
    txid: str | None = None
    signed_tx_hex: str | None = None
    reasons: list[str] = []
    created_at_ms: int = 0
    updated_at_ms: int = 0
    timeline: list[TransitionView] = []
    votes: list[VoteView] = []


class ErrorBody(msgspec.Struct, kw_only=True):
    error: str
    detail: str = ""
