-- intake (services/intake): spend requests accepted over REST and the UTXOs they reserve.
--
-- spend_requests: written by intake BEFORE it publishes tx.requested (idempotency_key UNIQUE: a repeated
-- request maps to the same tx_id; message is the exact TxRequested, republished with Nats-Msg-Id = tx_id
-- when published_at is still NULL after a crash). The recorder copies idempotency_key and memo into
-- transactions when it projects tx.requested.
-- utxo_reservations: an outpoint is spent by at most one in-flight spend (PRIMARY KEY); intake takes
-- its advisory lock (7405310113880) while it selects coins and reserves them; the recorder deletes a
-- spend's rows when it is rejected, failed or confirmed. No secrets in either table.

CREATE TABLE spend_requests (
    tx_id            text PRIMARY KEY,
    idempotency_key  text UNIQUE,
    request_hash     bytea NOT NULL CHECK (octet_length(request_hash) = 32),
    api_key_id       text NOT NULL,
    recipient        text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    fee              bigint NOT NULL CHECK (fee >= 0),
    fee_rate         double precision NOT NULL,
    memo             text NOT NULL DEFAULT '',
    message          bytea NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz
);
CREATE INDEX spend_requests_created_idx ON spend_requests (created_at);
CREATE INDEX spend_requests_unpublished_idx ON spend_requests (created_at) WHERE published_at IS NULL;

CREATE TABLE utxo_reservations (
    txid         text NOT NULL,
    vout         integer NOT NULL CHECK (vout >= 0),
    tx_id        text NOT NULL REFERENCES spend_requests (tx_id) ON DELETE CASCADE,
    amount       bigint NOT NULL CHECK (amount > 0),
    reserved_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (txid, vout)
);
CREATE INDEX utxo_reservations_tx_idx ON utxo_reservations (tx_id);
