"""What a signer checks before it votes for, or signs, a spend (pure: no I/O).

A signer trusts nobody's description of a spend: it parses the unsigned transaction itself, checks that
every input spends one of its own Taproot outputs (the prevout script is the one it derives for the
stated path), that the outputs are exactly the payment and at most one change output back to its own
change address, recomputes the fee and fee rate, applies the policy, and recomputes each input's BIP-341
sighash. The vote carries those sighashes; a signer later signs only a sighash it recomputed itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.scheme import UnknownScheme, scheme_for
from schemas.messages import TxRequested
from schemas.rest import Policy
from wallet.address import InvalidAddress, address_to_script
from wallet.threshold_account import ThresholdAccount
from wallet.transaction import OutPoint, Prevout, outpoints_of, outputs_of, parse_transaction

# vsize of a P2TR key-path input's witness: 1 (item count) + 1 (length) + 64 (signature) = 66 WU
P2TR_KEYPATH_WITNESS_WU = 66


@dataclass(frozen=True)
class SpendCheck:
    reasons: list[str]  # empty: the spend is acceptable
    sighashes: list[bytes]
    prevouts: list[Prevout]
    fee: int
    vsize: int

    @property
    def ok(self) -> bool:
        return not self.reasons


def signed_vsize(unsigned_tx_len_stripped: int, n_inputs: int) -> int:
    """vsize of the transaction once every P2TR key-path input has its 64-byte signature."""
    weight = 4 * unsigned_tx_len_stripped + 2 + n_inputs * P2TR_KEYPATH_WITNESS_WU  # +2: marker, flag
    return (weight + 3) // 4


def check_spend(
    req: TxRequested, policy: Policy | None, account: ThresholdAccount, spent_today: int = 0
) -> SpendCheck:
    """Recheck ``req`` from scratch; ``spent_today`` is what this node already approved in the window.
    With ``policy`` None only the structure is checked (what the transaction is, not whether it is
    allowed): a signer re-reading a request it approved before a restart."""
    reasons: list[str] = []
    try:
        scheme = scheme_for(req.scheme)
    except UnknownScheme as exc:
        return SpendCheck([str(exc)], [], [], 0, 0)
    if req.network != account.network:
        return SpendCheck([f"network {req.network} differs from this node's {account.network}"], [], [], 0, 0)
    try:
        tx = parse_transaction(req.unsigned_tx)
    except ValueError as exc:
        return SpendCheck([f"unsigned transaction: {exc}"], [], [], 0, 0)
    if tx.has_witness():
        return SpendCheck(["unsigned transaction already carries witnesses"], [], [], 0, 0)
    outpoints = outpoints_of(tx)
    if len(req.inputs) != len(outpoints):
        return SpendCheck([f"{len(req.inputs)} input descriptions for {len(outpoints)} inputs"], [], [], 0, 0)

    prevouts: list[Prevout] = []
    for i, (ref, op) in enumerate(zip(req.inputs, outpoints, strict=True)):
        if OutPoint(ref.txid, ref.vout) != op:
            reasons.append(f"input {i}: description does not match the transaction's outpoint")
        try:
            own = account.key(tuple(ref.derivation)).script_pubkey
        except ValueError as exc:
            reasons.append(f"input {i}: derivation {ref.derivation}: {exc}")
            own = b""
        if ref.script_pubkey != own:
            reasons.append(f"input {i}: does not spend one of this wallet's outputs")
        prevouts.append(Prevout(ref.amount, ref.script_pubkey))
    if reasons:
        return SpendCheck(reasons, [], prevouts, 0, 0)

    try:
        recipient_script = address_to_script(req.recipient, req.network)
    except InvalidAddress as exc:
        return SpendCheck([f"recipient: {exc}"], [], prevouts, 0, 0)

    outputs = outputs_of(tx)
    change_script = b""
    if req.change_index is not None:
        if not 0 <= req.change_index < len(outputs):
            reasons.append(f"change index {req.change_index} out of range")
        else:
            try:
                change_script = account.key(tuple(req.change_derivation)).script_pubkey
            except ValueError as exc:
                reasons.append(f"change derivation: {exc}")
    paid = 0
    for i, out in enumerate(outputs):
        if i == req.change_index:
            if out.script_pubkey != change_script:
                reasons.append(f"output {i}: change does not go to this wallet's change address")
        elif out.script_pubkey == recipient_script:
            paid += out.amount
        else:
            reasons.append(f"output {i}: pays an address that is neither the recipient nor change")
    if paid != req.amount:
        reasons.append(f"recipient receives {paid} sats, the request says {req.amount}")

    total_in = sum(p.amount for p in prevouts)
    total_out = sum(o.amount for o in outputs)
    fee = total_in - total_out
    vsize = signed_vsize(len(req.unsigned_tx), len(outpoints))  # parse refused trailing bytes
    if fee < 0:
        reasons.append(f"outputs ({total_out}) exceed inputs ({total_in})")
    if fee != req.fee:
        reasons.append(f"fee is {fee} sats, the request says {req.fee}")

    if policy is not None:
        if req.amount > policy.max_tx_sats:
            reasons.append(f"amount {req.amount} exceeds the per-transaction limit {policy.max_tx_sats}")
        if spent_today + req.amount > policy.daily_limit_sats:
            reasons.append(
                f"daily limit {policy.daily_limit_sats} exceeded"
                f" ({spent_today} already approved + {req.amount})"
            )
        if req.recipient in policy.denylist:
            reasons.append("recipient is on the deny list")
        if policy.allowlist and req.recipient not in policy.allowlist:
            reasons.append("recipient is not on the allow list")
        if fee > policy.max_fee_sats:
            reasons.append(f"fee {fee} sats exceeds the ceiling {policy.max_fee_sats}")
        if vsize and fee / vsize > policy.max_fee_rate:
            reasons.append(f"fee rate {fee / vsize:.1f} sat/vB exceeds the ceiling {policy.max_fee_rate}")
        if fee < vsize:
            reasons.append(f"fee rate below the relay minimum (fee {fee} for {vsize} vB)")

    return SpendCheck(reasons, scheme.sighashes(tx, prevouts), prevouts, fee, vsize)
