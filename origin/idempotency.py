"""``Idempotency-Key`` handling for unsafe requests.

The first request with a key runs and its response is stored. A retry with
the same key and body gets the stored response; the same key with another
body is 422; the same key while the first request still runs is 409. Keys
are scoped to the caller, so two viewers cannot collide.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Awaitable, Callable

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from origin.store import idempotency_keys
from shared import problems
from shared.problems import Problem

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
IN_PROGRESS = "in_progress"
COMPLETED = "completed"


def idempotency_key(request: Request, *, required: bool) -> str | None:
    """Read and check the header; raise a problem if missing and required."""
    key = request.headers.get(HEADER)
    if key is None:
        if required:
            raise Problem(
                problems.IDEMPOTENCY_KEY_MISSING,
                f"send an {HEADER} header, for example a random UUID",
            )
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Problem(
            problems.INVALID_REQUEST,
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters",
        )
    return key


async def run_idempotent(
    engine: AsyncEngine,
    scope: str,
    key: str | None,
    body: bytes,
    handler: Callable[[], Awaitable[Response]],
) -> Response:
    """Run ``handler`` once per ``(scope, key)``; replay its response after."""
    if key is None:
        return await handler()
    request_hash = hashlib.sha256(body).hexdigest()
    replay = await _claim(engine, scope, key, request_hash)
    if replay is not None:
        return replay
    try:
        response = await handler()
    except Problem as problem:
        # A problem is a final answer for this body: store and replay it.
        response = problem.to_response()
    except BaseException:
        await _release(engine, scope, key)
        raise
    await _complete(engine, scope, key, response)
    return response


async def _claim(
    engine: AsyncEngine, scope: str, key: str, request_hash: str
) -> Response | None:
    try:
        async with engine.begin() as connection:
            await connection.execute(
                idempotency_keys.insert().values(
                    scope=scope,
                    key=key,
                    request_hash=request_hash,
                    state=IN_PROGRESS,
                    created_at=time.time(),
                )
            )
        return None
    except IntegrityError:
        pass
    async with engine.connect() as connection:
        row = (
            await connection.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
                )
            )
        ).one()
    if row.request_hash != request_hash:
        raise Problem(
            problems.IDEMPOTENCY_KEY_REUSED,
            f"{HEADER} {key!r} was used with a different request body",
        )
    if row.state == IN_PROGRESS:
        raise Problem(
            problems.IDEMPOTENCY_KEY_IN_USE,
            f"a request with {HEADER} {key!r} is still running; retry later",
            headers={"Retry-After": "1"},
        )
    stored = json.loads(row.body)
    return Response(
        stored["content"],
        status_code=row.status_code,
        media_type=stored["media_type"],
        headers={"Idempotent-Replayed": "true"},
    )


async def _complete(
    engine: AsyncEngine, scope: str, key: str, response: Response
) -> None:
    stored = {
        "content": bytes(response.body).decode("utf-8"),
        "media_type": response.media_type,
    }
    async with engine.begin() as connection:
        await connection.execute(
            idempotency_keys.update()
            .where(idempotency_keys.c.scope == scope, idempotency_keys.c.key == key)
            .values(
                state=COMPLETED,
                status_code=response.status_code,
                body=json.dumps(stored),
            )
        )


async def _release(engine: AsyncEngine, scope: str, key: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.scope == scope, idempotency_keys.c.key == key
            )
        )
