"""Sandbox mode: a store seeded with known fixtures and a reset to them.

With ``OriginSettings.sandbox`` set, a fresh store starts with the catalog
and viewer below, and ``POST /v1/admin/sandbox/reset`` puts any store back
to exactly that state, so integration tests of a storefront or a payment
partner start from the same data every time. The viewer's token is
published here on purpose: it only exists in sandbox mode.

A reset deletes viewers, purchases, entitlements, idempotency records,
webhook secrets and deliveries, the audit log and the catalog, then seeds
the fixtures. It keeps the signing keys and the outbox, so edges go on
verifying tokens and receive the reset as ordinary events: a policy change
for each fixture and a withdrawal for every other item.

NOTE: playback tokens issued before a reset stay valid until they expire,
and the sandbox payment provider keeps its own state.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.audit import record_audit
from origin.auth import hash_token, require_scope
from origin.catalog import content_values
from origin.outbox import append_event
from origin.state import Origin
from origin.store import (
    admin_audit,
    content,
    entitlements,
    idempotency_keys,
    purchase_steps,
    purchases,
    viewers,
    webhook_dead_letters,
    webhook_deliveries,
    webhook_events,
    webhook_secrets,
)
from shared import problems
from shared.events import CONTENT_WITHDRAWN, POLICY_CHANGED
from shared.problems import Problem

CATALOG: dict[str, dict[str, Any]] = {
    "sample": {
        "title": "Sample (three renditions, AES-128, fMP4)",
        "entry": "master.m3u8",
        "policy": {
            "kind": "purchase",
            "price": {"amount": "4.99", "currency": "EUR"},
            "preview_seconds": 10,
        },
    },
    "trailer": {
        "title": "Trailer",
        "entry": "master.m3u8",
        "policy": {"kind": "free"},
    },
}
VIEWER_ID = "vwr_sandbox"
VIEWER_REF = "sandbox-viewer"
VIEWER_TOKEN = "vt_sandbox_viewer"
# Children before parents, so that no row outlives a row it refers to.
RESET_TABLES = (
    purchase_steps,
    entitlements,
    purchases,
    idempotency_keys,
    viewers,
    webhook_dead_letters,
    webhook_events,
    webhook_deliveries,
    webhook_secrets,
    admin_audit,
)


async def seed_if_empty(origin: Origin) -> bool:
    """Seed the fixtures into a store with no catalog; return whether it did."""
    async with origin.engine.begin() as connection:
        if (await connection.execute(select(content.c.content_id).limit(1))).first():
            return False
        await _seed(connection, withdrawn=[])
    origin.relay.notify()
    return True


async def reset(origin: Origin, actor: str) -> dict[str, Any]:
    """Put the store back to the fixtures; return what it now holds."""
    async with origin.engine.begin() as connection:
        known = (await connection.execute(select(content.c.content_id))).scalars()
        withdrawn = sorted(set(known) - set(CATALOG))
        for table in RESET_TABLES:
            await connection.execute(delete(table))
        await connection.execute(delete(content))
        await _seed(connection, withdrawn)
        await record_audit(connection, actor, "sandbox.reset", "*", {})
    origin.relay.notify()
    return {
        "catalog": sorted(CATALOG),
        "withdrawn": withdrawn,
        "viewer": {"viewer_id": VIEWER_ID, "viewer_token": VIEWER_TOKEN},
    }


async def _seed(connection: AsyncConnection, withdrawn: list[str]) -> None:
    for content_id, item in CATALOG.items():
        values = content_values(item)
        await connection.execute(
            content.insert().values(content_id=content_id, **values)
        )
        await append_event(connection, POLICY_CHANGED, "", content_id, 0)
    for content_id in withdrawn:
        await append_event(connection, CONTENT_WITHDRAWN, "", content_id, 0)
    await connection.execute(
        viewers.insert().values(
            viewer_id=VIEWER_ID,
            viewer_ref=VIEWER_REF,
            token_hash=hash_token(VIEWER_TOKEN),
            created_at=time.time(),
        )
    )


async def reset_sandbox(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "catalog")
    if not origin.settings.sandbox:
        raise Problem(
            problems.NOT_FOUND,
            "the origin is not in sandbox mode; start it with SEGMENTGATE_SANDBOX=1",
        )
    state = await reset(origin, actor)
    await request.app.state.webhooks.load_stored_secrets(origin.keys.decrypt_text)
    return JSONResponse(state, headers={"Cache-Control": "no-store"})


routes = [Route("/v1/admin/sandbox/reset", reset_sandbox, methods=["POST"])]
