"""Tables the runtime uses in PostgreSQL (the app's migrations carry the same DDL)."""

DDL = """
CREATE TABLE inbox (
    consumer text NOT NULL,
    message_id text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    stream text NOT NULL,
    action text NOT NULL,
    fields jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wakes outbox relays as soon as a transaction that wrote outbox rows commits (PostgreSQL delivers
-- notifications only at commit, and one per transaction for the same payload).
CREATE FUNCTION outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('streams_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
"""
