"""The intake's UTXO list (``Intake.wallet_utxos``): one fetch from the chain backend at a time, shared by
the requests that need a list no older than theirs, never by one that asks for a fresher list; a
request that goes away leaves the shared fetch running; a backend error is a 503 for every waiter.

And the coins this process reserved (``Intake.reserved_here``): a spend's candidates leave them out while
the list still shows them, and they are forgotten once a later list no longer does."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import services.intake.app as intake_app
from services.chain.esplora import ChainBackendUnavailable, EsploraClient
from services.intake.app import ApiError, Intake
from services.intake.wallet_state import UtxoView, Wallet, WalletUtxo


class SlowWallet:
    """A wallet whose chain lookups take a while and are counted; each returns one more coin."""

    def __init__(self, delay: float = 0.05, fail: bool = False) -> None:
        self.delay, self.fail, self.fetches = delay, fail, 0

    async def utxos(self, esplora: Any) -> list[WalletUtxo]:
        self.fetches += 1
        n = self.fetches
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ChainBackendUnavailable("backend down")
        return [WalletUtxo(f"{i:064x}", 0, 10_000 + i, True, (0, 0), b"\x51") for i in range(n)]


def intake() -> Intake:
    it = Intake(cfg=cast(Any, None), bus=cast(Any, None), pool=cast(Any, None), log=cast(Any, None))
    it.esplora = cast(EsploraClient, object())
    return it


async def test_concurrent_requests_share_one_fetch() -> None:
    it, w = intake(), SlowWallet()
    views = await asyncio.gather(*(it.wallet_utxos(cast(Wallet, w)) for _ in range(20)))
    assert w.fetches == 1 and all(v is views[0] for v in views)
    assert await it.wallet_utxos(cast(Wallet, w)) is views[0]  # fresh enough: no fetch at all
    assert w.fetches == 1


async def test_a_fresher_list_is_never_an_older_fetch() -> None:
    it, w = intake(), SlowWallet()
    first = asyncio.ensure_future(it.wallet_utxos(cast(Wallet, w)))
    await asyncio.sleep(0.01)  # that fetch is under way
    fresh = await it.wallet_utxos(cast(Wallet, w), max_age=0.0)  # must start after this call
    assert w.fetches == 2 and len(fresh.utxos) == 2
    assert len((await first).utxos) == 1
    # the newer list is the one kept, whichever fetch finished last
    assert it._utxos is not None and len(it._utxos[1].utxos) == 2


async def test_a_caller_going_away_leaves_the_fetch_to_the_others() -> None:
    it, w = intake(), SlowWallet()
    leaver = asyncio.ensure_future(it.wallet_utxos(cast(Wallet, w)))
    stayer = asyncio.ensure_future(it.wallet_utxos(cast(Wallet, w)))
    await asyncio.sleep(0.01)
    leaver.cancel()
    assert len((await stayer).utxos) == 1 and w.fetches == 1


async def test_a_backend_error_is_a_503_for_every_waiter_and_the_next_call_tries_again() -> None:
    it, w = intake(), SlowWallet(fail=True)
    results = await asyncio.gather(
        *(it.wallet_utxos(cast(Wallet, w)) for _ in range(3)), return_exceptions=True
    )
    assert w.fetches == 1
    assert all(isinstance(r, ApiError) and r.status == 503 for r in results), results
    w.fail = False
    assert len((await it.wallet_utxos(cast(Wallet, w))).utxos) == 2 and w.fetches == 2


def coins(n: int) -> list[WalletUtxo]:
    return [WalletUtxo(f"{i:064x}", 0, 10_000 + i, True, (0, 0), b"\x51") for i in range(n)]


def test_candidates_leave_out_the_coins_known_reserved() -> None:
    view = UtxoView(coins(500))
    skip = {(u.txid, u.vout) for u in view.spendable[:300]}  # the 300 largest are taken
    picked = view.candidates(10_000, 200, skip)
    assert len(picked) == 200 and not {(u.txid, u.vout) for u in picked} & skip
    # without the skip set, the window's larger half would be coins already taken
    assert {(u.txid, u.vout) for u in view.candidates(10_000, 200)} & skip
    assert len(view.candidates(10_000, None, skip)) == 200  # no window: every free coin
    assert len(view.candidates(10_000, 200, {(u.txid, u.vout) for u in view.spendable[:450]})) == 50


class ListWallet:
    """A wallet whose chain listing is whatever the test sets."""

    def __init__(self, utxos: list[WalletUtxo]) -> None:
        self.listing = utxos

    async def utxos(self, esplora: Any) -> list[WalletUtxo]:
        return list(self.listing)


async def test_a_reserved_coin_is_forgotten_when_a_later_list_no_longer_shows_it() -> None:
    it, w = intake(), ListWallet(coins(3))
    await it.wallet_utxos(cast(Wallet, w))
    a, b = (f"{0:064x}", 0), (f"{1:064x}", 0)
    it.reserved([(*a, 10_000), (*b, 10_001)])
    w.listing = coins(3)[1:]  # coin 0 was spent and left the chain's list; coin 1 is still in flight
    await it.wallet_utxos(cast(Wallet, w), max_age=0.0)
    assert a not in it.reserved_here and b in it.reserved_here


async def test_a_reservation_made_during_a_fetch_is_kept(monkeypatch: Any) -> None:
    it, w = intake(), SlowWallet(delay=0.05)
    fetch = asyncio.ensure_future(it.wallet_utxos(cast(Wallet, w)))
    await asyncio.sleep(0.01)
    late = ("ff" * 32, 0)  # not in the list being fetched: its funding is newer than the fetch
    it.reserved([(*late, 1)])
    await fetch
    assert late in it.reserved_here
    monkeypatch.setattr(intake_app, "RESERVED_HERE_MAX_S", 0.0)  # ... but not forever
    await it.wallet_utxos(cast(Wallet, w), max_age=0.0)
    assert late not in it.reserved_here
