"""Operational status: webhooks, outbox, edges, keys and the purchase funnel.

``GET /v1/status`` returns it as JSON to an admin token with the ``status``
scope (a read-only token for operators and partners) or the root token.
``GET /status`` is an HTML page that polls that endpoint every two seconds.
The page itself contains no data. Its script reads the token from the URL
fragment (``/status#token=...``), which browsers do not send to the server.

Store-backed values are the same on every origin replica. The ``counters``
of :mod:`origin.counters` belong to the process that handles the request.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import time
from importlib import resources
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from origin import purchase_records as records
from origin.auth import require_scope
from origin.state import Origin
from origin.store import purchases, webhook_dead_letters, webhook_events

# Purchase statuses in funnel order. Any other status is listed after them.
FUNNEL_ORDER = (
    records.PENDING,
    records.AUTHORIZED,
    records.CAPTURED,
    records.GRANTED,
    records.REFUNDING,
    records.REFUNDED,
    records.DECLINED,
    records.VOIDING,
    records.CANCELED,
    records.FAILED,
)


async def _count_by(connection: AsyncConnection, column: Any) -> dict[str, int]:
    rows = await connection.execute(select(column, func.count()).group_by(column))
    return {str(value): int(count) for value, count in rows.all()}


async def _webhooks(origin: Origin, connection: AsyncConnection) -> dict[str, Any]:
    now = time.time()
    dead = (
        await connection.execute(
            select(func.count())
            .select_from(webhook_dead_letters)
            .where(webhook_dead_letters.c.replayed_at.is_(None))
        )
    ).scalar_one()
    last = (
        await connection.execute(select(func.max(webhook_events.c.received_at)))
    ).scalar()
    failures: dict[str, dict[str, int]] = {}
    for (
        provider,
        reason,
    ), count in origin.counters.webhook_verification_failures.items():
        failures.setdefault(provider, {})[reason] = count
    return {
        "events_by_status": await _count_by(connection, webhook_events.c.status),
        "dead_letters": int(dead),
        "last_received_age_seconds": round(now - last, 3) if last else None,
        "verification_failures": failures,
    }


async def _funnel(origin: Origin, connection: AsyncConnection) -> dict[str, Any]:
    by_status = await _count_by(connection, purchases.c.status)
    ordered = {status: by_status.pop(status, 0) for status in FUNNEL_ORDER}
    counters = origin.counters
    return {
        "preview_sessions": counters.playback_sessions["preview"],
        "entitled_sessions": counters.playback_sessions["entitled"],
        "distinct_previews": counters.previews,
        "purchases_after_preview": counters.purchases_after_preview,
        "preview_conversion": counters.conversion,
        "purchases_by_status": {**ordered, **by_status},
    }


def _edges(outbox: dict[str, Any]) -> list[dict[str, Any]]:
    last_seq = int(outbox["last_seq"])
    return [
        {
            "target": destination["target"],
            "acknowledged_seq": destination["delivered_seq"],
            "behind_events": max(0, last_seq - int(destination["delivered_seq"])),
            "acknowledged_age_seconds": destination["acknowledged_age_seconds"],
            "failures": destination["failures"],
        }
        for destination in outbox["destinations"]
    ]


async def read_status(origin: Origin) -> dict[str, Any]:
    """Collect every section of the status page from the store and the process."""
    now = time.time()
    outbox = await origin.relay.status()
    keys = [
        {
            "kid": record.kid,
            "state": record.state,
            "algorithm": record.algorithm,
            "age_seconds": round(now - record.created_at, 1),
        }
        for record in await origin.keys.records()
    ]
    async with origin.engine.connect() as connection:
        webhooks = await _webhooks(origin, connection)
        funnel = await _funnel(origin, connection)
    return {
        "generated_at": now,
        "webhooks": webhooks,
        "outbox": outbox,
        "edges": _edges(outbox),
        "keys": keys,
        "funnel": funnel,
    }


async def status_json(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "status")
    return JSONResponse(
        await read_status(origin), headers={"Cache-Control": "no-store"}
    )


@functools.cache
def _page() -> tuple[str, str]:
    """Return the status page and its Content-Security-Policy.

    The policy allows the page's one inline script by its SHA-256 hash, so
    no other script runs even if one were injected into the page.
    """
    page = resources.files("origin").joinpath("status.html").read_text("utf-8")
    script = re.search(r"<script>(.*?)</script>", page, re.S)
    if script is None:
        raise RuntimeError("origin/status.html has no inline <script>")
    digest = hashlib.sha256(script.group(1).encode()).digest()
    policy = (
        "default-src 'none'; "
        f"script-src 'sha256-{base64.b64encode(digest).decode()}'; "
        "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'"
    )
    return page, policy


async def status_page(request: Request) -> Response:
    page, policy = _page()
    return HTMLResponse(
        page,
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": policy,
            "Referrer-Policy": "no-referrer",
        },
    )


routes = [
    Route("/v1/status", status_json, methods=["GET"]),
    Route("/status", status_page, methods=["GET"]),
]
