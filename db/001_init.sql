-- mpc-wallet schema v1: the query side and the audit trail. Never key material.
-- Applied by `mpcw db migrate` (services/runtime/db.py: one transaction per file, recorded in
-- schema_migrations). JetStream is the source of truth; these tables can be rebuilt from the streams.

CREATE TABLE transactions (
    id               text PRIMARY KEY,
    state            text NOT NULL CHECK (state IN ('pending', 'voting', 'approved', 'signing', 'signed',
                                                    'broadcast', 'confirmed', 'rejected', 'failed')),
    key_id           text,
    scheme           text,
    network          text NOT NULL DEFAULT 'regtest',
    recipient        text NOT NULL,
    amount           bigint NOT NULL CHECK (amount > 0),
    fee_rate         double precision,
    fee              bigint CHECK (fee IS NULL OR fee >= 0),
    memo             text NOT NULL DEFAULT '',
    requested_by     text NOT NULL DEFAULT '',
    idempotency_key  text UNIQUE,
    unsigned_tx      bytea,
    txid             text,
    signed_tx        bytea,
    attempt          integer NOT NULL DEFAULT 0,
    block_height     integer,
    confirmations    integer NOT NULL DEFAULT 0,
    reasons          text[] NOT NULL DEFAULT '{}',
    last_stream_seq  bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX transactions_state_idx ON transactions (state);
CREATE INDEX transactions_created_idx ON transactions (created_at);
CREATE INDEX transactions_txid_idx ON transactions (txid) WHERE txid IS NOT NULL;

-- the timeline: one row per lifecycle transition (schemas/lifecycle.py decides which are legal)
CREATE TABLE transaction_transitions (
    id           bigserial PRIMARY KEY,
    tx_id        text NOT NULL,
    from_state   text CHECK (from_state IN ('pending', 'voting', 'approved', 'signing', 'signed',
                                            'broadcast', 'confirmed', 'rejected', 'failed')),
    to_state     text NOT NULL CHECK (to_state IN ('pending', 'voting', 'approved', 'signing', 'signed',
                                                  'broadcast', 'confirmed', 'rejected', 'failed')),
    event        text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    stream       text,
    stream_seq   bigint,
    at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_seq)
);
CREATE INDEX transaction_transitions_tx_idx ON transaction_transitions (tx_id, id);

-- t of n must be a strict majority: t > n/2. For integers, t > n/2 (integer division) and 2t > n
-- are the same condition; both are stated.
CREATE TABLE voting_rounds (
    round_id     text PRIMARY KEY,
    tx_id        text NOT NULL,
    threshold    integer NOT NULL,
    total_nodes  integer NOT NULL CHECK (total_nodes >= 1),
    state        text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'approved', 'rejected', 'expired')),
    approvals    integer NOT NULL DEFAULT 0,
    rejections   integer NOT NULL DEFAULT 0,
    certificate  bytea[],
    opened_at    timestamptz NOT NULL DEFAULT now(),
    closed_at    timestamptz,
    CONSTRAINT voting_rounds_threshold_majority CHECK (threshold > total_nodes / 2),
    CONSTRAINT voting_rounds_threshold_majority_exact CHECK (threshold * 2 > total_nodes),
    CONSTRAINT voting_rounds_threshold_le_n CHECK (threshold <= total_nodes)
);
CREATE INDEX voting_rounds_tx_idx ON voting_rounds (tx_id);

CREATE TABLE votes (
    id           bigserial PRIMARY KEY,
    round_id     text NOT NULL,
    tx_id        text NOT NULL,
    node_id      text NOT NULL,
    approve      boolean NOT NULL,
    reasons      text[] NOT NULL DEFAULT '{}',
    envelope     bytea NOT NULL,            -- the raw signed vote envelope (certificate evidence)
    stream_seq   bigint,
    received_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (round_id, node_id)               -- one vote per node per round
);
CREATE INDEX votes_tx_idx ON votes (tx_id);

CREATE TABLE byzantine_violations (
    id           bigserial PRIMARY KEY,
    node_id      text NOT NULL,              -- the offender (or 'unknown')
    kind         text NOT NULL,
    detail       text NOT NULL DEFAULT '',
    reporter     text NOT NULL,
    subject      text NOT NULL DEFAULT '',
    tx_id        text NOT NULL DEFAULT '',
    evidence     bytea,
    stream       text,
    stream_seq   bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, stream_seq)
);
CREATE INDEX byzantine_violations_node_idx ON byzantine_violations (node_id, created_at);

-- a presignature or nonce is used at most once, ever: the primary key refuses a second use
CREATE TABLE presignature_usage (
    presig_id    text PRIMARY KEY,
    scheme       text NOT NULL DEFAULT 'frost',
    node_id      text NOT NULL,
    tx_id        text NOT NULL,
    session_id   text NOT NULL DEFAULT '',
    attempt      integer NOT NULL DEFAULT 0,
    used_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX presignature_usage_tx_idx ON presignature_usage (tx_id);

CREATE TABLE node_status (
    node_id           text PRIMARY KEY,
    status            text NOT NULL DEFAULT 'unknown' CHECK (status IN ('unknown', 'up', 'down', 'banned')),
    last_heartbeat    timestamptz,
    version           text NOT NULL DEFAULT '',
    violations        integer NOT NULL DEFAULT 0,
    banned_until      timestamptz,
    detail            jsonb NOT NULL DEFAULT '{}',
    updated_at        timestamptz NOT NULL DEFAULT now()
);

-- API keys: only a SHA-256 of the key is stored (format mpcw_<key_id>_<secret>, see services/runtime/db.py)
CREATE TABLE api_keys (
    key_id       text PRIMARY KEY,
    key_hash     bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    name         text NOT NULL,
    role         text NOT NULL DEFAULT 'operator' CHECK (role IN ('admin', 'operator', 'viewer')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);

-- exactly-once projection: the last stream sequence applied, updated in the same DB transaction as
-- the effect (services/runtime/db.py advance_stream_position)
CREATE TABLE stream_positions (
    consumer     text NOT NULL DEFAULT 'recorder',
    stream       text NOT NULL,
    last_seq     bigint NOT NULL CHECK (last_seq >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, stream)
);

-- ---- audit log: append-only, hash-chained -----------------------------------------------------------
--
-- hash = sha256(prev_hash || audit_canonical(row)), prev_hash = the hash of the row before (by id; 32 zero
-- bytes for the first). The BEFORE INSERT trigger serializes appends (advisory transaction lock), assigns
-- id in lock order and sets prev_hash, and hash when the writer did not give one. UPDATE, DELETE and
-- TRUNCATE are refused. audit_verify() recomputes the chain and returns the rows that do not verify
-- (services/runtime/db.py verify_audit_chain recomputes it again, independently, in Python).
-- Appends must run under READ COMMITTED (the default) so the trigger sees the latest committed row.

CREATE TABLE audit_log (
    id           bigint PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT date_trunc('milliseconds', clock_timestamp()),
    actor        text NOT NULL,
    action       text NOT NULL,
    entity_type  text NOT NULL DEFAULT '',
    entity_id    text NOT NULL DEFAULT '',
    details      jsonb NOT NULL DEFAULT '{}',
    stream       text NOT NULL DEFAULT '',
    stream_seq   bigint NOT NULL DEFAULT 0,
    prev_hash    bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash         bytea NOT NULL CHECK (octet_length(hash) = 32)
);
CREATE SEQUENCE audit_log_id_seq OWNED BY audit_log.id;
CREATE INDEX audit_log_entity_idx ON audit_log (entity_type, entity_id);

-- the canonical content of a row (everything but prev_hash and hash), as UTF-8:
-- id|created_at as UTC microseconds since the epoch|actor|action|entity_type|entity_id|details::text|stream|stream_seq
CREATE FUNCTION audit_canonical(r audit_log) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT convert_to(
        r.id::text || '|' ||
        ((extract(epoch FROM r.created_at) * 1000000)::bigint)::text || '|' ||
        r.actor || '|' || r.action || '|' || r.entity_type || '|' || r.entity_id || '|' ||
        r.details::text || '|' || r.stream || '|' || r.stream_seq::text,
        'UTF8')
$$;

CREATE FUNCTION audit_log_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    last_hash bytea;
BEGIN
    PERFORM pg_advisory_xact_lock(7405310113871);  -- 'audit_log' append lock
    NEW.id := nextval('audit_log_id_seq');
    SELECT a.hash INTO last_hash FROM audit_log a ORDER BY a.id DESC LIMIT 1;
    NEW.prev_hash := coalesce(last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    IF NEW.hash IS NULL THEN
        NEW.hash := sha256(NEW.prev_hash || audit_canonical(NEW));
    END IF;
    RETURN NEW;
END
$$;

CREATE FUNCTION audit_log_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_log_chain BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_before_insert();
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change();

-- rows whose prev_hash does not link to the row before, or whose hash does not match their content
CREATE FUNCTION audit_verify() RETURNS TABLE (bad_id bigint, reason text)
LANGUAGE sql STABLE AS $$
    WITH chain AS (
        SELECT a.id, a.prev_hash, a.hash,
               sha256(a.prev_hash || audit_canonical(a)) AS recomputed,
               coalesce(lag(a.hash) OVER (ORDER BY a.id),
                        '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea) AS expected_prev
        FROM audit_log a
    )
    SELECT c.id,
           CASE WHEN c.prev_hash <> c.expected_prev THEN 'prev_hash does not link to the previous row'
                ELSE 'hash does not match the row content' END
    FROM chain c
    WHERE c.prev_hash <> c.expected_prev OR c.hash <> c.recomputed
    ORDER BY c.id
$$;
