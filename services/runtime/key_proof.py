"""The wallet's key record, believed only with its proof.

Theory of operation
-------------------
``consensus`` coordinates ChillDKG and writes the public result, a :class:`~schemas.kv.KeyRecord`, to KV
``keys`` ``<scheme>.<key_id>``. The coordinator is untrusted: whoever controls it could write a threshold
key or chain code of its own there, and every deposit would go to it. So no reader takes the record as
it is. Each of the ``n`` nodes, once its own ChillDKG finalized (having checked the threshold, the
participants and every host key against the one that node published), signs a
:class:`~schemas.kv.KeyResultStatement` of the result it holds at ``<scheme>.<key_id>.result.<node>``
(``schemas.names.KV_WRITERS``: only that node may sign it). A record is **proven**, and only then used
(by intake for addresses, by the CLI, by the broadcaster, by presig), when:

- it verifies as a signed KV value of ``consensus`` (``services.runtime.signed_kv``);
- its nodes, ``n`` and ``t`` are the cluster's configured ones (``ServiceConfig`` / cluster.json);
- the statements of all ``n`` nodes verify and each equals :meth:`KeyRecord.statement` field for field.

ChillDKG gives every honest participant that finalizes the same output, so honest statements agree with
each other; a record without all of them is "not proven yet" (a DKG in progress: nothing to report). A
record that contradicts a statement is reported (``node.violation``, kind ``key-record-unproven``, the
stored record as evidence) against ``consensus`` when no statement supports it, else against the nodes
whose statements differ. A proven record stays in force for the life of the process: a value written
over it later is not taken (the key of a wallet never changes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from schemas import kv as K
from schemas.kinds import RejectionKind
from schemas.messages import DkgStart
from schemas.names import BUCKET_KEYS, kv_subject
from tss import chilldkg
from wallet.threshold_account import dkg_chain_code

from .bus import Bus
from .signed_kv import NoVerifiedValue, SignedKV

VIOLATION_KIND: Final[RejectionKind] = "key-record-unproven"


def dkg_key_record(
    start: DkgStart, output: chilldkg.DKGOutput, recovery: bytes, created_ms: int = 0
) -> K.KeyRecord:
    """The public result of the ChillDKG session ``start`` that ended with ``output``: what the coordinator
    writes, and (as :meth:`KeyRecord.statement`) what each node states of the result it holds."""
    params = chilldkg.SessionParams(list(start.hostpubkeys), start.threshold)
    return K.KeyRecord(
        key_id=start.key_id,
        scheme=start.scheme,
        threshold_pubkey=output.thresh_pk,
        pubshares=list(output.pubshares),
        chain_code=dkg_chain_code(chilldkg.params_hash(params), output.thresh_pk),
        nodes=list(start.nodes),
        n=len(start.nodes),
        t=start.threshold,
        session_id=start.session_id,
        hostpubkeys=list(start.hostpubkeys),
        recovery_data=bytes(recovery),
        created_ms=created_ms,
    )


class KeyNotProven(Exception):
    """A key record that must not be used; ``reason`` is safe to show (it holds only public values).
    ``offenders``: the identities the evidence convicts (empty when nobody is to blame yet)."""

    def __init__(self, key: str, reason: str, offenders: Sequence[str] = ()) -> None:
        super().__init__(f"key record {key}: {reason}")
        self.key = key
        self.reason = reason
        self.offenders = list(offenders)


def check_key_proof(
    record: K.KeyRecord,
    statements: Mapping[str, K.KeyResultStatement],
    nodes: Sequence[str],
    t: int,
    writer: str = "consensus",
) -> None:
    """Raise :class:`KeyNotProven` unless ``record`` (signed by ``writer``) is the configured cluster's
    (``nodes``, ``t``) and every node's verified statement in ``statements`` (node -> statement) equals
    it."""
    key = K.key_record_key(record.scheme, record.key_id)
    if list(record.nodes) != list(nodes) or record.n != len(nodes):
        raise KeyNotProven(key, f"its nodes {record.nodes} are not the cluster's {list(nodes)}", [writer])
    if record.t != t:
        raise KeyNotProven(key, f"its threshold {record.t} is not the cluster's {t}", [writer])
    if len(record.pubshares) != record.n or len(record.hostpubkeys) != record.n:
        raise KeyNotProven(key, "it does not hold one public share and one host key per node", [writer])
    expected = record.statement()
    missing = [node for node in nodes if node not in statements]
    differing = [node for node in nodes if node in statements and statements[node] != expected]
    if differing:
        supporting = len(nodes) - len(missing) - len(differing)
        # nobody backs the record: its writer made it up; else the dissenters contradict the others
        offenders = [writer] if supporting == 0 else differing
        raise KeyNotProven(
            key,
            f"the statements of {', '.join(differing)} contradict it (threshold key or chain code "
            "or shares differ)",
            offenders,
        )
    if missing:
        raise KeyNotProven(key, f"not proven yet: no statement from {', '.join(missing)}")


class ProvenKeys:
    """The proven key records as one process reads them (keep one per process: it holds the signed-KV
    reader of bucket ``keys`` and the records proven so far)."""

    def __init__(self, bus: Bus, keys: SignedKV, nodes: Sequence[str], t: int) -> None:
        self.bus = bus
        self.keys = keys
        self.nodes = list(nodes)
        self.t = t
        self._proven: dict[str, K.KeyRecord] = {}
        self._reported: set[bytes] = set()

    @classmethod
    async def open(cls, bus: Bus, nodes: Sequence[str], t: int) -> ProvenKeys:
        return cls(bus, await SignedKV.open(bus, BUCKET_KEYS), nodes, t)

    async def exists(self, scheme: str, key_id: str) -> bool:
        """Whether a record is stored at all (proven or not): a DKG for this key was finished or is
        under way, so starting another makes no sense."""
        if K.key_record_key(scheme, key_id) in self._proven:
            return True
        return await self.keys.kv.get(K.key_record_key(scheme, key_id)) is not None

    async def get(self, scheme: str, key_id: str) -> K.KeyRecord | None:
        """The proven record of ``<scheme>.<key_id>``; None when there is none; :class:`KeyNotProven` when
        one is stored but not proven (reported when the evidence convicts someone)."""
        key = K.key_record_key(scheme, key_id)
        held = self._proven.get(key)
        if held is not None:
            return held
        try:
            signed = await self.keys.get(key, K.KeyRecord)
        except NoVerifiedValue as exc:  # signed-KV reported it already
            raise KeyNotProven(key, f"it does not verify as consensus's ({exc.why.kind})") from None
        if signed is None:
            return None
        record = signed.value
        statements: dict[str, K.KeyResultStatement] = {}
        for node in self.nodes:
            try:
                stated = await self.keys.get(K.key_result_key(scheme, key_id, node), K.KeyResultStatement)
            except NoVerifiedValue:
                continue  # reported by signed-KV; counts as missing
            if stated is not None:
                statements[node] = stated.value
        try:
            check_key_proof(record, statements, self.nodes, self.t, signed.sender)
        except KeyNotProven as exc:
            await self._report(exc, signed.raw, signed.revision)
            raise
        self._proven[key] = record
        return record

    async def _report(self, exc: KeyNotProven, raw: bytes, revision: int) -> None:
        if not exc.offenders or raw in self._reported:
            return
        self._reported.add(raw)
        self.bus.log.error("key record refused", kv_entry=exc.key, reason=exc.reason[:300])
        for offender in exc.offenders:
            await self.bus.report(
                offender,
                VIOLATION_KIND,
                exc.reason,
                kv_subject(BUCKET_KEYS, exc.key),
                f"KV_{BUCKET_KEYS}",
                revision,
                raw,
            )
