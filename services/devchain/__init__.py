"""devchain (development only): a local regtest-like chain with an Esplora-compatible REST subset.

``python -m services.devchain --data-dir DIR``; the service is :mod:`services.devchain.service`, the
routes :mod:`services.devchain.app`, the chain :mod:`services.devchain.chain`.
"""
