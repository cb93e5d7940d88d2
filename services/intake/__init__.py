"""intake: the REST API (Sanic) that turns spend requests into ``tx.requested`` events.

``python -m services.intake --data-dir DIR --port N``; routes in :mod:`services.intake.app`.
"""
