"""Esplora's UTXO list is decoded straight into structs; anything that is not that list is the backend
failing (``ChainBackendUnavailable``), never a crash or a half-read list."""

from __future__ import annotations

import pytest

from services.chain.esplora import ChainBackendUnavailable, TxStatus, Utxo, _utxo_list

TXID = "ab" * 32


def test_a_list_with_confirmed_and_unconfirmed_coins() -> None:
    body = (
        f'[{{"txid":"{TXID}","vout":1,"value":5000,"status":{{"confirmed":true,"block_height":7,'
        f'"block_hash":"{"cd" * 32}","block_time":1700000000}}}},'
        f'{{"txid":"{TXID}","vout":2,"value":6000,"status":{{"confirmed":false}},"extra":"ignored"}}]'
    )
    assert _utxo_list(body) == [
        Utxo(TXID, 1, 5000, TxStatus(True, 7, "cd" * 32, 1_700_000_000)),
        Utxo(TXID, 2, 6000, TxStatus(False)),
    ]
    assert _utxo_list("[]") == []


@pytest.mark.parametrize(
    "body",
    [
        "",
        "not json",
        '{"txid": "x"}',
        f'[{{"txid":"{TXID}","vout":1,"status":{{"confirmed":false}}}}]',  # no value
        f'[{{"txid":"{TXID}","vout":"1","value":5,"status":{{"confirmed":false}}}}]',  # vout a string
        f'[{{"txid":"{TXID}","vout":1,"value":5}}]',  # no status
        f'[{{"txid":"{TXID}","vout":1,"value":5,"status":{{"confirmed":true}}}}]',  # confirmed where?
        f'[{{"txid":"{TXID}","vout":1,"value":5,"status":{{"confirmed":"yes"}}}}]',
    ],
)
def test_anything_else_is_the_backend_failing(body: str) -> None:
    with pytest.raises(ChainBackendUnavailable):
        _utxo_list(body)
