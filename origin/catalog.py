"""Catalog: content items and their policies."""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.audit import record_audit
from origin.auth import require_scope
from origin.outbox import append_event
from origin.providers.base import InvalidPaymentRequest, to_minor_units
from origin.state import Origin
from origin.store import content
from origin.validation import (
    invalid,
    number_field,
    price_field,
    read_object,
    string_field,
)
from shared import problems
from shared.content import CONTENT_ID
from shared.events import CONTENT_WITHDRAWN, POLICY_CHANGED
from shared.problems import Problem

# The entry playlist is a path inside the content item's directory.
ENTRY_PATTERN = re.compile(r"[A-Za-z0-9._/-]{1,256}\.m3u8")
POLICY_KINDS = ("free", "purchase")
# A withdrawn item stays in the store for its purchases but is never served.
WITHDRAWN = "withdrawn"
OFFLINE_MODES = ("open", "closed")


def policy_of(row: Row[Any]) -> dict[str, Any]:
    policy: dict[str, Any] = {"kind": row.policy_kind}
    if row.policy_kind == "purchase":
        policy["price"] = {"amount": row.price_amount, "currency": row.price_currency}
        policy["preview_seconds"] = row.preview_seconds
    policy["offline"] = row.offline
    return policy


def _item(row: Row[Any]) -> dict[str, Any]:
    return {
        "content_id": row.content_id,
        "title": row.title,
        "entry": row.entry,
        "policy": policy_of(row),
    }


def _read_policy(data: dict[str, Any]) -> dict[str, Any]:
    policy = data.get("policy")
    if not isinstance(policy, dict):
        raise invalid("'policy' must be an object", "policy")
    kind = policy.get("kind")
    if kind not in POLICY_KINDS:
        raise invalid(
            f"'policy.kind' must be one of {', '.join(POLICY_KINDS)}", "policy.kind"
        )
    # By default free content keeps playing when edges lose the origin, and
    # paid content stops once their grace period ends.
    offline = policy.get("offline", "open" if kind == "free" else "closed")
    if offline not in OFFLINE_MODES:
        raise invalid("'policy.offline' must be 'open' or 'closed'", "policy.offline")
    if kind == "free":
        return {
            "policy_kind": "free",
            "price_amount": None,
            "price_currency": None,
            "preview_seconds": 0.0,
            "offline": offline,
        }
    amount, currency = price_field(policy, "price")
    # A price finer than the currency's minor unit (4.99 JPY) would make
    # every purchase of the item fail at the payment provider.
    try:
        to_minor_units(amount, currency)
    except InvalidPaymentRequest as exc:
        raise invalid(f"'price' is not payable: {exc}", "price") from None
    preview = number_field(
        policy, "preview_seconds", default=0, minimum=0, maximum=24 * 3600
    )
    return {
        "policy_kind": "purchase",
        "price_amount": str(amount),
        "price_currency": currency,
        "preview_seconds": preview,
        "offline": offline,
    }


def content_values(data: dict[str, Any]) -> dict[str, Any]:
    """Check a content item's title, entry and policy; return its row values."""
    values = {
        "title": string_field(data, "title"),
        "entry": string_field(data, "entry", pattern=ENTRY_PATTERN),
        **_read_policy(data),
        "updated_at": time.time(),
    }
    if ".." in values["entry"].split("/"):
        raise invalid("'entry' must stay inside the content directory", "entry")
    return values


async def put_content(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "catalog")
    content_id = request.path_params["content_id"]
    if not CONTENT_ID.fullmatch(content_id):
        raise invalid("content id must be 1 to 128 letters, digits, '-' or '_'")
    data, _ = await read_object(request)
    values = content_values(data)
    async with origin.engine.begin() as connection:
        updated = await connection.execute(
            content.update().where(content.c.content_id == content_id).values(**values)
        )
        created = updated.rowcount == 0
        if created:
            try:
                await connection.execute(
                    content.insert().values(content_id=content_id, **values)
                )
            except IntegrityError:
                raise Problem(
                    problems.CONFLICT, "content was created concurrently"
                ) from None
        row = (
            await connection.execute(
                select(content).where(content.c.content_id == content_id)
            )
        ).one()
        await append_event(connection, POLICY_CHANGED, "", content_id, 0)
        await record_audit(connection, actor, "catalog.put", content_id, values)
    origin.relay.notify()
    return JSONResponse(_item(row), status_code=201 if created else 200)


async def withdraw_content(request: Request) -> Response:
    """Stop serving a content item everywhere; its purchases stay on record."""
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "catalog")
    content_id = request.path_params["content_id"]
    async with origin.engine.begin() as connection:
        updated = await connection.execute(
            content.update()
            .where(content.c.content_id == content_id)
            .values(policy_kind=WITHDRAWN, updated_at=time.time())
        )
        if updated.rowcount == 0:
            raise Problem(
                problems.NOT_FOUND, f"no content '{content_id}' in the catalog"
            )
        await append_event(connection, CONTENT_WITHDRAWN, "", content_id, 0)
        await record_audit(connection, actor, "catalog.withdraw", content_id)
    origin.relay.notify()
    return Response(status_code=204)


async def get_catalog(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    async with origin.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(content)
                .where(content.c.policy_kind != WITHDRAWN)
                .order_by(content.c.content_id)
            )
        ).all()
    return JSONResponse({"items": [_item(row) for row in rows]})


async def get_item(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    row = await load_content(origin, request.path_params["content_id"])
    # Edges cache this response, and a short max-age bounds shared caches.
    return JSONResponse(_item(row), headers={"Cache-Control": "max-age=5"})


async def load_content(origin: Origin, content_id: str) -> Row[Any]:
    """Return a catalog row; raise 404, or 410 for withdrawn content."""
    async with origin.engine.connect() as connection:
        row = (
            await connection.execute(
                select(content).where(content.c.content_id == content_id)
            )
        ).first()
    if row is None:
        raise Problem(problems.NOT_FOUND, f"no content '{content_id}' in the catalog")
    if row.policy_kind == WITHDRAWN:
        raise Problem(problems.CONTENT_WITHDRAWN, f"'{content_id}' was withdrawn")
    return row


routes = [
    Route("/v1/admin/content/{content_id}", put_content, methods=["PUT"]),
    Route("/v1/admin/content/{content_id}", withdraw_content, methods=["DELETE"]),
    Route("/v1/catalog", get_catalog, methods=["GET"]),
    Route("/v1/catalog/{content_id}", get_item, methods=["GET"]),
]
