"""What every service stands on: config, bus (NATS JetStream + signed envelopes), db, metrics, logging,
service runner, embedded servers. See ``services/runtime/README.md``."""
