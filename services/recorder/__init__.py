"""recorder: the PostgreSQL projection and the hash-chained audit log, exactly once.

``python -m services.recorder --data-dir DIR``: the service is :mod:`services.recorder.service`, the
projection (a whole fetched batch in one transaction; one event is a batch of one)
:mod:`services.recorder.project`; the chain's signed anchors on the bus, and the check against them,
:mod:`services.recorder.anchor`.
"""

from .anchor import verify_anchored
from .project import Message, Outcome, record, verify_audit, verify_chain

__all__ = ["Message", "Outcome", "record", "verify_anchored", "verify_audit", "verify_chain"]
