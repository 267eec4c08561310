-- Saved cards: only brand, last4, expiry and the gateway's token. Never the number or the CVV.
CREATE TABLE payment_methods (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid NOT NULL REFERENCES users (id),
    brand         text NOT NULL,
    last4         char(4) NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    exp_month     integer NOT NULL CHECK (exp_month BETWEEN 1 AND 12),
    exp_year      integer NOT NULL CHECK (exp_year BETWEEN 2000 AND 2099),
    gateway_token text NOT NULL UNIQUE,
    is_default    boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_methods_by_user ON payment_methods (user_id, created_at DESC);
-- One default card per user: renewals charge it.
CREATE UNIQUE INDEX payment_methods_one_default ON payment_methods (user_id) WHERE is_default;
CREATE TRIGGER payment_methods_updated_at BEFORE UPDATE ON payment_methods FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Refunds of a charge are summed under the charge's row lock.
CREATE INDEX transactions_by_parent ON transactions (parent_id) WHERE parent_id IS NOT NULL;
