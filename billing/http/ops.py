"""The operator page (replaces the seed's Flower), on the subscriptions service.

GET  /ops            one self-contained HTML page: streams, groups, consumers (idle, pending), lag,
                     delayed retries, dead letters (newest first, with their error) and a Replay button each
GET  /ops/streams    the same as JSON
POST /ops/replay     {stream, id}: move one dead letter back onto its stream (attempts reset)

Auth: the operator token (BILLING_OPERATOR_TOKEN), in the X-Operator-Token header or, for the
browser page, ?token=... (the page then sends it as the header). Not a user JWT: operators see
every stream of the deployment.
"""
from __future__ import annotations

import hmac
import html

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import ResponseError

from billing.http.api import Reply, Routes
from billing.http.context import REDIS, SETTINGS
from billing.http.errors import NotFound, Unauthorized
from billing.streams import admin

routes = Routes("operations")
TOKEN_HEADER = "X-Operator-Token"
DEAD_SHOWN = 20


class OpsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str | None = None
    dead: int = Field(DEAD_SHOWN, ge=0, le=500)  # newest dead letters shown per stream


class ReplayOne(BaseModel):
    model_config = ConfigDict(extra="forbid")
    stream: str = Field(min_length=1, max_length=300)
    id: str = Field(pattern=r"^\d{1,20}-\d{1,20}$")  # the dead-letter entry id


def _require_operator(request: web.Request) -> None:
    given = request.headers.get(TOKEN_HEADER) or request.query.get("token") or ""
    expected = request.app[SETTINGS].operator_token.get_secret_value()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise Unauthorized("operator token required", headers={"WWW-Authenticate": TOKEN_HEADER})


async def overview(redis, prefix: str, dead_count: int = DEAD_SHOWN) -> list[dict]:
    """Every stream under `prefix`: groups with their consumers, delayed, dead and the newest dead letters."""
    rows = await admin.info(redis, prefix + ":")
    for row in rows:
        for group in row["groups"]:
            try:
                consumers = await redis.xinfo_consumers(row["stream"], group["group"])
            except ResponseError:  # the group went away meanwhile
                consumers = []
            group["consumers"] = [{"name": c["name"], "pending": c["pending"], "idle_ms": c["idle"]} for c in consumers]
        row["pending"] = sum(g["pending"] for g in row["groups"])
        row["lag"] = sum(g["lag"] or 0 for g in row["groups"])
        row["dead_letters"] = [
            {k: entry.get(k) for k in ("dead_id", "id", "action", "attempts", "error_type", "error", "failed_at",
                                        "correlation_id", "payload")}
            for entry in (await admin.dead(redis, row["stream"], dead_count) if dead_count else [])
        ]
    return rows


@routes.get("/ops/streams", query=OpsQuery, auth=False, errors=(401,),
            summary="Operator: streams, groups, consumers, pending, lag, delayed and dead letters (X-Operator-Token)")
async def streams_json(request: web.Request, query: OpsQuery):
    _require_operator(request)
    return {"streams": await overview(request.app[REDIS], request.app[SETTINGS].redis_prefix, query.dead)}


@routes.post("/ops/replay", body=ReplayOne, auth=False, errors=(401, 404, 422),
             summary="Operator: move one dead letter back onto its stream (X-Operator-Token)")
async def replay(request: web.Request, body: ReplayOne):
    _require_operator(request)
    prefix = request.app[SETTINGS].redis_prefix
    if body.stream not in await admin.stream_names(request.app[REDIS], prefix + ":"):
        raise NotFound("no such stream")
    if not await admin.replay(request.app[REDIS], body.stream, [body.id]):
        raise NotFound("no such dead letter")
    return Reply({"stream": body.stream, "id": body.id, "replayed": 1}, "dead letter replayed")


@routes.get("/ops", query=OpsQuery, auth=False, errors=(401,), summary="Operator page (HTML; ?token=...)")
async def page(request: web.Request, query: OpsQuery):
    _require_operator(request)
    rows = await overview(request.app[REDIS], request.app[SETTINGS].redis_prefix, query.dead)
    return web.Response(text=render(rows), content_type="text/html",
                        headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer",
                                 "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
                                                            "script-src 'unsafe-inline'; connect-src 'self'"})


def _e(value) -> str:
    return html.escape("" if value is None else str(value))


def render(rows: list[dict]) -> str:
    parts = []
    for row in rows:
        groups = "".join(
            f"<tr><td>{_e(g['group'])}</td><td>{g['pending']}</td><td>{_e(g['lag'])}</td><td>"
            + ("<br>".join(f"{_e(c['name'])}: pending {c['pending']}, idle {c['idle_ms'] / 1000:.1f} s"
                           for c in g["consumers"]) or "none")
            + "</td></tr>"
            for g in row["groups"]
        ) or "<tr><td colspan=4>no consumer group yet</td></tr>"
        dead = "".join(
            f"<tr><td>{_e(d['dead_id'])}</td><td>{_e(d['action'])}</td><td>{_e(d['attempts'])}</td>"
            f"<td>{_e(d['error_type'])}: {_e(d['error'])}</td><td>{_e(d['failed_at'])}</td>"
            f"<td><button data-stream=\"{_e(row['stream'])}\" data-id=\"{_e(d['dead_id'])}\">Replay</button></td></tr>"
            for d in row["dead_letters"]
        ) or "<tr><td colspan=6>none</td></tr>"
        parts.append(
            f"<section><h2>{_e(row['stream'])}</h2>"
            f"<p>length {row['length']} &middot; pending {row['pending']} &middot; lag {row['lag']} &middot; "
            f"delayed {row['delayed']} &middot; dead {row['dead']}</p>"
            f"<table><tr><th>group</th><th>pending</th><th>lag</th><th>consumers</th></tr>{groups}</table>"
            f"<h3>Dead letters (newest first)</h3><table><tr><th>id</th><th>action</th><th>attempts</th>"
            f"<th>error</th><th>failed at</th><th></th></tr>{dead}</table></section>"
        )
    body = "".join(parts) or "<p>No streams yet.</p>"
    return _PAGE.replace("{{BODY}}", body)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>billing operations</title>
<style>
body{font:14px system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem}
td,th{border:1px solid #ccc;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3} section{margin-bottom:2rem} #msg{font-weight:bold}
</style></head><body>
<h1>billing operations</h1><p id="msg"></p>
{{BODY}}
<script>
const token = new URLSearchParams(location.search).get("token") || "";
document.querySelectorAll("button[data-id]").forEach(b => b.addEventListener("click", async () => {
  const r = await fetch("/ops/replay", {method: "POST",
    headers: {"Content-Type": "application/json", "X-Operator-Token": token},
    body: JSON.stringify({stream: b.dataset.stream, id: b.dataset.id})});
  const j = await r.json();
  document.getElementById("msg").textContent = j.success ? "Replayed " + b.dataset.id : "Error: " + j.error;
  if (j.success) setTimeout(() => location.reload(), 500);
}));
</script></body></html>"""
