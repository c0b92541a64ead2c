"""Admin API of the outbox relay; needs the ``events`` scope.

``GET /v1/admin/outbox`` returns the relay's lag per edge and the oldest
undelivered event; ``POST /v1/admin/outbox/resend`` pushes a range of
events to every edge again, which edges drop where they applied them.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.admin import audit
from origin.auth import require_scope
from origin.state import Origin
from origin.validation import invalid, read_object

# The maximum number of events that one resend request covers.
MAX_RESEND_EVENTS = 100_000


async def outbox_status(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "events")
    status = await origin.relay.status()
    return JSONResponse(status, headers={"Cache-Control": "no-store"})


async def resend_events(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    actor = require_scope(request, origin.admin_tokens, "events")
    data, _ = await read_object(request)
    bounds = []
    for name in ("from_seq", "to_seq"):
        value = data.get(name)
        # JSON has one number type, so 7.0 is the integer 7 (JSON Schema 2020-12).
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise invalid(f"{name} must be an integer of at least 1", name)
        bounds.append(value)
    from_seq, to_seq = bounds
    if to_seq < from_seq:
        raise invalid("to_seq must not be less than from_seq", "to_seq")
    if to_seq - from_seq >= MAX_RESEND_EVENTS:
        raise invalid(f"resend at most {MAX_RESEND_EVENTS} events at once", "to_seq")
    sent = await origin.relay.resend(from_seq, to_seq)
    await audit(origin, actor, "outbox.resend", f"{from_seq}-{to_seq}", sent=sent)
    return JSONResponse({"sent": sent})


routes = [
    Route("/v1/admin/outbox", outbox_status, methods=["GET"]),
    Route("/v1/admin/outbox/resend", resend_events, methods=["POST"]),
]
