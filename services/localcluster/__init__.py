"""The local cluster behind ``mpcw up``: the supervisor (``python -m services.localcluster.supervisor``),
the embedded nats-server and PostgreSQL, and the development PKI. Services never import it."""
