"""The public plan catalog: GET /v1/plans, GET /v1/plans/{id} (id or slug)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel

from billing.http.api import Routes
from billing.http.context import POOL
from billing.http.errors import NotFound
from billing.sql import plans

routes = Routes("plans")


class PlanOut(BaseModel):
    id: UUID
    slug: str
    name: str
    description: str
    price: Decimal
    currency: str
    billing_cycle: str
    trial_days: int
    features: dict[str, int | None]   # feature -> usage limit per billing cycle; null = unlimited
    is_active: bool
    created_at: datetime


def plan_out(row) -> PlanOut:
    return PlanOut(**{k: row[k] for k in PlanOut.model_fields if k != "currency"}, currency=row["currency"].strip())


async def find_plan(conn, key: str):
    """A plan by UUID or by slug ("basic"); None if neither matches."""
    try:
        return await plans.get(conn, UUID(key))
    except ValueError:
        return await plans.get_by_slug(conn, key)


@routes.get("/v1/plans", response=list[PlanOut], auth=False, summary="Active plans, cheapest first")
async def list_plans(request: web.Request):
    return [plan_out(r) for r in await plans.list_active(request.app[POOL])]


@routes.get("/v1/plans/{id}", response=PlanOut, auth=False, errors=(404,), summary="One plan by id or slug")
async def get_plan(request: web.Request):
    row = await find_plan(request.app[POOL], request.match_info["id"])
    if row is None:
        raise NotFound("no such plan")
    return plan_out(row)
