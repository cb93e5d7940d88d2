"""recorder: the PostgreSQL projection and the hash-chained audit log, exactly once.

``python -m services.recorder --data-dir DIR``; the projection is :mod:`services.recorder.project`.
"""

from .project import Message, Outcome, record, verify_audit, verify_chain

__all__ = ["Message", "Outcome", "record", "verify_audit", "verify_chain"]
