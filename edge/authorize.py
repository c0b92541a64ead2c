"""The decision endpoint for nginx ``auth_request``: decide, serve nothing.

In this deployment nginx serves the media files itself. Before it sends a
segment, key or init segment, it sends a subrequest to
``/_edge/authorize`` with the original request's headers and its target in
``X-Original-URI``. The edge runs the same gate as on a request it
serves and returns 204 to allow. nginx turns any status other than 2xx, 401
and 403 into a 500, so every denial is sent as 403 with the real problem
details. nginx then passes the request to the edge, which sends the real
status (402, 410, 503...) to the player.

Decisions are never cached here, so a revocation applies to the next
request. Playlists are always denied because the edge must rewrite them.
"""

from __future__ import annotations

from urllib.parse import unquote

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from edge.gate import Credentials
from edge.paths import check_raw_path, split_media_path
from edge.upstream import is_playlist
from shared import problems
from shared.http import problem_response
from shared.problems import Problem
from shared.tokens import TOKEN_PARAM

ORIGINAL_URI_HEADER = "x-original-uri"
# The status the edge would have sent, on a denial sent as 403.
DECISION_STATUS_HEADER = "Segmentgate-Decision-Status"
_ALLOWED_HEADERS = {"Cache-Control": "no-store"}


def _original_target(request: Request) -> tuple[bytes, str]:
    target = request.headers.get(ORIGINAL_URI_HEADER)
    if not target:
        raise Problem(
            problems.INVALID_REQUEST,
            "missing X-Original-URI header; set it to $request_uri in nginx",
        )
    raw_path, _, query = target.partition("?")
    return raw_path.encode("latin-1"), query


async def _decide(request: Request) -> None:
    edge = request.app.state.edge
    raw_path, query = _original_target(request)
    check_raw_path(raw_path)
    path = unquote(raw_path.decode("latin-1"), errors="replace")
    content_id, rest = split_media_path(path)
    if is_playlist(rest):
        raise Problem(
            problems.FORBIDDEN, "the edge rewrites playlists, so proxy them to it"
        )
    authorization = request.headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    bearer = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    credentials = Credentials(
        query=tuple(QueryParams(query).getlist(TOKEN_PARAM)),
        bearer=bearer,
        range=request.headers.get("range"),
    )
    access = await edge.gate.check(credentials, content_id, path)
    if access.range_bound and "if-range" in request.headers:
        # nginx would honour If-Range and could widen a preview's byte range
        # to the whole file; the edge drops If-Range when it serves.
        raise Problem(problems.FORBIDDEN, "send this range request to the edge")


async def authorize(request: Request) -> Response:
    """Return 204 when the original request may be served, else 403."""
    try:
        await _decide(request)
    except Problem as problem:
        response = problem_response(request, problem)
        response.headers[DECISION_STATUS_HEADER] = str(response.status_code)
        response.status_code = 403
        return response
    return Response(status_code=204, headers=_ALLOWED_HEADERS)
