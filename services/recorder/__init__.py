"""recorder: the PostgreSQL projection and the hash-chained audit log, exactly once.

``python -m services.recorder --data-dir DIR``; the projection is :mod:`services.recorder.project`
(one message) and :mod:`services.recorder.batch` (a whole fetched batch in one transaction); the chain's
signed anchors on the bus, and the check against them, :mod:`services.recorder.anchor`.
"""

from .anchor import verify_anchored
from .batch import record_batch
from .project import Message, Outcome, record, verify_audit, verify_chain

__all__ = ["Message", "Outcome", "record", "record_batch", "verify_anchored", "verify_audit", "verify_chain"]
