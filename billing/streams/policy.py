"""Retry policy: how often and how late a failed message is tried again."""

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3  # a message runs at most max_retries + 1 times
    base_delay: float = 60.0  # seconds before the first retry
    multiplier: float = 2.0
    max_delay: float = 3600.0
    jitter: float = 10.0  # uniform(0, jitter) seconds added so retries do not stampede
    lease: float = 120.0  # seconds a delivered message may stay silent before others claim it

    @property
    def max_attempts(self) -> int:
        return self.max_retries + 1

    def delay_for(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1 for the first retry)."""
        backoff = self.base_delay * self.multiplier ** max(attempt - 1, 0)
        return min(self.max_delay, backoff) + random.uniform(0, self.jitter)
