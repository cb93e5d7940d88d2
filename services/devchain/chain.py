"""The devchain's state: a header chain, a mempool and the output set, in one SQLite file.

Theory of operation
-------------------
Every transaction the chain knows is a row in ``txs``; ``block_height`` is NULL while it waits in the
mempool. Every output of every known transaction is a row in ``outputs``; ``spent_by`` names the
(mempool or confirmed) transaction that spends it. So "unspent" is ``spent_by IS NULL`` and an input is
spendable when its output exists and is unspent, whether its transaction is confirmed or not (chains of
unconfirmed transactions are allowed, as in Core).

``accept`` runs Bitcoin Core's mempool checks in Core's order and answers Core's reject reasons and
RPC codes (-22 decode, -25 missing inputs, -26 policy/consensus reject, -27 already in chain). Policy
choices, all Core defaults: min relay fee 1 sat/vB (fee >= vsize), dust relay fee 3 sat/vB, standard
versions 1..3, weight <= 400,000, at most one OP_RETURN output. No replace-by-fee: an input already
spent by a mempool transaction is ``txn-mempool-conflict``. A transaction already in the mempool
(same wtxid) is answered with its txid again, as ``sendrawtransaction`` does; one already confirmed is
``-27``. Scripts and signatures are checked by :func:`wallet.verify.verify_transaction`, which
accepts P2WPKH and P2TR key-path inputs only.

``mine`` puts every mempool transaction (in arrival order, so parents precede children) into the next
block, behind a coinbase. ``faucet`` mines a block whose coinbase pays the requested amount to the
requested script: the funds are confirmed at once, and the mempool is left as it was. Coinbase maturity
is not enforced, and blocks carry no witness commitment and no proof of work (bits = regtest's
0x207fffff, nonce 0): headers are real 80-byte headers chained by hash with the merkle root of txids.

One connection, one lock: every public method takes the lock for its whole read-check-write, so
concurrent requests are serialized. WAL journal, ``synchronous=NORMAL``: a process crash loses
nothing committed; an OS crash may lose the last commits (fine for a development chain).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bitcoin.core import COutPoint, CScript, CTransaction, CTxIn, CTxOut, b2lx, lx

from services.devchain.render import BlockRef, is_coinbase, status_json, tx_json
from wallet.address import address_to_script
from wallet.network import network_params
from wallet.script import classify
from wallet.transaction import MAX_MONEY, Prevout, parse_transaction, serialize, vsize, weight, wtxid
from wallet.verify import TransactionInvalid, verify_transaction

MIN_RELAY_SAT_PER_VB = 1  # Core -minrelaytxfee default 1000 sat/kvB
DUST_RELAY_SAT_PER_KVB = 3000  # Core -dustrelayfee default
MAX_FEE_SAT_PER_VB = 10_000  # Core sendrawtransaction maxfeerate default 0.10 BTC/kvB
MAX_STANDARD_TX_WEIGHT = 400_000
MAX_OP_RETURN_SCRIPT = 83
REGTEST_BITS = 0x207FFFFF
HALVING_INTERVAL = 150  # regtest
MAX_MINE_PER_CALL = 1000
ESPLORA_TARGETS = (*range(1, 26), 144, 504, 1008)

RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25
RPC_VERIFY_REJECTED = -26
RPC_VERIFY_ALREADY_IN_CHAIN = -27

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(
    height INTEGER PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    header BLOB NOT NULL,
    time INTEGER NOT NULL,
    tx_count INTEGER NOT NULL,
    size INTEGER NOT NULL,
    weight INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS txs(
    txid TEXT PRIMARY KEY,
    wtxid TEXT NOT NULL,
    raw BLOB NOT NULL,
    fee INTEGER NOT NULL,
    arrival INTEGER NOT NULL,
    block_height INTEGER,
    block_pos INTEGER
);
CREATE INDEX IF NOT EXISTS txs_block ON txs(block_height, block_pos);
CREATE INDEX IF NOT EXISTS txs_arrival ON txs(arrival);
CREATE TABLE IF NOT EXISTS outputs(
    txid TEXT NOT NULL,
    vout INTEGER NOT NULL,
    value INTEGER NOT NULL,
    script BLOB NOT NULL,
    spent_by TEXT,
    spent_vin INTEGER,
    PRIMARY KEY (txid, vout)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outputs_script ON outputs(script);
"""


class Rejected(Exception):
    """A refused ``sendrawtransaction``: Core's RPC error code and reject reason."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)

    def esplora_text(self) -> str:
        """The body Esplora relays from bitcoind on a failed broadcast."""
        return "sendrawtransaction RPC error: " + json.dumps(
            {"code": self.code, "message": self.message}, separators=(",", ":")
        )


class BadRequest(ValueError):
    """Malformed input to a devchain call; the message says what is wrong."""


@dataclass(frozen=True)
class Utxo:
    txid: str
    vout: int
    value: int
    block: BlockRef | None

    def json(self) -> dict[str, Any]:
        return {"txid": self.txid, "vout": self.vout, "status": status_json(self.block), "value": self.value}


def _dsha256(b: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def merkle_root(txids_internal: list[bytes]) -> bytes:
    """Bitcoin's merkle root (internal byte order), duplicating the last hash of an odd level."""
    level = list(txids_internal)
    if not level:
        return b"\x00" * 32
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [_dsha256(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def block_subsidy(height: int) -> int:
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * 100_000_000) >> halvings


def dust_threshold(value_script: bytes) -> int:
    """Core's ``GetDustThreshold`` at the default dust relay fee; 0 for unspendable outputs."""
    if value_script[:1] == b"\x6a":
        return 0
    size = 8 + len(_compact_size(len(value_script))) + len(value_script)
    size += 67 if classify(value_script).witness_version is not None else 148
    return size * DUST_RELAY_SAT_PER_KVB // 1000


def _compact_size(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def parse_txid(txid: str) -> str:
    """A 64-hex-digit txid, lower-cased; :class:`BadRequest` otherwise."""
    if not isinstance(txid, str) or len(txid) != 64:
        raise BadRequest("Invalid hex string: txid must be 64 hex characters")
    try:
        bytes.fromhex(txid)
    except ValueError as exc:
        raise BadRequest("Invalid hex string: txid is not hex") from exc
    return txid.lower()


class Chain:
    """The chain state in ``data_dir/devchain.sqlite3``; see the module docstring."""

    def __init__(self, data_dir: str | Path, network: str = "regtest") -> None:
        network_params(network)  # ValueError for an unknown network
        path = Path(data_dir)
        path.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path / "devchain.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        with self._write():
            stored = self._meta("network")
            if stored is None:
                self._set_meta("network", network)
            elif stored != network:
                raise ValueError(f"data dir holds a {stored} chain, not {network}")
            if self._meta("fee_estimates") is None:
                rates = {str(t): float(MIN_RELAY_SAT_PER_VB) for t in ESPLORA_TARGETS}
                self._set_meta("fee_estimates", json.dumps(rates))
            if self._tip_height_unlocked() < 0:
                self._mine_block_unlocked(None, 0, include_mempool=False)  # genesis
        self.network = network

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def _tip_height_unlocked(self) -> int:
        row = self._db.execute("SELECT MAX(height) FROM blocks").fetchone()
        return -1 if row[0] is None else int(row[0])

    def _block_ref(self, height: int | None) -> BlockRef | None:
        if height is None:
            return None
        row = self._db.execute("SELECT hash, time FROM blocks WHERE height = ?", (height,)).fetchone()
        return BlockRef(height, row[0], int(row[1]))

    # -- reads ------------------------------------------------------------------------------------

    def tip(self) -> tuple[int, str]:
        with self._lock:
            row = self._db.execute("SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
            return int(row[0]), str(row[1])

    def address_script(self, address: str) -> bytes:
        """The scriptPubKey of ``address`` on this chain's network; :class:`BadRequest` otherwise."""
        try:
            return address_to_script(address, self.network)
        except ValueError as exc:
            raise BadRequest(f"Invalid Bitcoin address: {exc}") from exc

    def utxos(self, script: bytes) -> list[Utxo]:
        """Unspent outputs paying ``script``, mempool ones included, confirmed first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT o.txid, o.vout, o.value, t.block_height, b.hash, b.time FROM outputs o"
                " JOIN txs t ON t.txid = o.txid LEFT JOIN blocks b ON b.height = t.block_height"
                " WHERE o.script = ? AND o.spent_by IS NULL"
                " ORDER BY t.block_height IS NULL, t.block_height, t.arrival, o.vout",
                (script,),
            ).fetchall()
            return [
                Utxo(
                    r[0], int(r[1]), int(r[2]), None if r[3] is None else BlockRef(int(r[3]), r[4], int(r[5]))
                )
                for r in rows
            ]

    def tx_raw(self, txid: str) -> bytes | None:
        with self._lock:
            row = self._db.execute("SELECT raw FROM txs WHERE txid = ?", (txid,)).fetchone()
            return None if row is None else bytes(row[0])

    def tx_status(self, txid: str) -> dict[str, Any]:
        """Esplora ``/tx/:txid/status``; an unknown txid is ``{"confirmed": false}`` as in electrs."""
        with self._lock:
            row = self._db.execute("SELECT block_height FROM txs WHERE txid = ?", (txid,)).fetchone()
            return status_json(None if row is None else self._block_ref(row[0]))

    def tx_json(self, txid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT raw, fee, block_height FROM txs WHERE txid = ?", (txid,)
            ).fetchone()
            if row is None:
                return None
            tx = CTransaction.deserialize(bytes(row[0]))
            prevouts: list[tuple[int, bytes] | None] = []
            for txin in tx.vin:
                if txin.prevout.is_null():
                    prevouts.append(None)
                    continue
                p = self._db.execute(
                    "SELECT value, script FROM outputs WHERE txid = ? AND vout = ?",
                    (b2lx(txin.prevout.hash), int(txin.prevout.n)),
                ).fetchone()
                prevouts.append(None if p is None else (int(p[0]), bytes(p[1])))
            return tx_json(tx, prevouts, int(row[1]), self._block_ref(row[2]), self.network)

    def outspend(self, txid: str, vout: int) -> dict[str, Any] | None:
        """Esplora ``/tx/:txid/outspend/:vout``; None if there is no such output."""
        with self._lock:
            row = self._db.execute(
                "SELECT spent_by, spent_vin FROM outputs WHERE txid = ? AND vout = ?", (txid, vout)
            ).fetchone()
            if row is None:
                return None
            if row[0] is None:
                return {"spent": False}
            return {"spent": True, "txid": row[0], "vin": int(row[1]), "status": self.tx_status(row[0])}

    def mempool_txids(self) -> list[str]:
        with self._lock:
            rows = self._db.execute("SELECT txid FROM txs WHERE block_height IS NULL ORDER BY arrival")
            return [r[0] for r in rows]

    def block_hash_at(self, height: int) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT hash FROM blocks WHERE height = ?", (height,)).fetchone()
            return None if row is None else str(row[0])

    def block_json(self, block_hash: str) -> dict[str, Any] | None:
        """Esplora's block format."""
        with self._lock:
            row = self._db.execute(
                "SELECT height, header, time, tx_count, size, weight FROM blocks WHERE hash = ?",
                (block_hash,),
            ).fetchone()
            if row is None:
                return None
            header = bytes(row[1])
            prev = header[4:36]
            return {
                "id": block_hash,
                "height": int(row[0]),
                "version": struct.unpack("<I", header[:4])[0],
                "timestamp": int(row[2]),
                "tx_count": int(row[3]),
                "size": int(row[4]),
                "weight": int(row[5]),
                "merkle_root": header[36:68][::-1].hex(),
                "previousblockhash": None if prev == b"\x00" * 32 else prev[::-1].hex(),
                "mediantime": int(row[2]),
                "nonce": struct.unpack("<I", header[76:80])[0],
                "bits": struct.unpack("<I", header[72:76])[0],
                "difficulty": 4.6565423739069247e-10,
            }

    def block_txids(self, block_hash: str) -> list[str] | None:
        with self._lock:
            row = self._db.execute("SELECT height FROM blocks WHERE hash = ?", (block_hash,)).fetchone()
            if row is None:
                return None
            rows = self._db.execute(
                "SELECT txid FROM txs WHERE block_height = ? ORDER BY block_pos", (row[0],)
            )
            return [r[0] for r in rows]

    def fee_estimates(self) -> dict[str, float]:
        with self._lock:
            return dict(json.loads(self._meta("fee_estimates") or "{}"))

    def set_fee_estimates(self, rates: dict[str, float]) -> None:
        with self._write():
            self._set_meta("fee_estimates", json.dumps(rates))

    # -- writes -----------------------------------------------------------------------------------

    def accept(self, raw: bytes) -> str:
        """Add a transaction to the mempool (Core's ``sendrawtransaction``); its txid, or
        :class:`Rejected`."""
        try:
            tx = parse_transaction(raw)
        except ValueError as exc:
            reason = str(exc)
            if reason.startswith("malformed"):
                raise Rejected(RPC_DESERIALIZATION_ERROR, f"TX decode failed ({reason})") from exc
            raise Rejected(RPC_VERIFY_REJECTED, f"bad-txns ({reason})") from exc
        txid = str(b2lx(tx.GetTxid()))
        if is_coinbase(tx) or any(i.prevout.is_null() for i in tx.vin):
            raise Rejected(RPC_VERIFY_REJECTED, "coinbase")
        self._check_standard(tx)
        with self._write() as db:
            known = db.execute("SELECT wtxid, block_height FROM txs WHERE txid = ?", (txid,)).fetchone()
            if known is not None:
                if known[1] is not None:
                    raise Rejected(RPC_VERIFY_ALREADY_IN_CHAIN, "Transaction already in block chain")
                if known[0] == wtxid(tx):
                    return txid  # already in the mempool: Core answers the txid again
                raise Rejected(RPC_VERIFY_REJECTED, "txn-same-nonwitness-data-in-mempool")
            prevouts: list[Prevout] = []
            for txin in tx.vin:
                row = db.execute(
                    "SELECT o.value, o.script, o.spent_by, t.block_height FROM outputs o"
                    " LEFT JOIN txs t ON t.txid = o.spent_by WHERE o.txid = ? AND o.vout = ?",
                    (b2lx(txin.prevout.hash), int(txin.prevout.n)),
                ).fetchone()
                if row is None or (row[2] is not None and row[3] is not None):
                    raise Rejected(RPC_VERIFY_ERROR, "bad-txns-inputs-missingorspent")
                if row[2] is not None:
                    raise Rejected(RPC_VERIFY_REJECTED, "txn-mempool-conflict")
                prevouts.append(Prevout(int(row[0]), bytes(row[1])))
            value_in = sum(p.amount for p in prevouts)
            value_out = sum(int(o.nValue) for o in tx.vout)
            if value_in < value_out:
                raise Rejected(
                    RPC_VERIFY_REJECTED,
                    f"bad-txns-in-belowout, value in ({value_in}) < value out ({value_out})",
                )
            fee = value_in - value_out
            size = vsize(tx)
            if fee < MIN_RELAY_SAT_PER_VB * size:
                raise Rejected(
                    RPC_VERIFY_REJECTED, f"min relay fee not met, {fee} < {MIN_RELAY_SAT_PER_VB * size}"
                )
            if fee > MAX_FEE_SAT_PER_VB * size:
                raise Rejected(
                    RPC_VERIFY_ERROR,
                    f"Fee exceeds maximum configured by user (e.g. -maxtxfee, maxfeerate): {fee} sat"
                    f" for {size} vB",
                )
            try:
                verify_transaction(tx, prevouts)
            except TransactionInvalid as exc:
                raise Rejected(RPC_VERIFY_REJECTED, f"mandatory-script-verify-flag-failed ({exc})") from exc
            except Exception as exc:  # a verifier fault must not become a 500
                raise Rejected(
                    RPC_VERIFY_REJECTED, f"mandatory-script-verify-flag-failed (verifier error: {exc})"
                ) from exc
            self._insert_tx(tx, txid, fee, None, None)
            for n, txin in enumerate(tx.vin):
                db.execute(
                    "UPDATE outputs SET spent_by = ?, spent_vin = ? WHERE txid = ? AND vout = ?",
                    (txid, n, b2lx(txin.prevout.hash), int(txin.prevout.n)),
                )
            return txid

    def _check_standard(self, tx: CTransaction) -> None:
        if not 1 <= tx.nVersion <= 3:
            raise Rejected(RPC_VERIFY_REJECTED, "version")
        if weight(tx) > MAX_STANDARD_TX_WEIGHT:
            raise Rejected(RPC_VERIFY_REJECTED, "tx-size")
        op_returns = 0
        for out in tx.vout:
            script = bytes(out.scriptPubKey)
            if script[:1] == b"\x6a":
                op_returns += 1
                if len(script) > MAX_OP_RETURN_SCRIPT:
                    raise Rejected(RPC_VERIFY_REJECTED, "scriptpubkey")
                continue
            if classify(script).type == "nonstandard":
                raise Rejected(RPC_VERIFY_REJECTED, "scriptpubkey")
            if out.nValue < dust_threshold(script):
                raise Rejected(RPC_VERIFY_REJECTED, "dust")
        if op_returns > 1:
            raise Rejected(RPC_VERIFY_REJECTED, "multi-op-return")

    def _insert_tx(self, tx: CTransaction, txid: str, fee: int, height: int | None, pos: int | None) -> None:
        db = self._db
        arrival = db.execute("SELECT COALESCE(MAX(arrival), 0) + 1 FROM txs").fetchone()[0]
        db.execute(
            "INSERT INTO txs(txid, wtxid, raw, fee, arrival, block_height, block_pos) VALUES (?,?,?,?,?,?,?)",
            (txid, wtxid(tx), serialize(tx), fee, arrival, height, pos),
        )
        db.executemany(
            "INSERT INTO outputs(txid, vout, value, script) VALUES (?,?,?,?)",
            [(txid, n, int(o.nValue), bytes(o.scriptPubKey)) for n, o in enumerate(tx.vout)],
        )

    def mine(self, blocks: int, script: bytes | None = None) -> tuple[int, list[str]]:
        """Mine ``blocks`` blocks (the first takes the whole mempool), the coinbases paying subsidy and
        fees to ``script`` (burnt in an OP_RETURN when None); (new tip height, block hashes)."""
        if not 1 <= blocks <= MAX_MINE_PER_CALL:
            raise BadRequest(f"blocks must be an integer in 1..{MAX_MINE_PER_CALL}")
        hashes = []
        with self._write():
            for _ in range(blocks):
                hashes.append(self._mine_block_unlocked(script, None, include_mempool=True)[0])
            return self._tip_height_unlocked(), hashes

    def faucet(self, script: bytes, sats: int) -> tuple[str, int, int, str]:
        """Mine a block whose coinbase pays ``sats`` to ``script``; (txid, vout, height, block hash)."""
        if not 1 <= sats <= MAX_MONEY:
            raise BadRequest(f"sats must be an integer in 1..{MAX_MONEY}")
        with self._write():
            block_hash, coinbase_txid = self._mine_block_unlocked(script, sats, include_mempool=False)
            return coinbase_txid, 0, self._tip_height_unlocked(), block_hash

    def _mine_block_unlocked(
        self, script: bytes | None, amount: int | None, *, include_mempool: bool
    ) -> tuple[str, str]:
        db = self._db
        height = self._tip_height_unlocked() + 1
        mempool: list[tuple[str, bytes, int]] = []
        if include_mempool:
            mempool = [
                (r[0], bytes(r[1]), int(r[2]))
                for r in db.execute(
                    "SELECT txid, raw, fee FROM txs WHERE block_height IS NULL ORDER BY arrival"
                )
            ]
        fees = sum(m[2] for m in mempool)
        if amount is None:
            amount = (block_subsidy(height) + fees) if script is not None else 0
        pay_to = script if script is not None else b"\x6a"
        coinbase = CTransaction(
            [CTxIn(COutPoint(), CScript([height, b"devchain"]), 0xFFFFFFFF)],
            [CTxOut(amount, CScript(pay_to))],
            0,
            2,
        )
        coinbase_txid = str(b2lx(coinbase.GetTxid()))
        txids = [coinbase.GetTxid()] + [lx(m[0]) for m in mempool]
        if height == 0:
            prev_hash, prev_time = b"\x00" * 32, 0
        else:
            row = db.execute("SELECT hash, time FROM blocks WHERE height = ?", (height - 1,)).fetchone()
            prev_hash, prev_time = lx(row[0]), int(row[1])
        block_time = max(int(time.time()), prev_time + 1)
        header = (
            struct.pack("<I", 0x20000000)
            + prev_hash
            + merkle_root(txids)
            + struct.pack("<III", block_time, REGTEST_BITS, 0)
        )
        block_hash = _dsha256(header)[::-1].hex()
        raw_coinbase = serialize(coinbase)
        raws = [raw_coinbase] + [m[1] for m in mempool]
        size = 80 + len(_compact_size(len(raws))) + sum(len(r) for r in raws)
        block_weight = 4 * (80 + len(_compact_size(len(raws))))
        block_weight += weight(coinbase) + sum(weight(CTransaction.deserialize(m[1])) for m in mempool)
        db.execute(
            "INSERT INTO blocks(height, hash, header, time, tx_count, size, weight) VALUES (?,?,?,?,?,?,?)",
            (height, block_hash, header, block_time, len(raws), size, block_weight),
        )
        self._insert_tx(coinbase, coinbase_txid, 0, height, 0)
        for pos, (txid, _, _) in enumerate(mempool, start=1):
            db.execute("UPDATE txs SET block_height = ?, block_pos = ? WHERE txid = ?", (height, pos, txid))
        return block_hash, coinbase_txid
