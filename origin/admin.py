"""Admin API for signing keys, webhook secrets and the audit log.

Every action is written to the audit log.
"""

from __future__ import annotations

import re
import time
import uuid
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
from origin.store import admin_audit, webhook_secrets
from origin.validation import invalid, read_object, string_field
from origin.webhooks import check_secret, scheme_of
from shared import problems
from shared.problems import Problem

PROVIDER = re.compile(r"[a-z0-9_-]{1,64}")


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


async def list_webhook_secrets(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "keys")
    async with origin.engine.connect() as connection:
        rows = (
            await connection.execute(
                select(webhook_secrets).order_by(webhook_secrets.c.created_at)
            )
        ).all()
    return JSONResponse({"secrets": [_secret(row) for row in rows]})


def _secret(row: Any) -> dict[str, Any]:
    # Only the last characters are shown, to tell secrets apart.
    return {
        "secret_id": row.secret_id,
        "provider": row.provider,
        "hint": "…" + row.hint,
        "created_at": _timestamp(row.created_at),
    }


async def add_webhook_secret(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "keys")
    data, body = await read_object(request)
    provider = string_field(data, "provider", max_length=64, pattern=PROVIDER)
    secret = string_field(data, "secret", max_length=512)
    try:
        check_secret(scheme_of(provider), secret)
    except ValueError as exc:
        raise invalid(str(exc), "secret") from None

    async def handle() -> Response:
        secret_id = "whs_" + uuid.uuid4().hex[:16]
        async with origin.engine.begin() as connection:
            await connection.execute(
                webhook_secrets.insert().values(
                    secret_id=secret_id,
                    provider=provider,
                    secret=origin.keys.encrypt_text(secret),
                    hint=secret[-4:],
                    created_at=time.time(),
                )
            )
            await record_audit(
                connection,
                actor,
                "webhook-secrets.add",
                secret_id,
                {"provider": provider},
            )
            row = (
                await connection.execute(
                    select(webhook_secrets).where(
                        webhook_secrets.c.secret_id == secret_id
                    )
                )
            ).one()
        await request.app.state.webhooks.load_stored_secrets(origin.keys.decrypt_text)
        return JSONResponse(_secret(row), status_code=201)

    call = IdempotentCall(
        origin.engine, f"admin:{actor}:webhook-secret", idempotency_key(request), body
    )
    return await run_idempotent(call, handle)


async def remove_webhook_secret(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "keys")
    secret_id = request.path_params["secret_id"]
    async with origin.engine.begin() as connection:
        deleted = await connection.execute(
            webhook_secrets.delete().where(webhook_secrets.c.secret_id == secret_id)
        )
        if deleted.rowcount == 0:
            raise Problem(
                problems.NOT_FOUND,
                f"no webhook secret '{secret_id[:40]}'; "
                "GET /v1/admin/webhook-secrets lists them",
            )
        await record_audit(connection, actor, "webhook-secrets.remove", secret_id)
    await request.app.state.webhooks.load_stored_secrets(origin.keys.decrypt_text)
    return Response(status_code=204)


routes = [
    Route("/v1/admin/keys", list_keys, methods=["GET"]),
    Route("/v1/admin/keys/rotate", rotate_keys, methods=["POST"]),
    Route("/v1/admin/keys/{kid}/revoke", revoke_key, methods=["POST"]),
    Route("/v1/admin/audit", list_audit, methods=["GET"]),
    Route("/v1/admin/webhook-secrets", list_webhook_secrets, methods=["GET"]),
    Route("/v1/admin/webhook-secrets", add_webhook_secret, methods=["POST"]),
    Route(
        "/v1/admin/webhook-secrets/{secret_id}",
        remove_webhook_secret,
        methods=["DELETE"],
    ),
]
