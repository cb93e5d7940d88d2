"""The participant side of ChillDKG over the bus, for one signer node.

Messages (``proto.chilldkg.<session>.<round>.<from>``): the coordinator (``consensus``) sends
:class:`DkgStart` in round 0, ``cmsg1`` in round 2 and ``cmsg2`` (the certificate) in round 4; this node
answers ``pmsg1`` in round 1 and ``pmsg2`` in round 3, and announces the public result in round 9. The
per-session state lives in memory: a node restarted in the middle of a DKG drops out of that session and
the DKG is run again (nothing is stored until the certificate verifies). The secret share is written,
encrypted, only after ``participant_finalize`` accepted the certificate, and never over an existing key.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from schemas.messages import DkgMessage, DkgResult, DkgStart
from services.runtime.bus import Received
from services.signer.keystore import ShareRecord
from tss import chilldkg
from wallet.threshold_account import dkg_chain_code

if TYPE_CHECKING:
    from services.signer.node import SignerNode


class DkgParticipant:
    def __init__(self, node: SignerNode) -> None:
        self.node = node
        self.sessions: dict[str, dict[str, Any]] = {}

    def hostseckey(self) -> bytes:
        return self.node.keystore.host_seckey()

    def hostpubkey(self) -> bytes:
        return chilldkg.hostpubkey_gen(self.hostseckey())

    async def on_message(self, rec: Received) -> None:
        if rec.sender != "consensus":
            return
        payload = rec.payload
        try:
            if isinstance(payload, DkgStart):
                await self._start(payload)
            elif isinstance(payload, DkgMessage) and payload.round == 2:
                await self._step2(payload)
            elif isinstance(payload, DkgMessage) and payload.round == 4:
                await self._finalize(payload)
        except (chilldkg.ProtocolError, ValueError) as exc:
            session = getattr(payload, "session_id", "?")
            self.sessions.pop(session, None)
            blame = type(exc).__name__
            self.node.log.warning("dkg failed", session=session, error=blame, detail=str(exc)[:200])
            await self.node.publish_dkg_result(
                DkgResult(
                    session_id=session,
                    node=self.node.node,
                    threshold_pubkey=b"",
                    pubshares=[],
                    ok=False,
                    reason=f"{blame}: {str(exc)[:200]}",
                )
            )

    async def _start(self, start: DkgStart) -> None:
        me = self.node.node
        if me not in start.nodes or start.session_id in self.sessions:
            return
        if list(start.nodes) != list(self.node.cfg.nodes):
            raise ValueError("DKG participants differ from this cluster's nodes (order matters)")
        if self.node.keystore.has_share(start.key_id):
            raise ValueError(
                f"this node already holds a share of key {start.key_id!r}; refusing to replace it"
            )
        params = chilldkg.SessionParams(list(start.hostpubkeys), start.threshold)
        hostseckey = self.hostseckey()
        if start.hostpubkeys[start.nodes.index(me)] != chilldkg.hostpubkey_gen(hostseckey):
            raise ValueError("the host public key listed for this node is not its own")
        state1, pmsg1 = chilldkg.participant_step1(hostseckey, params, secrets.token_bytes(32))
        self.sessions[start.session_id] = {"start": start, "params": params, "state1": state1}
        await self.node.publish_dkg(start.session_id, 1, pmsg1)

    async def _step2(self, msg: DkgMessage) -> None:
        sess = self.sessions.get(msg.session_id)
        if sess is None or "state2" in sess:
            return
        state2, pmsg2 = chilldkg.participant_step2(
            self.hostseckey(), sess["state1"], msg.data, secrets.token_bytes(32)
        )
        sess["state2"] = state2
        await self.node.publish_dkg(msg.session_id, 3, pmsg2)

    async def _finalize(self, msg: DkgMessage) -> None:
        sess = self.sessions.get(msg.session_id)
        if sess is None or "state2" not in sess:
            return
        output, recovery = chilldkg.participant_finalize(sess["state2"], msg.data)
        start: DkgStart = sess["start"]
        if self.node.keystore.has_share(start.key_id):  # another session finished first
            raise ValueError(
                f"this node already holds a share of key {start.key_id!r}; refusing to replace it"
            )
        params = sess["params"]
        index = start.nodes.index(self.node.node)
        if output.secshare is None:
            raise ValueError("participant_finalize returned no secret share")
        record = ShareRecord(
            key_id=start.key_id,
            scheme=start.scheme,
            index=index,
            secshare=output.secshare,
            threshold_pubkey=output.thresh_pk,
            pubshares=list(output.pubshares),
            chain_code=dkg_chain_code(chilldkg.params_hash(params), output.thresh_pk),
            n=len(start.nodes),
            t=start.threshold,
            recovery_data=bytes(recovery),
        )
        self.node.keystore.save_share(record)
        self.node.forget_share_cache()
        del self.sessions[msg.session_id]
        self.node.log.info("dkg complete", session=msg.session_id, key_id=start.key_id)
        await self.node.publish_dkg_result(
            DkgResult(
                session_id=msg.session_id,
                node=self.node.node,
                threshold_pubkey=output.thresh_pk,
                pubshares=list(output.pubshares),
            )
        )
