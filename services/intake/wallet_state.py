"""The wallet as the intake sees it: the threshold key's public record (KV ``keys``, proven by the nodes'
statements: ``services.runtime.key_proof``), its Taproot account,
the addresses it watches and their UTXOs on the chain backend, and the spend it builds.

Addresses: receive ``0/0`` (``GET /api/v1/wallet/address``) and change ``1/0`` (where every spend's
change goes). Both are watched for funds; the derivation path of each UTXO travels with the request
(``InputRef.derivation``) so a signer derives the same key and tweaks.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from functools import cached_property
from typing import Final

from schemas.kinds import Scheme
from schemas.kv import KeyRecord
from schemas.messages import InputRef, TxRequested
from services.chain.esplora import EsploraClient
from services.chain.esplora import Utxo as ChainUtxo
from wallet.coin_selection import UnsignedSpend, Utxo, candidate_window
from wallet.threshold_account import CHANGE, RECEIVE, ThresholdAccount
from wallet.transaction import OutPoint

SCHEME: Final[Scheme] = "frost"
RECEIVE_PATH: tuple[int, ...] = (RECEIVE, 0)
CHANGE_PATH: tuple[int, ...] = (CHANGE, 0)
WATCHED: tuple[tuple[int, ...], ...] = (RECEIVE_PATH, CHANGE_PATH)


@dataclass(frozen=True)
class WalletUtxo:
    txid: str
    vout: int
    value: int
    confirmed: bool
    path: tuple[int, ...]
    script_pubkey: bytes

    @property
    def outpoint(self) -> OutPoint:
        return OutPoint(self.txid, self.vout)

    @property
    def spendable(self) -> bool:
        """Confirmed outputs, and our own unconfirmed change (nobody else can double-spend it)."""
        return self.confirmed or self.path[0] == CHANGE

    @cached_property
    def coin(self) -> Utxo:
        return Utxo(self.outpoint, self.value, self.script_pubkey)


class UtxoView:
    """One listing of the wallet's UTXOs, with what every spend built from it needs worked out once: the
    spendable ones, largest first, and (on each, cached) the coin coin selection takes."""

    def __init__(self, utxos: list[WalletUtxo]) -> None:
        self.utxos = utxos
        self.spendable = sorted((u for u in utxos if u.spendable), key=lambda u: (-u.value, u.txid, u.vout))
        self._values = [u.value for u in self.spendable]
        self._outpoints = [(u.txid, u.vout) for u in self.spendable]

    def candidates(
        self, amount: int, limit: int | None, skip: Container[tuple[str, int]] = ()
    ) -> list[WalletUtxo]:
        """The spendable UTXOs a spend of ``amount`` picks from, less the outpoints in ``skip`` (known to
        be reserved): all of them, or with ``limit`` at most that many
        (:func:`wallet.coin_selection.candidate_window`, which looks at about ``limit`` coins however many
        the wallet holds)."""
        if limit is None:
            return [u for u in self.spendable if (u.txid, u.vout) not in skip] if skip else self.spendable
        outpoints = self._outpoints
        taken = (lambda i: outpoints[i] in skip) if skip else None
        return [self.spendable[i] for i in candidate_window(self._values, amount, limit, taken)]


class Wallet:
    def __init__(self, record: KeyRecord, network: str) -> None:
        self.record = record
        self.key_id = record.key_id
        self.network = network
        self.account = ThresholdAccount(record.threshold_pubkey, record.chain_code, network)

    def address(self, path: tuple[int, ...]) -> str:
        return self.account.address(path)

    @property
    def receive_address(self) -> str:
        return self.address(RECEIVE_PATH)

    @property
    def change_script(self) -> bytes:
        return self.account.key(CHANGE_PATH).script_pubkey

    async def utxos(self, esplora: EsploraClient) -> list[WalletUtxo]:
        out: list[WalletUtxo] = []
        for path in WATCHED:
            spk = self.account.key(path).script_pubkey
            found: list[ChainUtxo] = await esplora.utxos(self.address(path))
            out.extend(WalletUtxo(u.txid, u.vout, u.value, u.status.confirmed, path, spk) for u in found)
        return out

    def request(
        self,
        tx_id: str,
        spend: UnsignedSpend,
        utxos: list[WalletUtxo],
        *,
        recipient: str,
        amount: int,
        fee_rate: float,
        requested_by: str,
        requested_at_ms: int,
    ) -> TxRequested:
        """The ``TxRequested`` of an unsigned spend built from ``utxos`` (paths looked up by outpoint)."""
        paths = {(u.txid, u.vout): u.path for u in utxos}
        inputs = [
            InputRef(
                txid=c.outpoint.txid,
                vout=c.outpoint.vout,
                amount=c.amount,
                script_pubkey=c.script_pubkey,
                derivation=list(paths[(c.outpoint.txid, c.outpoint.vout)]),
            )
            for c in spend.inputs
        ]
        return TxRequested(
            tx_id=tx_id,
            key_id=self.key_id,
            scheme=SCHEME,
            network=self.network,
            recipient=recipient,
            amount=amount,
            fee_rate=fee_rate,
            fee=spend.fee,
            unsigned_tx=spend.unsigned_bytes(),
            inputs=inputs,
            change_index=spend.change_index,
            change_derivation=list(CHANGE_PATH) if spend.change_index is not None else [],
            requested_by=requested_by,
            requested_at_ms=requested_at_ms,
        )
