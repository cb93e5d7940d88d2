"""Prometheus metrics: one ``/metrics`` endpoint per service process and the bus's common series.

Labels carry only service names, stream names, durable names and rejection kinds: never subjects with
ids, never secrets.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

MESSAGES_PUBLISHED = Counter(
    "mpcw_messages_published_total", "Envelopes published to JetStream", ["service", "stream"]
)
PUBLISH_DUPLICATES = Counter(
    "mpcw_publish_duplicates_total",
    "Publishes JetStream de-duplicated (Nats-Msg-Id seen)",
    ["service", "stream"],
)
MESSAGES_CONSUMED = Counter(
    "mpcw_messages_consumed_total", "Messages handled and acknowledged", ["service", "durable"]
)
MESSAGES_REJECTED = Counter(
    "mpcw_messages_rejected_total",
    "Messages dropped as invalid (terminated and reported)",
    ["service", "kind"],
)
HANDLER_FAILURES = Counter(
    "mpcw_handler_failures_total",
    "Handler exceptions (message nak'ed for redelivery)",
    ["service", "durable"],
)
HANDLER_SECONDS = Histogram(
    "mpcw_handler_seconds",
    "Handler latency",
    ["service", "durable"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
PUBLISH_SECONDS = Histogram(
    "mpcw_publish_seconds",
    "JetStream publish + ack latency",
    ["service"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1),
)
UP = Gauge("mpcw_service_up", "1 while the service runs and is ready", ["service"])
NATS_RECONNECTS = Counter("mpcw_nats_reconnects_total", "NATS reconnects", ["service"])

_started: set[int] = set()


def start_metrics_server(port: int | None, addr: str = "127.0.0.1") -> int | None:
    """Serve ``/metrics`` on ``addr:port`` (once per port per process). None/0 disables it."""
    if not port:
        return None
    if port not in _started:
        start_http_server(port, addr=addr)
        _started.add(port)
    return port
