"""Admin API for signing keys and the audit log; every action is audited."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.audit import record_audit
from origin.auth import require_scope
from origin.idempotency import (
    IdempotentCall,
    idempotency_key,
    required_idempotency_key,
    run_idempotent,
)
from origin.keyring import KeyNotFound, KeyRecord
from origin.state import Origin
from origin.store import admin_audit
from shared import problems
from shared.problems import Problem


async def audit(
    origin: Origin, actor: str, action: str, target: str, **detail: Any
) -> None:
    async with origin.engine.begin() as connection:
        await record_audit(connection, actor, action, target, detail)


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _key(record: KeyRecord, origin: Origin) -> dict[str, Any]:
    body = record.to_dict()
    body["created_at"] = _timestamp(record.created_at)
    body["changed_at"] = _timestamp(record.changed_at)
    if record.state == "next":
        body["signs_from"] = _timestamp(record.changed_at + origin.keys.publish_seconds)
    return body


async def list_keys(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "keys")
    records = await origin.keys.records()
    return JSONResponse({"keys": [_key(record, origin) for record in records]})


async def rotate_keys(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "keys")
    key = required_idempotency_key(request)

    async def handle() -> Response:
        record = await origin.keys.rotate()
        await audit(origin, actor, "keys.rotate", record.kid)
        return JSONResponse(_key(record, origin), status_code=201)

    call = IdempotentCall(origin.engine, f"admin:{actor}:rotate", key, b"")
    return await run_idempotent(call, handle)


async def revoke_key(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "keys")
    kid = request.path_params["kid"]

    async def handle() -> Response:
        try:
            record = await origin.keys.revoke(kid)
        except KeyNotFound:
            raise Problem(problems.NOT_FOUND, f"no key '{kid[:80]}'") from None
        await audit(origin, actor, "keys.revoke", kid)
        return JSONResponse(_key(record, origin))

    call = IdempotentCall(
        origin.engine, f"admin:{actor}:revoke:{kid}", idempotency_key(request), b""
    )
    return await run_idempotent(call, handle)


async def list_audit(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "events")
    async with origin.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(admin_audit).order_by(admin_audit.c.audit_id.desc()).limit(500)
            )
        ).all()
    entries = [
        {
            "at": _timestamp(row.at),
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "detail": row.detail,
        }
        for row in rows
    ]
    return JSONResponse({"entries": entries}, headers={"Cache-Control": "no-store"})


routes = [
    Route("/v1/admin/keys", list_keys, methods=["GET"]),
    Route("/v1/admin/keys/rotate", rotate_keys, methods=["POST"]),
    Route("/v1/admin/keys/{kid}/revoke", revoke_key, methods=["POST"]),
    Route("/v1/admin/audit", list_audit, methods=["GET"]),
]
