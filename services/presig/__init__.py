"""presig: keeps every signer's FROST nonce pool at its target.

``python -m services.presig --data-dir DIR``; the service is :mod:`services.presig.service`.
"""
