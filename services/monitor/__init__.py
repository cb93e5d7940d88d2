"""monitor: heartbeats -> ``node_status``, violations -> ``byzantine_violations``, 5 in 24 h -> a ban.

``python -m services.monitor --data-dir DIR``; the logic is :mod:`services.monitor.service`.
"""
