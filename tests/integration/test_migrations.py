import asyncio

from billing.sql import connect, migrate, migration_files
from tests.conftest import PG_URL


async def test_migrations_are_recorded_and_idempotent(settings):
    conn = await connect(PG_URL, settings.database_schema)
    try:
        assert await migrate(conn) == []
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [v for v, _, _ in migration_files()]
        tables = {r["table_name"] for r in await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", settings.database_schema)}
        assert {"users", "plans", "subscriptions", "subscription_events", "transactions", "usage",
                "gateway_webhook_requests", "webhook_outbound_requests", "idempotency_keys", "inbox", "outbox"} <= tables
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_each_file_once(settings):
    import asyncpg
    admin = await asyncpg.connect(PG_URL)
    schema = settings.database_schema + "_c"
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        conns = [await connect(PG_URL, schema) for _ in range(4)]
        results = await asyncio.gather(*(migrate(c) for c in conns))
        assert sorted(len(r) for r in results) == [0, 0, 0, len(migration_files())]
        for c in conns:
            await c.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


async def test_updated_at_trigger_and_money_checks(pool):
    user_id = await pool.fetchval("INSERT INTO users (email, password_hash) VALUES ('t@x.io', 'h') RETURNING id")
    before = await pool.fetchval("SELECT updated_at FROM users WHERE id = $1", user_id)
    await asyncio.sleep(0.01)
    after = await pool.fetchval("UPDATE users SET first_name = 'T' WHERE id = $1 RETURNING updated_at", user_id)
    assert after > before
    import asyncpg
    import pytest
    with pytest.raises(asyncpg.CheckViolationError):
        await pool.execute("INSERT INTO plans (slug, name, price, currency, billing_cycle) VALUES ('x', 'X', -1, 'USD', 'monthly')")
