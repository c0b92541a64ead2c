"""The origin's endpoints for edges: the JWK set and the event feed."""

from __future__ import annotations

import hmac

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.auth import bearer_token
from origin.entitlements import get_entitlement
from origin.outbox import read_events
from origin.state import Origin
from origin.store import viewers
from origin.validation import invalid
from shared import problems
from shared.events import EVENTS_MEDIA_TYPE, encode_event_batch
from shared.problems import Problem


def _require_edge(request: Request, origin: Origin) -> None:
    # Edge endpoints link viewer references to purchases, so only edges read
    # them once an edge token is set.
    if origin.settings.edge_token:
        token = bearer_token(request)
        if not hmac.compare_digest(token.encode(), origin.settings.edge_token.encode()):
            raise Problem(problems.FORBIDDEN, "the edge token is not valid")


async def jwks(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    return JSONResponse(
        origin.keys.jwks(),
        # Short enough that a cached copy lists a new key before it signs.
        headers={"Cache-Control": f"public, max-age={origin.keys.jwks_max_age}"},
        media_type="application/jwk-set+json",
    )


async def events(request: Request) -> Response:
    """Return events after ``?after=`` as a signed batch (``application/jwt``)."""
    origin: Origin = request.app.state.origin
    _require_edge(request, origin)
    after_text = request.query_params.get("after", "0")
    if not after_text.isascii() or not after_text.isdigit() or len(after_text) > 18:
        raise invalid("'after' must be a non-negative integer", "after")
    async with origin.engine.connect() as connection:
        batch = await read_events(
            connection, int(after_text), origin.settings.event_retention_seconds
        )
    body = encode_event_batch(batch, origin.keys.current)
    return Response(
        body, media_type=EVENTS_MEDIA_TYPE, headers={"Cache-Control": "no-store"}
    )


async def entitlement(request: Request) -> Response:
    """Return one viewer's entitlement to one content item, for edges.

    Edges ask when they renew a playback session past its expiry, as a
    check beside the event stream; 404 means the viewer never held it.
    """
    origin: Origin = request.app.state.origin
    _require_edge(request, origin)
    viewer_ref = request.path_params["viewer_ref"]
    content_id = request.path_params["content_id"]
    async with origin.engine.connect() as connection:
        viewer_id = (
            await connection.execute(
                select(viewers.c.viewer_id).where(viewers.c.viewer_ref == viewer_ref)
            )
        ).scalar()
        if viewer_id is None:
            raise Problem(problems.NOT_FOUND, "no such viewer")
        state = await get_entitlement(connection, viewer_id, content_id)
    if state.version == 0:
        raise Problem(problems.NOT_FOUND, "the viewer never held this entitlement")
    return JSONResponse(
        {"granted": state.granted, "version": state.version},
        headers={"Cache-Control": "no-store"},
    )


routes = [
    Route("/.well-known/jwks.json", jwks, methods=["GET"]),
    Route(
        "/v1/edge/entitlements/{viewer_ref}/{content_id}",
        entitlement,
        methods=["GET"],
    ),
    Route("/v1/events", events, methods=["GET"]),
]
