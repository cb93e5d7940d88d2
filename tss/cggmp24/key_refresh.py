"""t-of-n key refresh: new Shamir shares of the same key (proactive security).

The spec describes refresh only for n-of-n; this is the threshold form with the structure of threshold
keygen (:mod:`tss.cggmp24.keygen`, the same round machine and checks):

* each party deals a fresh random polynomial ``f_i`` of degree ``t - 1`` with ``f_i(0) = 0`` and publishes
  Feldman commitments to its ``t - 1`` non-constant coefficients only: the constant commitment is the
  fixed identity, so a dealer cannot shift the key (hash commitment, echo round, opening, as keygen);
* each party checks every received share ``sigma_ji * G == sum_{k>=1} (i+1)^k S_jk`` (blame on failure);
* new share ``x_i' = x_i + sum_j f_j(i+1)``, new public shares ``X_j' = X_j + F(j+1)``;
* each party proves knowledge of its new share with Pi^sch bound to the joint ``rid`` of this run, so
  every party confirms every other party's new share.

All ``n`` parties take part; ``t``, ``n``, the public key and the chain code are unchanged. The old share
is not touched by the machine: once the run is ``done``, the caller stores the new share and calls
``old.zeroize()`` (old and new shares must never be mixed: their Lagrange combination is not the key).
Paillier and ring-Pedersen material is renewed separately by re-running aux-info.
"""

from __future__ import annotations

from collections.abc import Iterable

from tss.cggmp24.errors import BadInputError
from tss.cggmp24.keygen import DealingState, KeyShare, dealing_round, start_dealing
from tss.cggmp24.rounds import PROTOCOL_KEY_REFRESH, Message


def refresh_start(session_id: bytes, share: KeyShare) -> tuple[DealingState, list[Message]]:
    """Start refreshing ``share`` (a fresh ``session_id`` shared by all ``n`` parties)."""
    if not isinstance(share, KeyShare) or share.secret.is_zeroized():
        raise BadInputError("a live key share is required")
    return start_dealing(PROTOCOL_KEY_REFRESH, session_id, share.index, share.t, share.n, False, share)


def refresh_round(state: DealingState, inbox: Iterable[object] = ()) -> tuple[DealingState, list[Message]]:
    """Advance with ``inbox``; when ``state.phase == "done"``, ``state.result`` is the new share."""
    if state.core.protocol != PROTOCOL_KEY_REFRESH:
        raise BadInputError("not a key-refresh state")
    return dealing_round(state, inbox)
