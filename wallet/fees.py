"""Sizes, fees and dust for the wallet's transactions.

Weights are exact for P2TR key-path inputs (a 64-byte SIGHASH_DEFAULT signature, or 65 bytes with an
explicit hash type). For P2WPKH inputs the DER signature length depends on the nonce: the estimate
assumes the worst case a low-S signature can have, 72 bytes including the hash-type byte (33-byte r);
a signature with a short (low-R) r is 71 bytes, so the real size can be up to 1 weight unit per P2WPKH
input smaller than the estimate, never larger. Pass ``ecdsa_sig_len=71`` when the signer grinds low R.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from wallet.script import classify

SEGWIT_MARKER_WEIGHT = 2  # marker + flag bytes, witness data (weight 1 each)
INPUT_BASE_BYTES = 32 + 4 + 1 + 4  # outpoint, empty scriptSig length, nSequence
P2WPKH_SIG_MAX = 72  # DER (low S, 33-byte r) + hash type
P2WPKH_SIG_LOW_R = 71
DUST_RELAY_FEE = 3  # sat/vB, Bitcoin Core's -dustrelayfee default (3000 sat/kvB)


def compact_size_len(n: int) -> int:
    return 1 if n < 0xFD else 3 if n <= 0xFFFF else 5 if n <= 0xFFFFFFFF else 9


def output_bytes(script_pubkey: bytes) -> int:
    return 8 + compact_size_len(len(script_pubkey)) + len(script_pubkey)


def input_witness_weight(
    script_pubkey: bytes, *, taproot_hash_type: int = 0, ecdsa_sig_len: int = P2WPKH_SIG_MAX
) -> int:
    """Weight of the witness of an input spending ``script_pubkey`` with the wallet's witnesses."""
    kind = classify(script_pubkey).type
    if kind == "p2tr":
        sig = 64 if taproot_hash_type == 0 else 65
        return 1 + 1 + sig
    if kind == "p2wpkh":
        return 1 + 1 + ecdsa_sig_len + 1 + 33
    raise ValueError(f"cannot size an input spending {kind}: the wallet spends only P2TR and P2WPKH")


def input_weight(script_pubkey: bytes, **kw: int) -> int:
    """Weight of one input (non-witness part x4 plus its witness)."""
    return 4 * INPUT_BASE_BYTES + input_witness_weight(script_pubkey, **kw)


def input_vbytes(script_pubkey: bytes, **kw: int) -> float:
    return input_weight(script_pubkey, **kw) / 4


def transaction_weight(input_scripts: Sequence[bytes], output_scripts: Sequence[bytes], **kw: int) -> int:
    """Exact (P2TR) / upper-bound (P2WPKH) weight of the signed transaction."""
    base = 4 + 4 + compact_size_len(len(input_scripts)) + compact_size_len(len(output_scripts))
    base += sum(output_bytes(s) for s in output_scripts)
    weight = 4 * base + sum(input_weight(s, **kw) for s in input_scripts)
    return weight + (SEGWIT_MARKER_WEIGHT if input_scripts else 0)


def estimate_vsize(input_scripts: Sequence[bytes], output_scripts: Sequence[bytes], **kw: int) -> int:
    return math.ceil(transaction_weight(input_scripts, output_scripts, **kw) / 4)


def fee_for(vsize: int | float, fee_rate: float) -> int:
    """Fee in sat for ``vsize`` vbytes at ``fee_rate`` sat/vB, rounded up."""
    if fee_rate < 0:
        raise ValueError("fee rate must not be negative")
    return math.ceil(round(vsize * fee_rate, 6))


def dust_limit(script_pubkey: bytes, dust_relay_fee: float = DUST_RELAY_FEE) -> int:
    """Bitcoin Core's ``GetDustThreshold``: the cost of creating and later spending the output at the
    dust relay fee (P2WPKH 294, P2TR 330, P2PKH 546, P2SH 540 sat at 3 sat/vB)."""
    size = output_bytes(script_pubkey)
    info = classify(script_pubkey)
    if script_pubkey[:1] == b"\x6a":
        return 0  # OP_RETURN: unspendable, never dust
    if info.witness_version is not None:
        size += 32 + 4 + 1 + 107 // 4 + 4
    else:
        size += 32 + 4 + 1 + 107 + 4
    return math.floor(size * dust_relay_fee)
