"""The edge application: gate, playlist rewriting and media streaming."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge.access_log import AccessLogMiddleware
from edge.entitlements import EntitlementCache
from edge.events import EventFollower, InvalidEventBatch
from edge.gate import Access, Gate
from edge.keyset import KeySet
from edge.paths import resolve_uri, split_media_path
from edge.rewriter import TOKEN_PARAM, PlaylistRewriter, PlaylistTooLarge
from edge.settings import EdgeSettings
from edge.upstream import FileUpstream, HttpUpstream, Upstream, is_playlist
from edge.uri_tokens import SCOPE_SEGMENT, UriSigner
from shared import problems
from shared.events import EVENTS_MEDIA_TYPE
from shared.http import REASON_HEADER, problem_handlers
from shared.problems import Problem

logger = logging.getLogger("segmentgate.edge")

PLAYLIST_MEDIA_TYPE = "application/vnd.apple.mpegurl"


class Edge:
    """The edge's state: keys, entitlements, gate and upstream."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.origin = httpx.AsyncClient(
            base_url=settings.origin_url, timeout=settings.origin_timeout
        )
        self.keys = KeySet(self._fetch_jwks, settings.jwks_refresh_interval)
        self.signer = UriSigner(settings.uri_secrets)
        self.entitlements = EntitlementCache(
            settings.entitlement_ttl, settings.entitlement_capacity
        )
        self.events = EventFollower(self.entitlements, self.keys, self._fetch_feed)
        self.gate = Gate(
            self.keys,
            self.signer,
            self.entitlements,
            leeway_seconds=settings.leeway_seconds,
            max_token_bytes=settings.max_token_bytes,
        )
        self.upstream: Upstream
        if settings.upstream_url:
            self.upstream = HttpUpstream(settings.upstream_url)
        else:
            assert settings.media_root is not None  # EdgeSettings requires one
            self.upstream = FileUpstream(settings.media_root)

    async def _fetch_jwks(self) -> dict[str, Any]:
        response = await self.origin.get("/.well-known/jwks.json")
        response.raise_for_status()
        return dict(response.json())

    async def _fetch_feed(self, after: int) -> str:
        response = await self.origin.get("/v1/events", params={"after": after})
        response.raise_for_status()
        return response.text

    async def sync(self) -> bool:
        """Load keys and read the event feed; return whether both worked."""
        try:
            if not len(self.keys):
                await self.keys.refresh()
            await self.events.catch_up()
        except (httpx.HTTPError, InvalidEventBatch) as exc:
            logger.warning("syncing with the origin failed: %s", exc)
            return False
        return True

    async def sync_forever(self) -> None:
        """Read the feed every ``sync_interval`` seconds.

        Pushes normally arrive first; this poll bounds how long a lost push,
        such as the last event before a quiet period, can go unnoticed.
        """
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            await self.sync()

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.origin.aclose()


def _playlist_authorizer(request: Request, edge: Edge, access: Access, content_id: str):
    host = (request.headers.get("host") or "").lower()
    gated = edge.settings.extra_hosts | {host}
    playlist_url = f"{request.url.scheme}://{host}{request.scope['path']}"
    content_prefix = f"/{content_id}/"

    def authorize(uri: str, scope: str, start_ms: int | None) -> str | None:
        path = resolve_uri(uri, playlist_url, frozenset(gated))
        if path is None:
            return None
        if not path.startswith(content_prefix):
            logger.warning("playlist URI leaves content %s: %r", content_id, uri)
            return None
        scope_text = f"{SCOPE_SEGMENT}{start_ms}" if scope == SCOPE_SEGMENT else scope
        return edge.signer.mint(access.session_part, scope_text, path)

    return authorize


async def _rewritten_playlist(
    request: Request, edge: Edge, access: Access, content_id: str, path: str
) -> Response:
    rewriter = PlaylistRewriter(
        _playlist_authorizer(request, edge, access, content_id),
        max_size=edge.settings.max_playlist_bytes,
    )
    pieces: list[bytes] = []
    try:
        async for chunk in edge.upstream.playlist_chunks(path):
            pieces.append(rewriter.feed(chunk))
        pieces.append(rewriter.close())
    except PlaylistTooLarge as exc:
        raise Problem(problems.UPSTREAM_UNAVAILABLE, str(exc)) from None
    body = b"".join(pieces)
    headers = {
        # Each viewer's playlist carries its own tokens: never share it.
        "Cache-Control": "private, no-store",
        "Vary": "Origin",
    }
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(b"", media_type=PLAYLIST_MEDIA_TYPE, headers=headers)
    return Response(body, media_type=PLAYLIST_MEDIA_TYPE, headers=headers)


async def media(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    content_id, rest = split_media_path(request.scope["path"])
    tokens = request.query_params.getlist(TOKEN_PARAM)
    access = await edge.gate.check(tokens, content_id, request.scope["path"])
    media_path = f"{content_id}/{rest}"
    if is_playlist(rest):
        return await _rewritten_playlist(request, edge, access, content_id, media_path)
    return await edge.upstream.media_response(media_path, request)


async def healthz(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    return JSONResponse(
        {
            "status": "ok",
            "keys": len(edge.keys),
            "entitlements": len(edge.entitlements),
            "last_event_seq": edge.events.last_seq,
        },
        headers={"Cache-Control": "no-store"},
    )


async def receive_events(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    if request.headers.get("content-type", "").split(";")[0] != EVENTS_MEDIA_TYPE:
        raise Problem(problems.INVALID_REQUEST, f"send events as {EVENTS_MEDIA_TYPE}")
    body = await request.body()
    if len(body) > 4 * 1024 * 1024:
        raise Problem(problems.PAYLOAD_TOO_LARGE, "event batch exceeds 4 MiB")
    try:
        changed = await edge.events.receive(body.decode("ascii"))
    except (InvalidEventBatch, UnicodeDecodeError) as exc:
        raise Problem(problems.FORBIDDEN, f"event batch rejected: {exc}") from None
    except httpx.HTTPError as exc:
        raise Problem(
            problems.UPSTREAM_UNAVAILABLE, f"catching up from the origin failed: {exc}"
        ) from None
    return JSONResponse({"applied": changed, "last_seq": edge.events.last_seq})


def create_app(settings: EdgeSettings) -> Starlette:
    """Build the edge ASGI application."""
    edge = Edge(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await edge.sync()
        poller = asyncio.create_task(edge.sync_forever())
        yield
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await edge.aclose()

    routes = [
        Route("/_edge/healthz", healthz, methods=["GET"]),
        Route("/_edge/events", receive_events, methods=["POST"]),
        Route("/{path:path}", media, methods=["GET", "HEAD"]),
    ]
    middleware = [
        Middleware(AccessLogMiddleware),
        Middleware(
            CORSMiddleware,
            allow_origins=list(settings.allow_origins),
            allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["Range", "Authorization"],
            expose_headers=[REASON_HEADER, "Content-Range", "Content-Length", "Date"],
            max_age=86400,
        ),
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=problem_handlers(logger),
    )
    app.state.edge = edge
    return app
