-- Subscriptions: the billing anchor renewals count from, and a total order of the event log.

-- Set when the first paid period starts; every later period is anchor + n cycles (no month drift).
ALTER TABLE subscriptions ADD COLUMN billing_anchor timestamptz;

-- Events written in one transaction share now(); seq keeps the order they were recorded in.
ALTER TABLE subscription_events ADD COLUMN seq bigserial;
CREATE INDEX subscription_events_by_seq ON subscription_events (subscription_id, seq);
