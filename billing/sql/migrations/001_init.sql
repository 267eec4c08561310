-- Core schema. UUID keys, money as numeric(12,2) with an ISO currency, time as timestamptz.

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger AS $$
BEGIN
    NEW.updated_at = now();
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text NOT NULL,
    password_hash text NOT NULL,
    first_name    text,
    last_name     text,
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE plans (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug          text NOT NULL UNIQUE,
    name          text NOT NULL,
    description   text NOT NULL DEFAULT '',
    price         numeric(12,2) NOT NULL CHECK (price >= 0),
    currency      char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    billing_cycle text NOT NULL CHECK (billing_cycle IN ('daily', 'weekly', 'monthly', 'yearly')),
    trial_days    integer NOT NULL DEFAULT 0 CHECK (trial_days >= 0),
    features      jsonb NOT NULL DEFAULT '{}',
    is_active     boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE subscriptions (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id              uuid NOT NULL REFERENCES users (id),
    plan_id              uuid NOT NULL REFERENCES plans (id),
    status               text NOT NULL CHECK (status IN ('trial', 'pending', 'active', 'past_due', 'canceled', 'expired')),
    current_period_start timestamptz,
    current_period_end   timestamptz,
    trial_end            timestamptz,
    cancel_at_period_end boolean NOT NULL DEFAULT false,
    canceled_at          timestamptz,
    ended_at             timestamptz,
    pending_plan_id      uuid REFERENCES plans (id),      -- a downgrade waiting for the period end
    past_due_since       timestamptz,
    dunning_attempts     integer NOT NULL DEFAULT 0,
    next_retry_at        timestamptz,
    version              integer NOT NULL DEFAULT 0,      -- optimistic concurrency
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now()
);
-- At most one live subscription per user.
CREATE UNIQUE INDEX subscriptions_one_live_per_user ON subscriptions (user_id)
    WHERE status IN ('trial', 'pending', 'active', 'past_due');
CREATE INDEX subscriptions_due ON subscriptions (status, current_period_end);
CREATE INDEX subscriptions_retry ON subscriptions (next_retry_at) WHERE status = 'past_due';

CREATE TABLE subscription_events (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id uuid NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    event_type      text NOT NULL,
    from_status     text,
    to_status       text,
    data            jsonb NOT NULL DEFAULT '{}',
    correlation_id  text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscription_events_by_subscription ON subscription_events (subscription_id, created_at);

CREATE TABLE transactions (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           uuid NOT NULL REFERENCES users (id),
    subscription_id   uuid REFERENCES subscriptions (id),
    kind              text NOT NULL CHECK (kind IN ('charge', 'refund')),
    parent_id         uuid REFERENCES transactions (id),  -- a refund points at its charge
    amount            numeric(12,2) NOT NULL CHECK (amount > 0),
    currency          char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    refunded_amount   numeric(12,2) NOT NULL DEFAULT 0 CHECK (refunded_amount >= 0 AND refunded_amount <= amount),
    status            text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed', 'refunded', 'partially_refunded')),
    reason            text,                                -- e.g. subscription_create, renewal, upgrade, refund
    card_brand        text,
    card_last4        char(4),
    gateway_reference text,
    decline_code      text,
    error_message     text,
    idempotency_key   text,
    metadata          jsonb NOT NULL DEFAULT '{}',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind = 'refund') = (parent_id IS NOT NULL))
);
CREATE INDEX transactions_by_user ON transactions (user_id, created_at DESC);
CREATE INDEX transactions_by_subscription ON transactions (subscription_id);
CREATE UNIQUE INDEX transactions_idempotency ON transactions (user_id, idempotency_key) WHERE idempotency_key IS NOT NULL;

CREATE TABLE usage (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id),
    subscription_id uuid REFERENCES subscriptions (id),
    feature_name    text NOT NULL,
    period_start    timestamptz NOT NULL,
    reset_at        timestamptz NOT NULL,
    used            bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, feature_name, period_start)
);

CREATE TABLE gateway_webhook_requests (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    event_id     text NOT NULL UNIQUE,                     -- dedup of gateway retries
    event_type   text NOT NULL,
    payload      jsonb NOT NULL,
    signature    text NOT NULL,
    status       text NOT NULL DEFAULT 'received' CHECK (status IN ('received', 'processed', 'failed', 'ignored')),
    error        text,
    processed_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE webhook_endpoints (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id),
    url        text NOT NULL,
    secret     text NOT NULL,
    events     text[] NOT NULL DEFAULT '{}',               -- empty = every event
    is_active  boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_by_user ON webhook_endpoints (user_id);

CREATE TABLE webhook_outbound_requests (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    endpoint_id     uuid REFERENCES webhook_endpoints (id) ON DELETE SET NULL,
    event_id        uuid NOT NULL,
    event_type      text NOT NULL,
    url             text NOT NULL,
    payload         jsonb NOT NULL,
    attempt         integer NOT NULL DEFAULT 1,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    response_status integer,
    response_body   text,
    error           text,
    duration_ms     integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_outbound_by_event ON webhook_outbound_requests (event_id);

-- Every POST that creates or charges: the first response is replayed for the same key.
CREATE TABLE idempotency_keys (
    user_id         uuid NOT NULL,
    scope           text NOT NULL,                         -- "METHOD path-template"
    key             text NOT NULL,
    request_hash    text NOT NULL,
    status          text NOT NULL CHECK (status IN ('in_progress', 'completed')),
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, scope, key)
);

-- Exactly-once consumption: a handler's writes and this row commit together.
CREATE TABLE inbox (
    consumer     text NOT NULL,
    message_id   text NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

-- Commands published from a transaction are relayed to streams after commit.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    stream       text NOT NULL,
    action       text NOT NULL,
    fields       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TRIGGER users_updated_at BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER plans_updated_at BEFORE UPDATE ON plans FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER subscriptions_updated_at BEFORE UPDATE ON subscriptions FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER transactions_updated_at BEFORE UPDATE ON transactions FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER usage_updated_at BEFORE UPDATE ON usage FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER gateway_webhook_requests_updated_at BEFORE UPDATE ON gateway_webhook_requests FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER webhook_endpoints_updated_at BEFORE UPDATE ON webhook_endpoints FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER webhook_outbound_requests_updated_at BEFORE UPDATE ON webhook_outbound_requests FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER idempotency_keys_updated_at BEFORE UPDATE ON idempotency_keys FOR EACH ROW EXECUTE FUNCTION set_updated_at();
