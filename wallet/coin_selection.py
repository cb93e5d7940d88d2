"""Coin selection and the unsigned spend the signers check.

``build_spend`` is deterministic: the same UTXO set and request always give the same inputs, outputs and
fee, so a signer can rebuild the spend from the request and compare (``UnsignedSpend.check`` rechecks
the fee arithmetic and the ceilings on a spend received from someone else).

Selection is branch-and-bound (Bitcoin Core's BnB: an input set whose effective value lands within
``cost_of_change`` above the target, so no change output is needed), falling back to largest-first with
a change output. Change below its dust limit is dropped and goes to the fee.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bitcoin.core import CTransaction

from wallet.fees import dust_limit, estimate_vsize, fee_for, input_vbytes, output_bytes, transaction_weight
from wallet.script import classify
from wallet.sighash import (
    SIGHASH_ALL,
    SIGHASH_DEFAULT,
    SighashCache,
    bip143_sighash,
    bip341_sighash,
    p2wpkh_script_code,
)
from wallet.transaction import (
    SEQUENCE_FINAL,
    SEQUENCE_RBF,
    OutPoint,
    Prevout,
    TxOutput,
    build_transaction,
    serialize,
    with_witnesses,
)
from wallet.verify import verify_transaction

BNB_MAX_TRIES = 100_000
DEFAULT_MAX_FEE_RATE = 1_000.0  # sat/vB
DEFAULT_MAX_FEE = 10_000_000  # sat (0.1 BTC)


class InsufficientFunds(ValueError):
    def __init__(self, available: int, needed: int) -> None:
        self.available, self.needed = available, needed
        super().__init__(f"insufficient funds: {available} sat available, {needed} sat needed")


class AmountBelowDust(ValueError):
    def __init__(self, amount: int, dust: int) -> None:
        self.amount, self.dust = amount, dust
        super().__init__(f"amount {amount} sat is below the dust limit {dust} sat for this output type")


class FeeTooHigh(ValueError):
    def __init__(self, fee: int, vsize: int, limit: str) -> None:
        self.fee, self.vsize = fee, vsize
        super().__init__(f"fee too high: {fee} sat for {vsize} vB ({fee / vsize:.2f} sat/vB); {limit}")


@dataclass(frozen=True)
class Utxo:
    """A spendable output of the wallet (P2TR or P2WPKH)."""

    outpoint: OutPoint
    amount: int
    script_pubkey: bytes

    @property
    def prevout(self) -> Prevout:
        return Prevout(self.amount, self.script_pubkey)


@dataclass(frozen=True)
class UnsignedSpend:
    inputs: tuple[Utxo, ...]
    outputs: tuple[TxOutput, ...]
    fee: int
    vsize: int  # estimated vsize of the signed transaction (see wallet.fees)
    change_index: int | None
    sequence: int = SEQUENCE_RBF
    version: int = 2
    locktime: int = 0
    _cache: dict[str, object] = field(default_factory=dict, compare=False, repr=False)

    @property
    def prevouts(self) -> list[Prevout]:
        return [u.prevout for u in self.inputs]

    @property
    def fee_rate(self) -> float:
        return self.fee / self.vsize

    @property
    def rbf(self) -> bool:
        return self.sequence < 0xFFFFFFFE

    def tx(self) -> CTransaction:
        """The unsigned transaction (no witnesses)."""
        tx = self._cache.get("tx")
        if not isinstance(tx, CTransaction):
            tx = build_transaction(
                [(u.outpoint, self.sequence) for u in self.inputs],
                self.outputs,
                version=self.version,
                locktime=self.locktime,
            )
            self._cache["tx"] = tx
        return tx

    def unsigned_bytes(self) -> bytes:
        return serialize(self.tx())

    def sighash(self, index: int, hash_type: int | None = None) -> bytes:
        """The message input ``index`` signs: BIP-341 for P2TR (default SIGHASH_DEFAULT), BIP-143 for
        P2WPKH (default SIGHASH_ALL)."""
        cache = self._cache.get("sighash")
        if not isinstance(cache, SighashCache):
            cache = SighashCache(self.tx(), self.prevouts)
            self._cache["sighash"] = cache
        utxo = self.inputs[index]
        info = classify(utxo.script_pubkey)
        if info.type == "p2tr":
            ht = SIGHASH_DEFAULT if hash_type is None else hash_type
            return bip341_sighash(self.tx(), self.prevouts, index, ht, cache=cache)
        if info.type == "p2wpkh":
            ht = SIGHASH_ALL if hash_type is None else hash_type
            return bip143_sighash(
                self.tx(), index, p2wpkh_script_code(info.program), utxo.amount, ht, cache=cache
            )
        raise ValueError(f"input {index} spends {info.type}, which the wallet cannot sign")

    def signed_tx(self, witnesses: Sequence[Sequence[bytes]]) -> CTransaction:
        """The transaction with one witness per input (not verified)."""
        return with_witnesses(self.tx(), witnesses)

    def finalize(self, witnesses: Sequence[Sequence[bytes]]) -> bytes:
        """The network serialization with the witnesses, after :func:`verify_transaction` passes."""
        tx = self.signed_tx(witnesses)
        verify_transaction(tx, self.prevouts)
        return serialize(tx)

    def check(self, *, max_fee: int = DEFAULT_MAX_FEE, max_fee_rate: float = DEFAULT_MAX_FEE_RATE) -> None:
        """Recheck a received spend: fee = inputs - outputs, vsize as estimated, no dust, ceilings."""
        total_in = sum(u.amount for u in self.inputs)
        total_out = sum(o.amount for o in self.outputs)
        if total_in - total_out != self.fee:
            raise ValueError(
                f"fee {self.fee} sat does not equal inputs - outputs = {total_in - total_out} sat"
            )
        vsize = estimate_vsize(
            [u.script_pubkey for u in self.inputs], [o.script_pubkey for o in self.outputs]
        )
        if vsize != self.vsize:
            raise ValueError(f"vsize {self.vsize} does not match the estimate {vsize}")
        for o in self.outputs:
            if o.amount < dust_limit(o.script_pubkey):
                raise AmountBelowDust(o.amount, dust_limit(o.script_pubkey))
        check_fee(self.fee, self.vsize, max_fee, max_fee_rate)


def check_fee(fee: int, vsize: int, max_fee: int, max_fee_rate: float) -> None:
    if fee > max_fee:
        raise FeeTooHigh(fee, vsize, f"ceiling {max_fee} sat")
    if fee > vsize * max_fee_rate:
        raise FeeTooHigh(fee, vsize, f"ceiling {max_fee_rate} sat/vB")


def candidate_window(
    values_desc: Sequence[int], amount: int, limit: int, taken: Callable[[int], bool] | None = None
) -> list[int]:
    """The indices of at most ``limit`` coins to select from when a wallet holds more than that, so one
    spend costs the same however many coins the wallet has: the largest half (few inputs pay any
    amount), then, around ``amount``, the smallest coins that pay it alone and the largest that do not
    (where branch and bound finds sets without change). ``values_desc`` is sorted descending.

    ``taken(i)``: coin ``i`` is not to be chosen (reserved by another spend). The window is then the one
    the coins left over would give, found by walking out from its edges, so it costs about ``limit``
    steps plus the taken coins met on the way, not a pass over the whole wallet."""
    n = len(values_desc)
    if taken is None and n <= limit:
        return list(range(n))
    skip = taken or (lambda i: False)
    big = limit // 2
    near = limit - big
    out: list[int] = []
    i = 0
    while i < n and len(out) < big:
        if not skip(i):
            out.append(i)
        i += 1
    floor = i  # the coins around the amount come after the largest ones
    lo, hi = floor, n  # lo: the first coin (at or after floor) worth less than ``amount``
    while lo < hi:
        mid = (lo + hi) // 2
        if values_desc[mid] >= amount:
            lo = mid + 1
        else:
            hi = mid
    above: list[int] = []  # worth at least ``amount``, smallest first
    j = lo - 1
    while j >= floor and len(above) < near // 2:
        if not skip(j):
            above.append(j)
        j -= 1
    below: list[int] = []  # worth less, largest first
    k = lo
    while k < n and len(above) + len(below) < near:
        if not skip(k):
            below.append(k)
        k += 1
    while j >= floor and len(above) + len(below) < near:  # too few below: more from above
        if not skip(j):
            above.append(j)
        j -= 1
    return out + above[::-1] + below


def select_bnb(utxos: Sequence[Utxo], target: int, cost_of_change: int, fee_rate: float) -> list[Utxo] | None:
    """Depth-first search for inputs whose effective values sum to [target, target + cost_of_change],
    minimising the excess; None when no such set is found within BNB_MAX_TRIES."""
    vbytes: dict[bytes, float] = {}  # per script: a wallet's UTXOs share few scripts
    valued = []
    for u in utxos:
        size = vbytes.get(u.script_pubkey)
        if size is None:
            size = vbytes[u.script_pubkey] = input_vbytes(u.script_pubkey)
        value = u.amount - fee_for(size, fee_rate)
        if value > 0:
            valued.append((-value, u.outpoint.txid, u.outpoint.vout, u))
    valued.sort(key=lambda e: e[:3])
    pool = [e[3] for e in valued]
    values = [-e[0] for e in valued]
    remaining_after = [0] * (len(values) + 1)  # remaining_after[i] = sum(values[i:])
    for i in range(len(values) - 1, -1, -1):
        remaining_after[i] = remaining_after[i + 1] + values[i]
    if remaining_after[0] < target:
        return None
    best: list[int] | None = None
    best_excess = cost_of_change + 1
    tries = 0
    chosen: list[int] = []
    # depth-first, with an explicit stack (a recursion would be as deep as the wallet has coins):
    # (i, total, False) visits position i; (i, total, True) comes back from the branch that included i
    # and goes on to the branch that excludes it
    stack: list[tuple[int, int, bool]] = [(0, 0, False)]
    while stack:
        i, total, back = stack.pop()
        if back:
            chosen.pop()
            # excluding i: skip the next UTXOs of the same effective value (their subsets were explored
            # with i included)
            j = i + 1
            while j < len(values) and values[j] == values[i]:
                j += 1
            stack.append((j, total, False))
            continue
        tries += 1
        if tries > BNB_MAX_TRIES or total > target + cost_of_change:
            continue
        if total >= target:
            if total - target < best_excess:
                best, best_excess = list(chosen), total - target
            continue
        if i == len(values) or total + remaining_after[i] < target:
            continue
        chosen.append(i)
        stack.append((i, total, True))
        stack.append((i + 1, total + values[i], False))
    return None if best is None else [pool[i] for i in best]


def build_spend(
    utxos: Sequence[Utxo],
    recipient_script: bytes,
    amount: int,
    change_script: bytes,
    fee_rate: float,
    *,
    max_fee: int = DEFAULT_MAX_FEE,
    max_fee_rate: float = DEFAULT_MAX_FEE_RATE,
    rbf: bool = True,
    locktime: int = 0,
    version: int = 2,
    strategy: Literal["bnb", "largest_first"] = "bnb",
) -> UnsignedSpend:
    """Select inputs and build the unsigned spend paying ``amount`` to ``recipient_script``.

    Raises :class:`AmountBelowDust`, :class:`InsufficientFunds` or :class:`FeeTooHigh`."""
    if amount <= 0:
        raise ValueError("amount must be positive")
    if fee_rate <= 0:
        raise ValueError("fee rate must be positive")
    if fee_rate > max_fee_rate:
        raise FeeTooHigh(0, 1, f"requested rate {fee_rate} sat/vB exceeds ceiling {max_fee_rate} sat/vB")
    dust = dust_limit(recipient_script)
    if amount < dust:
        raise AmountBelowDust(amount, dust)
    for script in {u.script_pubkey for u in utxos}:
        input_vbytes(script)  # ValueError for a UTXO type the wallet cannot spend
    sequence = SEQUENCE_RBF if rbf else SEQUENCE_FINAL
    recipient = TxOutput(amount, recipient_script)
    # everything but the inputs: header, recipient output, segwit marker
    base_fee_target = amount + fee_for((transaction_weight([], [recipient_script]) + 2) / 4, fee_rate)
    change_out_fee = fee_for(output_bytes(change_script), fee_rate)
    change_spend_fee = fee_for(input_vbytes(change_script), fee_rate)
    cost_of_change = change_out_fee + change_spend_fee

    def finish(inputs: list[Utxo], with_change: bool) -> UnsignedSpend | None:
        inputs = sorted(inputs, key=lambda u: (u.outpoint.txid, u.outpoint.vout))
        scripts = [u.script_pubkey for u in inputs]
        total_in = sum(u.amount for u in inputs)
        if with_change:
            vsize = estimate_vsize(scripts, [recipient_script, change_script])
            fee = fee_for(vsize, fee_rate)
            change = total_in - amount - fee
            if change >= dust_limit(change_script):
                outs = (recipient, TxOutput(change, change_script))
                return UnsignedSpend(tuple(inputs), outs, fee, vsize, 1, sequence, version, locktime)
        vsize = estimate_vsize(scripts, [recipient_script])
        fee = fee_for(vsize, fee_rate)
        if total_in - amount < fee:
            return None
        # change dropped (none wanted, or below dust): the excess goes to the fee
        return UnsignedSpend(
            tuple(inputs), (recipient,), total_in - amount, vsize, None, sequence, version, locktime
        )

    spend: UnsignedSpend | None = None
    if strategy == "bnb":
        chosen = select_bnb(utxos, base_fee_target, cost_of_change, fee_rate)
        if chosen is not None:
            spend = finish(chosen, with_change=False)
    if spend is None:
        ordered = sorted(utxos, key=lambda u: (-u.amount, u.outpoint.txid, u.outpoint.vout))
        picked: list[Utxo] = []
        for u in ordered:
            picked.append(u)
            spend = finish(picked, with_change=True)
            if spend is not None:
                break
    if spend is None:
        available = sum(u.amount for u in utxos)
        scripts = [u.script_pubkey for u in utxos]
        needed = amount + fee_for(estimate_vsize(scripts, [recipient_script]), fee_rate)
        raise InsufficientFunds(available, needed)
    check_fee(spend.fee, spend.vsize, max_fee, max_fee_rate)
    return spend
