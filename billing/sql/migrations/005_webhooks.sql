-- Outbound webhooks: a description per endpoint, the events themselves (so they can be resent),
-- and per-attempt delivery statuses.

ALTER TABLE webhook_endpoints ADD COLUMN description text;
CREATE INDEX webhook_endpoints_active_by_user ON webhook_endpoints (user_id) WHERE is_active;

CREATE TABLE webhook_events (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id),
    type       text NOT NULL,
    data       jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL                        -- from the injected clock (test clock aware)
);
CREATE INDEX webhook_events_by_user ON webhook_events (user_id, created_at DESC);

-- One row per delivery attempt: delivered (2xx), retrying (failed, another attempt is scheduled),
-- failed (the last attempt failed; the message is in the stream's dead letter).
ALTER TABLE webhook_outbound_requests DROP CONSTRAINT webhook_outbound_requests_status_check;
ALTER TABLE webhook_outbound_requests ADD CONSTRAINT webhook_outbound_requests_status_check
    CHECK (status IN ('pending', 'delivered', 'retrying', 'failed'));
CREATE INDEX webhook_outbound_by_endpoint ON webhook_outbound_requests (endpoint_id, created_at DESC);
