"""Admin API of the webhook dead-letter table; needs the ``events`` scope.

``GET /v1/admin/dlq`` lists dead letters, newest first;
``GET /v1/admin/dlq/{correlation_id}`` shows one with its stored delivery
(raw payload and redacted headers); ``POST .../replay`` puts the event
back to pending and processes it at once. Replays are audited.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.admin import audit
from origin.auth import require_scope
from origin.state import Origin
from origin.store import webhook_dead_letters, webhook_deliveries, webhook_events
from origin.webhooks import DEAD, PENDING, WebhookProcessor
from shared import problems
from shared.problems import Problem

LIST_LIMIT = 500


def _dead_letter(row: Any) -> dict[str, Any]:
    return {
        "correlation_id": row.correlation_id,
        "provider": row.provider,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "dead_at": row.dead_at,
        "replayed_at": row.replayed_at,
    }


async def list_dead_letters(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "events")
    async with origin.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(webhook_dead_letters)
                .order_by(webhook_dead_letters.c.dead_at.desc())
                .limit(LIST_LIMIT)
            )
        ).all()
    return JSONResponse(
        {"dead_letters": [_dead_letter(row) for row in rows]},
        headers={"Cache-Control": "no-store"},
    )


async def _load(origin: Origin, correlation_id: str) -> Any:
    async with origin.engine.connect() as connection:
        row = (
            await connection.execute(
                select(webhook_dead_letters).where(
                    webhook_dead_letters.c.correlation_id == correlation_id
                )
            )
        ).first()
    if row is None:
        raise Problem(
            problems.NOT_FOUND, f"no dead letter with id {correlation_id[:80]!r}"
        )
    return row


async def show_dead_letter(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "events")
    row = await _load(origin, request.path_params["correlation_id"])
    async with origin.engine.connect() as connection:
        delivery = (
            await connection.execute(
                select(webhook_deliveries).where(
                    webhook_deliveries.c.correlation_id == row.correlation_id
                )
            )
        ).one()
    body = _dead_letter(row)
    body["received_at"] = delivery.received_at
    body["headers"] = delivery.headers
    body["payload"] = delivery.payload
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


async def replay_dead_letter(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    processor: WebhookProcessor = request.app.state.webhooks
    actor = require_scope(request, origin.admin_tokens, "events")
    row = await _load(origin, request.path_params["correlation_id"])
    now = processor.clock()
    async with origin.engine.begin() as connection:
        reset = await connection.execute(
            webhook_events.update()
            .where(
                webhook_events.c.provider == row.provider,
                webhook_events.c.event_id == row.event_id,
                webhook_events.c.status == DEAD,
            )
            .values(status=PENDING, attempts=0, next_attempt_at=now)
        )
        if reset.rowcount != 1:
            raise Problem(
                problems.CONFLICT, "the event was already replayed and is not dead"
            )
        await connection.execute(
            webhook_dead_letters.update()
            .where(webhook_dead_letters.c.correlation_id == row.correlation_id)
            .values(replayed_at=now)
        )
    await audit(origin, actor, "dlq.replay", row.correlation_id, event_id=row.event_id)
    status = await processor.process(row.provider, row.event_id)
    return JSONResponse(
        {
            "correlation_id": row.correlation_id,
            "event_id": row.event_id,
            "status": status,
        }
    )


routes = [
    Route("/v1/admin/dlq", list_dead_letters, methods=["GET"]),
    Route("/v1/admin/dlq/{correlation_id}", show_dead_letter, methods=["GET"]),
    Route(
        "/v1/admin/dlq/{correlation_id}/replay", replay_dead_letter, methods=["POST"]
    ),
]
