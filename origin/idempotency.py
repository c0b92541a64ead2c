"""``Idempotency-Key`` handling for unsafe requests.

The first request with a key runs and its response is stored. A retry with
the same key and body gets the stored response; the same key with another
body is 422; the same key while the first request still runs is 409. Keys
are scoped to the caller, so two viewers cannot collide, and they live in
the store, so they hold across restarts.

A handler may answer before its work is done (202 for a purchase whose
payment is still running). Such a key is "accepted": a retry gets the
work's current state from the endpoint's ``resume`` function, until a final
response is stored. A request that died with its process leaves its key
"in progress"; ``resume`` then answers from the work the request left, or,
once ``claim_seconds`` have passed, the request runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import Response

from origin.store import idempotency_keys
from shared import problems
from shared.problems import Problem

logger = logging.getLogger("segmentgate.origin.idempotency")

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
IN_PROGRESS = "in_progress"
ACCEPTED = "accepted"
COMPLETED = "completed"
# Longer than any request should take; a claim older than this is abandoned.
CLAIM_SECONDS = 60.0

# ``resume(still_running)`` returns the current state of the work that an
# earlier request with the key started, or None when there is none yet or
# (``still_running``) a live request is still working on it.
Resume = Callable[[bool], Awaitable[Response | None]]


@dataclass(frozen=True)
class IdempotentCall:
    """The scope, key and body of one request, and the rules for its responses."""

    engine: AsyncEngine
    scope: str
    key: str | None
    body: bytes
    resume: Resume | None = None
    # Whether a response ends the work; others leave the key "accepted".
    is_final: Callable[[Response], bool] = lambda response: True
    clock: Callable[[], float] = time.time
    claim_seconds: float = CLAIM_SECONDS


def required_idempotency_key(request: Request) -> str:
    """Read and check the header; raise a problem if it is missing."""
    key = idempotency_key(request)
    if key is None:
        raise Problem(
            problems.IDEMPOTENCY_KEY_MISSING,
            f"send an {HEADER} header, for example a random UUID",
        )
    return key


def idempotency_key(request: Request) -> str | None:
    """Read and check the header, which may be absent."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Problem(
            problems.INVALID_REQUEST,
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters",
        )
    return key


async def run_idempotent(
    call: IdempotentCall, handler: Callable[[], Awaitable[Response]]
) -> Response:
    """Run ``handler`` once per ``(scope, key)``; replay its response after."""
    if call.key is None:
        return await handler()
    request_hash = hashlib.sha256(call.body).hexdigest()
    replay = await _claim(call, request_hash)
    if replay is not None:
        return replay
    try:
        response = await handler()
    except Problem as problem:
        # A problem is a final response for this body: store and replay it.
        response = problem.to_response()
    except Exception:
        await _release(call)
        raise
    # A cancelled request leaves its claim; a retry resumes or re-runs it.
    await _store(call, response)
    return response


async def _claim(call: IdempotentCall, request_hash: str) -> Response | None:
    now = call.clock()
    try:
        async with call.engine.begin() as connection:
            await connection.execute(
                idempotency_keys.insert().values(
                    scope=call.scope,
                    key=call.key,
                    request_hash=request_hash,
                    state=IN_PROGRESS,
                    created_at=now,
                    locked_until=now + call.claim_seconds,
                )
            )
        return None
    except IntegrityError:
        pass
    row = await _read(call)
    if row.request_hash != request_hash:
        raise Problem(
            problems.IDEMPOTENCY_KEY_REUSED,
            f"{HEADER} {call.key!r} was used with a different request body",
        )
    if row.state == COMPLETED:
        return _replayed(row)
    return await _resume_or_retake(call, row, now)


async def _resume_or_retake(
    call: IdempotentCall, row: Row[object], now: float
) -> Response | None:
    if call.resume is not None:
        current = await call.resume(row.state == IN_PROGRESS)
        if current is not None:
            await _store(call, current)
            current.headers["Idempotent-Replayed"] = "true"
            return current
    locked_until = row.locked_until
    if row.state == IN_PROGRESS and locked_until is not None and locked_until <= now:
        # The first request died before it got far enough to resume: take
        # its claim over, unless another retry was faster.
        async with call.engine.begin() as connection:
            taken = await connection.execute(
                idempotency_keys.update()
                .where(
                    idempotency_keys.c.scope == call.scope,
                    idempotency_keys.c.key == call.key,
                    idempotency_keys.c.state == IN_PROGRESS,
                    idempotency_keys.c.locked_until == locked_until,
                )
                .values(locked_until=now + call.claim_seconds)
            )
        if taken.rowcount == 1:
            logger.info("taking over abandoned %s %r", HEADER, call.key)
            return None
    raise Problem(
        problems.IDEMPOTENCY_KEY_IN_USE,
        f"a request with {HEADER} {call.key!r} is still running; retry later",
        headers={"Retry-After": "1"},
    )


async def _read(call: IdempotentCall) -> Row[object]:
    async with call.engine.connect() as connection:
        return (
            await connection.execute(
                select(idempotency_keys).where(
                    idempotency_keys.c.scope == call.scope,
                    idempotency_keys.c.key == call.key,
                )
            )
        ).one()


def _replayed(row: Row[object]) -> Response:
    stored = json.loads(row.body)  # type: ignore[attr-defined]
    return Response(
        stored["content"],
        status_code=row.status_code,  # type: ignore[attr-defined]
        media_type=stored["media_type"],
        headers={"Idempotent-Replayed": "true"},
    )


async def _store(call: IdempotentCall, response: Response) -> None:
    if not call.is_final(response):
        values: dict[str, object] = {"state": ACCEPTED}
    else:
        stored = {
            "content": bytes(response.body).decode("utf-8"),
            "media_type": response.media_type,
        }
        values = {
            "state": COMPLETED,
            "status_code": response.status_code,
            "body": json.dumps(stored),
        }
    async with call.engine.begin() as connection:
        await connection.execute(
            idempotency_keys.update()
            .where(
                idempotency_keys.c.scope == call.scope,
                idempotency_keys.c.key == call.key,
                idempotency_keys.c.state != COMPLETED,
            )
            .values(**values)
        )


async def _release(call: IdempotentCall) -> None:
    async with call.engine.begin() as connection:
        await connection.execute(
            delete(idempotency_keys).where(
                idempotency_keys.c.scope == call.scope,
                idempotency_keys.c.key == call.key,
                idempotency_keys.c.state == IN_PROGRESS,
            )
        )
