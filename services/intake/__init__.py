"""intake: the REST API (Sanic) that turns spend requests into ``tx.requested`` events.

``python -m services.intake --data-dir DIR --port N``; the service is :mod:`services.intake.service`,
the routes :mod:`services.intake.app`.
"""
