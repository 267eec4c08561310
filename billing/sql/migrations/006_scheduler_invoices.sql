-- Time-driven billing: what the scheduler already asked for, and invoices.

-- The scheduler marks a subscription in the same transaction that puts its ChargeSubscription in
-- the outbox; a due query skips a subscription whose mark matches, so re-running a tick (or a
-- second scheduler) never asks twice, and a crash between the two can not happen (one commit).
ALTER TABLE subscriptions
    ADD COLUMN IF NOT EXISTS renewal_requested_for   timestamptz,  -- = current_period_end once its renewal is asked for
    ADD COLUMN IF NOT EXISTS retry_requested_attempt integer,      -- = dunning_attempts + 1 once that retry is asked for
    ADD COLUMN IF NOT EXISTS conversion_requested_at timestamptz;  -- set once the trial conversion charge is asked for

CREATE INDEX IF NOT EXISTS subscriptions_trial_end ON subscriptions (trial_end) WHERE status = 'trial';
CREATE INDEX IF NOT EXISTS subscriptions_pending_created ON subscriptions (created_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Numbers are sequential per deployment (INV-000001); a rolled-back transaction leaves a gap.
-- transaction_id has no foreign key: the id comes from the payments service's outcome, and the
-- subscriptions side must not depend on payments' tables (it may run on its own database).
CREATE SEQUENCE invoice_number_seq;

CREATE TABLE invoices (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users (id),
    subscription_id uuid REFERENCES subscriptions (id),
    number          text NOT NULL UNIQUE,
    status          text NOT NULL CHECK (status IN ('open', 'paid', 'void')),
    reason          text NOT NULL,                         -- the charge's reason: subscription_create, renewal, upgrade...
    currency        char(3) NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    subtotal        numeric(12,2) NOT NULL CHECK (subtotal >= 0),   -- plan charges + proration debits
    total           numeric(12,2) NOT NULL,                          -- subtotal - proration credits
    amount_due      numeric(12,2) NOT NULL CHECK (amount_due >= 0),
    amount_paid     numeric(12,2) NOT NULL DEFAULT 0 CHECK (amount_paid >= 0),
    amount_refunded numeric(12,2) NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),  -- refund lines (credit notes) added later
    period_start    timestamptz,
    period_end      timestamptz,
    transaction_id  uuid UNIQUE,            -- the charge that paid it (payments' transaction): one invoice per charge
    paid_at         timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_by_user ON invoices (user_id, created_at DESC, number DESC);

CREATE TABLE invoice_lines (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    invoice_id     uuid NOT NULL REFERENCES invoices (id) ON DELETE CASCADE,
    position       integer NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('plan_charge', 'proration_credit', 'proration_debit', 'refund')),
    description    text NOT NULL,
    amount         numeric(12,2) NOT NULL CHECK (amount >= 0),      -- a magnitude: the kind gives the sign
    period_start   timestamptz,
    period_end     timestamptz,
    transaction_id uuid UNIQUE,                                      -- a refund line names its refund: added once
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (invoice_id, position)
);

CREATE TRIGGER invoices_updated_at BEFORE UPDATE ON invoices FOR EACH ROW EXECUTE FUNCTION set_updated_at();
