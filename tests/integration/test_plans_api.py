from decimal import Decimal

from billing.plans import DEMO_PLANS
from billing.sql import plans


async def test_catalog_lists_the_seeded_demo_plans(sub_client):
    resp = await sub_client.get("/v1/plans")
    body = await resp.json()
    assert resp.status == 200
    by_slug = {p["slug"]: p for p in body["data"]}
    assert set(by_slug) == {p.id for p in DEMO_PLANS}
    assert by_slug["basic"]["price"] == "9.99" and by_slug["basic"]["currency"] == "USD"
    assert by_slug["trial"]["trial_days"] == 14
    assert by_slug["pro"]["features"]["projects"] is None  # unlimited


async def test_one_plan_by_id_or_slug_and_404(sub_client):
    basic = (await (await sub_client.get("/v1/plans/basic")).json())["data"]
    again = (await (await sub_client.get(f"/v1/plans/{basic['id']}")).json())["data"]
    assert again == basic
    resp = await sub_client.get("/v1/plans/nope")
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"


async def test_seeding_twice_changes_nothing_and_round_trips_to_the_domain(pool):
    async with pool.acquire() as conn:
        await plans.seed_demo(conn)
        rows = await plans.list_active(conn)
        assert len(rows) == len(DEMO_PLANS)
        pro = plans.to_domain(await plans.get_by_slug(conn, "pro"))
    assert pro.price.amount == Decimal("29.99") and pro.limit("api_calls") == 100_000
