"""The caller's invoices: GET /v1/invoices (paginated, newest first), GET /v1/invoices/{id} (with lines)."""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from uuid import UUID

from aiohttp import web
from pydantic import BaseModel

from billing.http.api import Routes
from billing.http.pagination import Page, PageQuery
from billing.http.context import POOL, path_uuid, user_id
from billing.http.errors import NotFound
from billing.sql import invoices

routes = Routes("invoices")


class InvoiceLineOut(BaseModel):
    kind: str                       # plan_charge | proration_debit add; proration_credit | refund subtract
    description: str
    amount: Decimal                 # a magnitude; the kind gives the sign
    period_start: datetime | None
    period_end: datetime | None


class InvoiceOut(BaseModel):
    id: UUID
    number: str
    status: str                     # open | paid | void
    reason: str
    subscription_id: UUID | None
    transaction_id: UUID | None
    currency: str
    subtotal: Decimal
    total: Decimal
    amount_due: Decimal
    amount_paid: Decimal
    amount_refunded: Decimal
    period_start: datetime | None
    period_end: datetime | None
    paid_at: datetime | None
    created_at: datetime


class InvoiceDetail(InvoiceOut):
    lines: list[InvoiceLineOut]


def invoice_out(row) -> InvoiceOut:
    values = {k: row[k] for k in InvoiceOut.model_fields}
    return InvoiceOut(**{**values, "currency": row["currency"].strip()})


@routes.get("/v1/invoices", query=PageQuery, response=Page[InvoiceOut], errors=(401, 422),
            summary="Your invoices, newest first")
async def list_invoices(request: web.Request, query: PageQuery):
    rows, total = await invoices.list_for_user(request.app[POOL], user_id(request), limit=query.page_size,
                                               offset=query.offset)
    return Page[InvoiceOut](items=[invoice_out(r) for r in rows], total=total, page=query.page, page_size=query.page_size)


@routes.get("/v1/invoices/{id}", response=InvoiceDetail, errors=(401, 404), summary="One of your invoices with its lines")
async def get_invoice(request: web.Request):
    pool = request.app[POOL]
    row = await invoices.get_for_user(pool, path_uuid(request), user_id(request))
    if row is None:
        raise NotFound("no such invoice")
    lines = [InvoiceLineOut(**{k: line[k] for k in InvoiceLineOut.model_fields}) for line in await invoices.lines(pool, row["id"])]
    return InvoiceDetail(**invoice_out(row).model_dump(), lines=lines)
