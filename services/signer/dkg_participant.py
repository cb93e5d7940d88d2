"""The participant side of ChillDKG over the bus, for one signer node.

Messages (``proto.chilldkg.<session>.<round>.<from>``): the coordinator (``consensus``) sends
:class:`DkgStart` in round 0, ``cmsg1`` in round 2 and ``cmsg2`` (the certificate) in round 4; this node
answers ``pmsg1`` in round 1 and ``pmsg2`` in round 3, and announces the public result in round 9. The
per-session state lives in memory: a node restarted in the middle of a DKG drops out of that session and
the DKG is run again (nothing is stored until the certificate verifies).

The coordinator is untrusted and cannot choose the key: before its first message the node checks the
session against what it knows itself (:func:`check_session`): the participants are the cluster's nodes in
order, the threshold is the configured ``t``, and every host key is the one its node published, signed
by that node, in KV ``keys`` ``hostpubkey.<node>``. A start that fails a check is refused: the node
sends nothing for that session (so it never holds a share of it), reports the coordinator with the
signed start as evidence, and announces the refusal in round 9.

The secret share is written, encrypted, only after ``participant_finalize`` accepted the certificate, and
never over another key's. Then the node signs its statement of the result
(:class:`~schemas.kv.KeyResultStatement`, KV ``keys`` ``<scheme>.<key_id>.result.<node>``): readers
believe the coordinator's key record only when all ``n`` statements agree with it
(``services.runtime.key_proof``). A node that stopped between storing its share and its statement
states it when it starts again (:meth:`DkgParticipant.restate_results`).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from typing import Any, Literal

from schemas import kv as K
from schemas.kinds import RejectionKind
from schemas.messages import DkgMessage, DkgResult, DkgStart
from schemas.names import BUCKET_KEYS, proto_subject
from services.runtime.bus import Bus, Received
from services.runtime.config import ServiceConfig
from services.runtime.key_proof import dkg_key_record
from services.runtime.signed_kv import NoVerifiedValue, SignedKV
from services.signer.keystore import Keystore, ShareRecord
from tss import chilldkg
from wallet.threshold_account import dkg_chain_code

RESULT_ROUND = 9  # proto.chilldkg.<session>.9.<node>: this node's DkgResult


class DkgRefused(Exception):
    """This node will not take part in a session. ``kind``: the violation kind when the coordinator is to
    blame (it sent a start that contradicts what the node knows), else ""."""

    def __init__(self, kind: RejectionKind | Literal[""], detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def check_session(
    start: DkgStart,
    nodes: Sequence[str],
    t: int,
    published: Sequence[bytes | None],
) -> None:
    """Raise :class:`DkgRefused` unless ``start`` runs ChillDKG among exactly ``nodes`` (in order) with
    threshold ``t`` and the host keys ``published`` (node order; None: that node's is not known)."""
    if list(start.nodes) != list(nodes):
        raise DkgRefused(
            "dkg-bad-participants", f"participants {start.nodes} are not this cluster's {list(nodes)}"
        )
    if start.threshold != t:
        raise DkgRefused("dkg-bad-threshold", f"threshold {start.threshold} is not this cluster's {t}")
    if len(start.hostpubkeys) != len(nodes):
        raise DkgRefused("dkg-bad-hostpubkey", f"{len(start.hostpubkeys)} host keys for {len(nodes)} nodes")
    unknown = [node for node, pub in zip(nodes, published, strict=True) if pub is None]
    if unknown:
        raise DkgRefused("", f"no verified host key published by {', '.join(unknown)}")
    wrong = [node for node, got, pub in zip(nodes, start.hostpubkeys, published, strict=True) if got != pub]
    if wrong:
        raise DkgRefused(
            "dkg-bad-hostpubkey", f"host keys of {', '.join(wrong)} are not the ones they published"
        )


class DkgParticipant:
    def __init__(
        self, cfg: ServiceConfig, bus: Bus, keystore: Keystore, on_share_saved: Callable[[], None]
    ) -> None:
        self.cfg = cfg
        self.bus = bus
        self.node = cfg.identity
        self.keystore = keystore
        self.log = bus.log
        self.on_share_saved = on_share_saved
        self.sessions: dict[str, dict[str, Any]] = {}
        self._keys: SignedKV | None = None

    def hostseckey(self) -> bytes:
        return self.keystore.host_seckey()

    def hostpubkey(self) -> bytes:
        return chilldkg.hostpubkey_gen(self.hostseckey())

    async def keys(self) -> SignedKV:
        if self._keys is None:
            self._keys = await SignedKV.open(self.bus, BUCKET_KEYS)
        return self._keys

    # ---- at start ------------------------------------------------------------------------------------
    async def publish_hostpubkey(self) -> None:
        """Publish this node's host key (signed): what every node checks a DKG's host keys against."""
        keys = await self.keys()
        mine = K.HostPubkey(node=self.node, hostpubkey=self.hostpubkey())
        try:
            held = await keys.get(K.hostpubkey_key(self.node), K.HostPubkey)
        except NoVerifiedValue:
            held = None  # reported; written again below
        if held is None or held.value != mine:
            await keys.put(K.hostpubkey_key(self.node), mine)

    async def restate_results(self) -> None:
        """For every key record in KV of which this node holds a share but no statement (it stopped in
        between, or its share predates statements): state the result, after checking the record against
        its own share and the nodes' published host keys. Never stops the node: what fails is logged."""
        try:
            keys = await self.keys()
            for name in await keys.kv.keys():
                parts = name.split(".")
                if len(parts) == 2 and parts[0] != "hostpubkey" and self.keystore.has_share(parts[1]):
                    await self._restate(keys, parts[0], parts[1])
        except Exception as exc:
            self.log.error("could not restate dkg results", error=repr(exc)[:300])

    async def _restate(self, keys: SignedKV, scheme: str, key_id: str) -> None:
        mine = K.key_result_key(scheme, key_id, self.node)
        try:
            if await keys.get(mine, K.KeyResultStatement) is not None:
                return
        except NoVerifiedValue:
            pass  # not ours (reported): ours goes over it
        try:
            record = await keys.get(K.key_record_key(scheme, key_id), K.KeyRecord)
        except NoVerifiedValue:
            return
        if record is None:
            return
        try:
            statement = await self._statement_from_share(record.value)
        except DkgRefused as exc:
            self.log.error(
                "key record contradicts this node's share; no statement",
                key_id=key_id,
                detail=exc.detail[:300],
            )
            return
        await keys.put(mine, statement)
        self.log.info("dkg result stated", scheme=scheme, key_id=key_id)

    async def _statement_from_share(self, record: K.KeyRecord) -> K.KeyResultStatement:
        share = self.keystore.load_share(record.key_id)
        start = DkgStart(
            session_id=record.session_id,
            scheme=record.scheme,
            nodes=list(record.nodes),
            threshold=record.t,
            hostpubkeys=list(record.hostpubkeys),
            key_id=record.key_id,
        )
        await self._check_start(start)
        params = chilldkg.SessionParams(list(record.hostpubkeys), record.t)
        statement = record.statement()
        if (
            share.scheme != record.scheme
            or share.threshold_pubkey != record.threshold_pubkey
            or list(share.pubshares) != list(record.pubshares)
            or share.t != record.t
            or share.n != record.n
            or share.chain_code != record.chain_code
            or share.chain_code != dkg_chain_code(chilldkg.params_hash(params), share.threshold_pubkey)
            or K.recovery_hash(share.recovery_data) != statement.recovery_hash
        ):
            raise DkgRefused("", "the record differs from the result this node holds")
        return statement

    # ---- the session ---------------------------------------------------------------------------------
    async def on_message(self, rec: Received) -> None:
        if rec.sender != "consensus":
            return
        payload = rec.payload
        session = getattr(payload, "session_id", "?")
        try:
            if isinstance(payload, DkgStart):
                await self._start(payload)
            elif isinstance(payload, DkgMessage) and payload.round == 2:
                await self._step2(payload)
            elif isinstance(payload, DkgMessage) and payload.round == 4:
                await self._finalize(payload)
        except DkgRefused as exc:
            self.sessions.pop(session, None)
            self.log.warning("dkg refused", session=session, kind=exc.kind, detail=exc.detail[:300])
            if exc.kind:
                await self.bus.report(
                    rec.sender, exc.kind, exc.detail, rec.subject, rec.stream, rec.seq, rec.envelope_raw
                )
            await self._announce_failure(session, f"refused: {exc.detail[:200]}")
        except (chilldkg.ProtocolError, ValueError) as exc:
            self.sessions.pop(session, None)
            blame = type(exc).__name__
            self.log.warning("dkg failed", session=session, error=blame, detail=str(exc)[:200])
            await self._announce_failure(session, f"{blame}: {str(exc)[:200]}")

    async def _check_start(self, start: DkgStart) -> None:
        """:func:`check_session` against the configuration and the host keys the nodes published."""
        if len(self.cfg.nodes) != self.cfg.n:
            raise DkgRefused("", f"configuration lists {len(self.cfg.nodes)} nodes for n = {self.cfg.n}")
        keys = await self.keys()
        published: list[bytes | None] = []
        for node in self.cfg.nodes:
            if node == self.node:
                published.append(self.hostpubkey())
                continue
            try:
                got = await keys.get(K.hostpubkey_key(node), K.HostPubkey)
            except NoVerifiedValue:
                got = None
            published.append(got.value.hostpubkey if got is not None and got.value.node == node else None)
        check_session(start, self.cfg.nodes, self.cfg.t, published)

    async def _start(self, start: DkgStart) -> None:
        me = self.node
        if me not in start.nodes or start.session_id in self.sessions:
            return
        await self._check_start(start)
        if self.keystore.has_share(start.key_id):
            raise ValueError(
                f"this node already holds a share of key {start.key_id!r}; refusing to replace it"
            )
        params = chilldkg.SessionParams(list(start.hostpubkeys), start.threshold)
        state1, pmsg1 = chilldkg.participant_step1(self.hostseckey(), params, secrets.token_bytes(32))
        self.sessions[start.session_id] = {"start": start, "state1": state1}
        await self._publish(start.session_id, 1, pmsg1)

    async def _step2(self, msg: DkgMessage) -> None:
        sess = self.sessions.get(msg.session_id)
        if sess is None or "state2" in sess:
            return
        state2, pmsg2 = chilldkg.participant_step2(
            self.hostseckey(), sess["state1"], msg.data, secrets.token_bytes(32)
        )
        sess["state2"] = state2
        await self._publish(msg.session_id, 3, pmsg2)

    async def _finalize(self, msg: DkgMessage) -> None:
        sess = self.sessions.get(msg.session_id)
        if sess is None or "state2" not in sess:
            return
        output, recovery = chilldkg.participant_finalize(sess["state2"], msg.data)
        start: DkgStart = sess["start"]
        if output.secshare is None:
            raise ValueError("participant_finalize returned no secret share")
        result = dkg_key_record(start, output, recovery)
        record = ShareRecord(
            key_id=start.key_id,
            scheme=start.scheme,
            index=start.nodes.index(self.node),
            secshare=output.secshare,
            threshold_pubkey=result.threshold_pubkey,
            pubshares=list(result.pubshares),
            chain_code=result.chain_code,
            n=result.n,
            t=result.t,
            recovery_data=result.recovery_data,
        )
        if self.keystore.has_share(start.key_id):
            held = self.keystore.load_share(start.key_id)
            if held.recovery_data != record.recovery_data:  # another session finished first
                raise ValueError(
                    f"this node already holds a share of key {start.key_id!r}; refusing to replace it"
                )
        else:
            self.keystore.save_share(record)
            self.on_share_saved()
        statement = result.statement()
        keys = await self.keys()
        await keys.put(K.key_result_key(start.scheme, start.key_id, self.node), statement)
        del self.sessions[msg.session_id]
        self.log.info("dkg complete", session=msg.session_id, key_id=start.key_id)
        await self._publish_result(
            DkgResult(
                session_id=msg.session_id,
                node=self.node,
                threshold_pubkey=output.thresh_pk,
                pubshares=list(output.pubshares),
            )
        )

    # ---- publishing ----------------------------------------------------------------------------------
    async def _publish(self, session_id: str, round_: int, data: bytes) -> None:
        await self.bus.publish(
            proto_subject("chilldkg", session_id, round_, self.node),
            DkgMessage(session_id=session_id, round=round_, data=data),
            f"dkg.{session_id}.{round_}.{self.node}",
        )

    async def _announce_failure(self, session_id: str, reason: str) -> None:
        await self._publish_result(
            DkgResult(
                session_id=session_id,
                node=self.node,
                threshold_pubkey=b"",
                pubshares=[],
                ok=False,
                reason=reason,
            )
        )

    async def _publish_result(self, result: DkgResult) -> None:
        await self.bus.publish(
            proto_subject("chilldkg", result.session_id, RESULT_ROUND, self.node),
            result,
            f"dkg.{result.session_id}.{RESULT_ROUND}.{self.node}",
        )
