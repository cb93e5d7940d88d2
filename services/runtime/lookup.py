"""Read back the newest message on one subject from its stream, verified like a delivery.

Services stay stateless where they can: instead of caching every message they have seen, a handler
asks the stream for ``tx.requested.<tx_id>`` or ``proto.frost.<session>.2.<node>`` when it needs it.
A crash therefore loses nothing, and what is read is checked exactly as a consumer checks it.
"""

from __future__ import annotations

import nats.js.errors

from schemas.names import stream_for

from .bus import Bus, Received


async def last_message(bus: Bus, subject: str) -> Received | None:
    """The newest message on ``subject``, verified and decoded; None if there is none.

    Raises ``EnvelopeError`` if the stored message does not verify (a forged message in the stream).
    """
    stream = stream_for(subject)
    try:
        raw = await bus.js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return None
    data = raw.data or b""
    env, payload = bus.open(data, subject)
    return Received(
        subject=subject,
        sender=env.sender,
        payload=payload,
        seq=raw.seq or 0,
        msg_id=env.msg_id,
        envelope_raw=data,
        envelope=env,
        stream=stream,
    )
