"""Playback sessions: a signed playlist URL for one viewer and one content item.

A viewer without an entitlement to purchasable content gets a preview
session; the same session plays in full once a purchase is granted, because
edges learn the grant from the outbox and prefer it over the token's claim.
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.auth import Viewer, require_viewer
from origin.catalog import load_content
from origin.entitlements import get_entitlement
from origin.idempotency import IdempotentCall, idempotency_key, run_idempotent
from origin.state import Origin
from origin.validation import invalid, read_object, string_field
from shared.content import CONTENT_ID
from shared.tokens import TOKEN_PARAM, PlaybackClaims, encode_playback_token

# The ways a playlist URL carries the token: in the query (every player), or
# in a ``/_sg/<token>/`` path prefix that relative URIs inherit.
TRANSPORTS = ("query", "path")


async def create_playback_session(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer = await require_viewer(request, origin.engine)
    key = idempotency_key(request)
    data, body = await read_object(request)
    # With an Idempotency-Key, a retry gets the same session, not a new one.
    call = IdempotentCall(
        origin.engine, f"session:{viewer.viewer_id}", key, body, clock=origin.clock
    )
    return await run_idempotent(call, lambda: _create_session(origin, viewer, data))


async def _create_session(
    origin: Origin, viewer: Viewer, data: dict[str, Any]
) -> Response:
    content_id = string_field(data, "content_id", max_length=128, pattern=CONTENT_ID)
    transport = data.get("transport", "query")
    if transport not in TRANSPORTS:
        raise invalid(
            f"'transport' must be one of {', '.join(TRANSPORTS)}", "transport"
        )
    item = await load_content(origin, content_id)
    async with origin.engine.connect() as connection:
        entitlement = await get_entitlement(connection, viewer.viewer_id, content_id)

    free = item.policy_kind == "free"
    expires_at = int(time.time()) + origin.settings.playback_token_ttl
    claims = PlaybackClaims(
        session_id="ps_" + secrets.token_urlsafe(12),
        content_id=content_id,
        viewer_ref=viewer.viewer_ref,
        expires_at=expires_at,
        entitled=free or entitlement.granted,
        entitlement_version=entitlement.version,
        preview_seconds=0.0 if free else float(item.preview_seconds),
    )
    token = encode_playback_token(claims, origin.keys.current)
    origin.counters.count_session(viewer.viewer_id, content_id, not claims.entitled)
    edge = origin.settings.edge_public_url.rstrip("/")
    entry = f"{content_id}/{quote(item.entry)}"
    if transport == "path":
        playlist_url = f"{edge}/_sg/{token}/{entry}"
    else:
        playlist_url = f"{edge}/{entry}?{TOKEN_PARAM}={token}"
    return JSONResponse(
        {
            "playlist_url": playlist_url,
            "token": token,
            "expires_at": datetime.fromtimestamp(expires_at, UTC).isoformat(),
            "session_id": claims.session_id,
            "preview": not claims.entitled,
            "preview_seconds": claims.preview_seconds,
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


routes = [Route("/v1/playback-sessions", create_playback_session, methods=["POST"])]
