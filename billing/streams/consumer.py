"""Consumer: one member of a consumer group running the router's handlers on a stream.

Delivery is at least once: a message is XACKed only after its handler returned, so a crash
leaves it pending and XAUTOCLAIM hands it to another consumer after the lease. Handlers make
their effect exactly once with the inbox (see inbox.py).
"""

import asyncio
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from itertools import chain

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from redis.exceptions import ResponseError

from . import metrics
from .envelope import Envelope
from .policy import RetryPolicy
from .publisher import DEFAULT_MAXLEN
from .router import PermanentError, Router

log = structlog.get_logger("billing.streams")

# Fields a dead-letter entry adds to the original message fields.
DEAD_FIELDS = ("error", "error_type", "failed_at", "source_id")


def delayed_key(stream: str) -> str:
    """ZSET of envelopes waiting for a retry, scored by due time (unix seconds)."""
    return f"{stream}:delayed"


def dead_key(stream: str) -> str:
    return f"{stream}:dead"


# Moves due retries back onto the stream. A script runs atomically, so several movers
# never move the same member twice. Members are JSON [field, value, field, value, ...].
MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(cjson.decode(member)))
end
return #due
"""


class DeliveryLimitExceeded(PermanentError):
    """The message was delivered too often without an ack (its handler kept crashing the worker)."""


class Consumer:
    def __init__(
        self,
        redis: aioredis.Redis,
        stream: str,
        group: str,
        name: str,
        router: Router,
        *,
        policy: RetryPolicy = RetryPolicy(),
        concurrency: int = 16,
        batch: int | None = None,
        block_ms: int = 1000,
        maxlen: int = DEFAULT_MAXLEN,
        shutdown_timeout: float = 10.0,
        poll_interval: float = 0.1,
        claim_interval: float | None = None,
        metrics_interval: float = 5.0,
        dependencies_up: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """`name` must be stable across restarts (e.g. f"{hostname}-{procname}-{index}")
        so that a restarted consumer finds its own pending entries.

        `dependencies_up` (optional) checks the stores the handlers need (it raises or returns
        False when one is down). A failure while they are down is an outage, not the message's
        fault: it is retried later without using up an attempt, so a long outage dead-letters nothing."""
        if not redis.get_connection_kwargs().get("decode_responses"):
            raise ValueError("the Redis client needs decode_responses=True")
        self.redis = redis
        self.stream = stream
        self.group = group
        self.name = name
        self.router = router
        self.policy = policy
        self.concurrency = concurrency
        self.batch = batch or concurrency
        self.block_ms = block_ms
        self.maxlen = maxlen
        self.shutdown_timeout = shutdown_timeout
        self.poll_interval = poll_interval
        self.claim_interval = claim_interval or min(policy.lease / 2, 5.0)
        self.metrics_interval = metrics_interval
        self.dependencies_up = dependencies_up
        self.log = log.bind(stream=stream, group=group, consumer=name)
        self._move_due = redis.register_script(MOVE_DUE)
        # `concurrency` worker coroutines take delivered entries from this backlog (cheaper than a task
        # each); the readers add a batch only once the previous one is taken, so at most `batch` wait.
        self._backlog: deque[tuple[str, Mapping[str, str], int | None]] = deque()
        self._parked: deque[asyncio.Future[None]] = deque()  # idle workers waiting for entries
        self._waking = False  # a parked worker was woken and has not run yet
        self._taken = asyncio.Event()  # the backlog became empty
        self._settled = asyncio.Event()  # nothing in flight
        self._inflight: dict[str, float] = {}  # message id -> monotonic time of delivery or last lease renewal
        self._acks: list[str] = []
        self._ack_wanted = asyncio.Event()
        self._read_from = "0"  # XREADGROUP id: "0" rereads our own pending entries, then ">"
        self._claim_cursor = "0-0"

    async def ensure_group(self) -> None:
        # From "0", not "$": messages published before the first worker existed are consumed too.
        try:
            await self.redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _recreate_group(self) -> None:
        try:
            await self.ensure_group()
        except Exception:
            self.log.exception("recreating the consumer group failed")
            await asyncio.sleep(1.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then finish in-flight handlers (up to shutdown_timeout).

        Handlers still running then, or everything when this task is cancelled, stay pending
        in the group and are claimed again later: nothing is lost.
        """
        await self.ensure_group()
        self.log.info("consumer started")
        self._read_from = "0"
        spawn = asyncio.create_task
        readers = [
            spawn(self._forever(self._read_once, 0)),
            spawn(self._forever(self._claim_once, self.claim_interval)),
            spawn(self._forever(self._move_once, self.poll_interval)),
            spawn(self._forever(self._observe, self.metrics_interval)),
        ]
        workers = [spawn(self._work()) for _ in range(self.concurrency)]
        keepers = [
            spawn(self._forever(self._renew_once, self.policy.lease / 4)),
            spawn(self._forever(self._ack_once, 0)),
        ]
        try:
            await stop.wait()
            await _cancel(readers)
            await self._drain()
        finally:
            await _cancel(readers + workers + keepers)
            self.log.info("consumer stopped")

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._until_settled(), self.shutdown_timeout)
        except TimeoutError:
            self.log.warning("handlers still running at shutdown stay pending", count=len(self._inflight))
        await self._flush_acks()

    # --- loops -------------------------------------------------------------------------

    async def _forever(self, step: Callable[[], Awaitable[bool]], interval: float) -> None:
        """Run `step` again at once while it reports more work, else after `interval`; survive errors."""
        while True:
            try:
                busy = await step()
            except Exception:
                self.log.exception("stream loop failed", step=step.__name__)
                busy = False
                await asyncio.sleep(1.0)
            if not busy:
                await asyncio.sleep(interval)

    async def _read_once(self) -> bool:
        """One XREADGROUP: first our own pending entries (left by a previous run), then new ones."""
        history = self._read_from != ">"
        try:
            reply = await self.redis.xreadgroup(
                self.group,
                self.name,
                {self.stream: self._read_from},
                count=self.batch,
                block=None if history else self.block_ms,
            )
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Redis lost its data (restarted without persistence): recreate the group and go on.
            self.log.warning("consumer group missing, recreating it")
            await self._recreate_group()
            self._read_from = "0"
            return True
        entries = reply[0][1] if reply else []
        deliveries = {}
        if history:
            if not entries:
                self._read_from = ">"
                return True
            self._read_from = entries[-1][0]
            self.log.info("rereading own pending entries", count=len(entries))
            deliveries = await self._deliveries([msg_id for msg_id, _ in entries])
        await self._start(entries, deliveries)
        return True

    async def _claim_once(self) -> bool:
        """XAUTOCLAIM entries idle longer than the lease, following the cursor across calls."""
        self._claim_cursor, claimed, *_ = await self.redis.xautoclaim(
            self.stream,
            self.group,
            self.name,
            min_idle_time=int(self.policy.lease * 1000),
            start_id=self._claim_cursor,
            count=self.batch,
        )
        claimed = [(msg_id, fields) for msg_id, fields in claimed if msg_id not in self._inflight]
        if claimed:
            self.log.info("claimed idle entries", count=len(claimed))
            deliveries = await self._deliveries([msg_id for msg_id, _ in claimed])
            await self._start(claimed, deliveries)
        return self._claim_cursor != "0-0"  # "0-0": wrapped around, wait before the next pass

    async def _renew_once(self) -> bool:
        """Re-claim entries whose handlers run past half the lease, so nobody else claims them."""
        now = time.monotonic()
        due = [msg_id for msg_id, since in self._inflight.items() if now - since >= self.policy.lease / 2]
        if due:
            await self.redis.xclaim(self.stream, self.group, self.name, 0, due, justid=True)
            for msg_id in due:
                if msg_id in self._inflight:
                    self._inflight[msg_id] = now
        return False

    async def _move_once(self) -> bool:
        moved = await self._move_due(
            keys=[delayed_key(self.stream), self.stream], args=[time.time(), self.batch, self.maxlen]
        )
        return moved >= self.batch

    async def _ack_once(self) -> bool:
        await self._ack_wanted.wait()
        await self._flush_acks()
        return True

    async def _observe(self) -> bool:
        await metrics.observe_group(self.redis, self.stream, self.group)
        return False

    # --- one message ---------------------------------------------------------------------

    async def _deliveries(self, ids: list[str]) -> dict[str, int]:
        """Delivery counts from XPENDING."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for msg_id in ids:
                pipe.xpending_range(self.stream, self.group, msg_id, msg_id, 1)
            replies = await pipe.execute()
        return {r[0]["message_id"]: r[0]["times_delivered"] for r in replies if r}

    async def _start(self, entries: list[tuple[str, Mapping[str, str] | None]], deliveries: dict[str, int]) -> None:
        """Hand entries to the workers once the previous batch is taken (so the next XREADGROUP
        overlaps with this batch's handlers); they count as in flight (lease renewed) from now."""
        now = time.monotonic()
        batch = []
        for msg_id, fields in entries:
            if not fields:  # deleted (trimmed) while pending: nothing left to run
                self._ack(msg_id)
            elif msg_id not in self._inflight:
                self._inflight[msg_id] = now
                batch.append((msg_id, fields, deliveries.get(msg_id)))
        if not batch:
            return
        self._settled.clear()
        try:
            await self._until_taken()
        except asyncio.CancelledError:  # stopping: they stay pending and are read again later
            for msg_id, _, _ in batch:
                self._inflight.pop(msg_id, None)
            if not self._inflight:
                self._settled.set()
            raise
        self._backlog.extend(batch)
        self._wake_one()

    def _wake_one(self) -> None:
        """Wake one parked worker, unless one is already on its way. A woken worker wakes the next
        one only if entries remain when it takes one, so a batch of handlers that never wait costs
        one wake-up instead of one per message, and handlers that wait still run concurrently."""
        while not self._waking and self._parked:
            parked = self._parked.popleft()
            if not parked.done():
                parked.set_result(None)
                self._waking = True

    async def _until_taken(self) -> None:
        while self._backlog:
            self._taken.clear()
            await self._taken.wait()

    async def _until_settled(self) -> None:
        while self._inflight:
            await self._settled.wait()

    async def _work(self) -> None:
        structlog.contextvars.bind_contextvars(stream=self.stream)  # this worker task's own context
        loop = asyncio.get_running_loop()
        backlog, inflight = self._backlog, self._inflight
        while True:
            if not backlog:
                parked = loop.create_future()
                self._parked.append(parked)
                try:
                    await parked
                finally:
                    self._waking = False
                continue
            msg_id, fields, deliveries = backlog.popleft()
            if backlog:
                self._wake_one()  # a peer takes the next entry if this handler waits
            else:
                self._taken.set()
            try:
                await self._process(msg_id, fields, deliveries)
            except Exception:
                # e.g. Redis unreachable while dead-lettering: the entry stays pending and is claimed again.
                self.log.exception("message left pending", message_id=msg_id)
            finally:
                inflight.pop(msg_id, None)
                if not inflight:
                    self._settled.set()

    async def _process(self, msg_id: str, fields: Mapping[str, str], deliveries: int | None) -> None:
        # Bound in the worker's context, so they reach the handler's log lines too. The same keys
        # are overwritten for each message (a handler binding its own should use bound_contextvars).
        structlog.contextvars.bind_contextvars(
            message_id=msg_id, action=fields.get("action"), correlation_id=fields.get("correlation_id")
        )
        try:
            envelope = Envelope.from_fields(fields)
            route, payload = self.router.resolve(envelope)
        except (ValidationError, PermanentError) as exc:
            await self._dead(msg_id, fields, "-", exc)
            return
        measure = metrics.for_action(self.stream, envelope.action)
        limit = envelope.max_attempts or self.policy.max_attempts
        if deliveries is not None and deliveries > limit:
            exc = DeliveryLimitExceeded(f"delivered {deliveries} times, limit {limit}")
            await self._dead(msg_id, fields, envelope.action, exc)
            return
        started = time.perf_counter()
        try:
            await route.handler(envelope, payload)
        except PermanentError as exc:
            measure.failed.inc()
            await self._dead(msg_id, fields, envelope.action, exc)
        except Exception as exc:
            measure.failed.inc()
            await self._retry_or_dead(msg_id, envelope, exc, counts=await self._dependencies_are_up())
        else:
            measure.processed.inc()
            self._ack(msg_id)
        finally:
            measure.latency.observe(time.perf_counter() - started)

    def _ack(self, msg_id: str) -> None:
        # Acks are batched: one XACK for everything finished since the last one.
        self._acks.append(msg_id)
        self._ack_wanted.set()

    async def _flush_acks(self) -> None:
        self._ack_wanted.clear()
        ids, self._acks = self._acks, []
        if not ids:
            return
        try:
            await self.redis.xack(self.stream, self.group, *ids)
        except Exception:
            self._acks[:0] = ids
            raise

    async def _dependencies_are_up(self) -> bool:
        if self.dependencies_up is None:
            return True
        try:
            return await asyncio.wait_for(self.dependencies_up(), 2.0) is not False
        except Exception:
            return False

    async def _retry_or_dead(self, msg_id: str, envelope: Envelope, exc: Exception, counts: bool = True) -> None:
        """Schedule a retry; `counts=False` (an outage) retries without using up an attempt."""
        attempts = envelope.attempts + 1 if counts else envelope.attempts
        failed = envelope.model_copy(update={"attempts": attempts, "last_error": _describe(exc)})
        limit = envelope.max_attempts or self.policy.max_attempts
        if attempts >= limit:
            await self._dead(msg_id, failed.to_fields(), envelope.action, exc)
            return
        delay = self.policy.delay_for(max(attempts, 1))
        member = json.dumps(list(chain.from_iterable(failed.to_fields().items())))
        # Scheduling the retry and acking the original happen together or not at all.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(delayed_key(self.stream), {member: time.time() + delay})
            pipe.xack(self.stream, self.group, msg_id)
            await pipe.execute()
        metrics.for_action(self.stream, envelope.action).retried.inc()
        self.log.warning("handler failed, retry scheduled" if counts else "dependency down, retry scheduled",
                         attempt=attempts, delay=round(delay, 3), exc_info=exc)

    async def _dead(self, msg_id: str, fields: Mapping[str, str], action: str, exc: Exception) -> None:
        entry = {
            **fields,
            "error": str(exc) or type(exc).__name__,
            "error_type": type(exc).__name__,
            "failed_at": datetime.now(UTC).isoformat(),
            "source_id": msg_id,
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(dead_key(self.stream), entry)
            pipe.xack(self.stream, self.group, msg_id)
            await pipe.execute()
        metrics.for_action(self.stream, action).dead.inc()
        self.log.error("message dead-lettered", error_type=type(exc).__name__, exc_info=exc)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def _cancel(tasks: list[asyncio.Task]) -> None:
    """Cancel and wait for `tasks`, cancelling again those that swallowed it: redis-py can lose
    a CancelledError that lands at the wrong moment (redis/redis-py#2028, #2551)."""
    running = {task for task in tasks if not task.done()}
    while running:
        for task in running:
            task.cancel()
        _, running = await asyncio.wait(running, timeout=0.5)
