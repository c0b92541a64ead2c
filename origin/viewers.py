"""Sandbox viewer identities.

A viewer gets an id, an opaque reference that edges see instead of the id,
and a bearer token that authenticates the viewer to the origin only.
"""

from __future__ import annotations

import secrets
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.auth import hash_token
from origin.state import Origin
from origin.store import viewers


async def create_viewer(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer_id = "vwr_" + secrets.token_hex(12)
    viewer_token = "vt_" + secrets.token_urlsafe(32)
    async with origin.engine.begin() as connection:
        await connection.execute(
            viewers.insert().values(
                viewer_id=viewer_id,
                viewer_ref=secrets.token_urlsafe(16),
                token_hash=hash_token(viewer_token),
                created_at=time.time(),
            )
        )
    return JSONResponse(
        {"viewer_id": viewer_id, "viewer_token": viewer_token},
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


routes = [Route("/v1/viewers", create_viewer, methods=["POST"])]
