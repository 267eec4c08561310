-- Wakes outbox relays as soon as a transaction that wrote outbox rows commits (PostgreSQL delivers
-- notifications only at commit, and one per transaction for the same payload).
CREATE FUNCTION outbox_notify() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('streams_outbox', '');
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
