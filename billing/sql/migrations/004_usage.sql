-- Usage metering: the cleanup deletes rows of long-ended periods by reset_at.
CREATE INDEX usage_by_reset_at ON usage (reset_at);
