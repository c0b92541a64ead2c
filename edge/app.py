"""The edge application: gate, playlist rewriting and media streaming."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge.authorize import authorize
from edge.entitlements import NEVER_ENTITLED, EntitlementCache, EntitlementState
from edge.events import EventFollower, InvalidEventBatch
from edge.gate import Access, Credentials, Gate
from edge.jetstream import JetStreamConsumer
from edge.keyset import KeySet, KeysUnavailable, PublicKeyFactory, PyJwtKey
from edge.metrics import MODE_SCOPE_KEY, EdgeMetrics, metrics_endpoint
from edge.middleware import EdgeMiddleware
from edge.origin_link import OriginLink, OriginUnavailable
from edge.paths import (
    PATH_TOKEN_SCOPE_KEY,
    check_raw_path,
    delivery_directives,
    resolve_uri,
    split_media_path,
)
from edge.policies import ContentUnavailable, PolicyCache
from edge.revalidating import Missing, RevalidatingCache
from edge.rewriter import InvalidPlaylist, PlaylistRewriter, PlaylistTooLarge
from edge.settings import EdgeSettings
from edge.upstream import (
    FileUpstream,
    HttpUpstream,
    MemoryFiles,
    Upstream,
    UpstreamMemory,
    is_playlist,
)
from edge.uri_tokens import UriSigner
from shared import problems
from shared.deprecation import spec_deprecations
from shared.events import EVENTS_MEDIA_TYPE
from shared.http import REASON_HEADER, problem_handlers, problem_response
from shared.logs import redactor
from shared.problems import Problem
from shared.tokens import TOKEN_PARAM
from shared.tracing import configure_tracing

logger = logging.getLogger("segmentgate.edge")

PLAYLIST_MEDIA_TYPE = "application/vnd.apple.mpegurl"


class Edge:
    """The edge's state: keys, entitlements, gate and upstream."""

    def __init__(
        self,
        settings: EdgeSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        public_key: PublicKeyFactory = PyJwtKey,
    ) -> None:
        self.settings = settings
        self.link = OriginLink(
            settings.origin_url,
            timeout=settings.origin_timeout,
            token=settings.origin_token,
            stale_after=settings.stale_after,
            grace_period=settings.grace_period,
            failure_threshold=settings.origin_failure_threshold,
            reset_timeout=settings.origin_reset_timeout,
            transport=transport,
        )
        self.keys = KeySet(self._fetch_jwks, settings.jwks_refresh_interval, public_key)
        self.lookups: RevalidatingCache[tuple[str, str], EntitlementState] = (
            RevalidatingCache(
                "the entitlement of",
                self._fetch_entitlement,
                missing=NEVER_ENTITLED,
                ttl=settings.policy_ttl,
                stale_ttl=settings.policy_stale_ttl,
                negative_ttl=settings.policy_negative_ttl,
            )
        )
        self.policies = PolicyCache(
            self._fetch_policy,
            ttl=settings.policy_ttl,
            stale_ttl=settings.policy_stale_ttl,
            negative_ttl=settings.policy_negative_ttl,
        )
        self.signer = UriSigner(settings.uri_secrets)
        assert settings.entitlement_ttl is not None  # set by EdgeSettings
        self.entitlements = EntitlementCache(
            settings.entitlement_ttl, settings.entitlement_capacity
        )
        self.metrics = EdgeMetrics(self._metric_state)
        self.events = EventFollower(
            self.entitlements,
            self.keys,
            self._fetch_feed,
            policies=self.policies,
            on_contact=self.link.mark_contact,
            on_applied=self.metrics.count_event,
        )
        self.gate = Gate(
            self.keys,
            self.signer,
            self.entitlements,
            leeway_seconds=settings.leeway_seconds,
            max_token_bytes=settings.max_token_bytes,
            renewal_seconds=settings.renewal_seconds,
            max_token_lifetime=settings.max_token_lifetime,
            policies=self.policies,
            link=self.link,
            lookups=self.lookups,
        )
        self.jetstream: JetStreamConsumer | None = None
        if settings.nats_url:
            self.jetstream = JetStreamConsumer(
                settings.nats_url,
                settings.edge_id,
                self.events,
                stream=settings.nats_stream,
                subject_prefix=settings.nats_subject_prefix,
            )
        self._sync_failures = 0
        self._sync_failure_logged = -float("inf")
        self.upstream: Upstream = _upstream(settings, transport)

    def _metric_state(self) -> dict[str, float]:
        silence = self.link.silence()
        return {
            "last_event_seq": float(self.events.last_seq or 0),
            # A never-heard origin reads as -1: Prometheus has no infinity gauge
            # that alerts compare well against.
            "origin_silent_seconds": -1.0 if silence == float("inf") else silence,
            "degraded": float(self.link.degraded),
            "entitlements": float(len(self.entitlements)),
            "keys": float(len(self.keys)),
        }

    async def _fetch_jwks(self) -> dict[str, Any]:
        response = await self.link.get("/.well-known/jwks.json")
        response.raise_for_status()
        return dict(response.json())

    async def _fetch_feed(self, after: int) -> str:
        response = await self.link.get("/v1/events", after=after)
        response.raise_for_status()
        return response.text

    async def _fetch_entitlement(self, key: tuple[str, str]) -> EntitlementState:
        viewer_ref, content_id = (quote(part, safe="") for part in key)
        response = await self.link.get(
            f"/v1/edge/entitlements/{viewer_ref}/{content_id}"
        )
        if response.status_code == 404:
            raise Missing(viewer_ref)
        response.raise_for_status()
        body = response.json()
        return EntitlementState(bool(body["granted"]), int(body["version"]))

    async def _fetch_policy(self, content_id: str) -> dict[str, Any]:
        response = await self.link.get(f"/v1/catalog/{content_id}")
        if response.status_code in (404, 410):
            raise ContentUnavailable(content_id)
        response.raise_for_status()
        return dict(response.json())

    async def sync(self) -> bool:
        """Load keys and read the event feed; return whether both worked."""
        try:
            if not len(self.keys):
                await self.keys.refresh()
            await self.events.catch_up()
        except (
            httpx.HTTPError,
            OriginUnavailable,
            KeysUnavailable,
            InvalidEventBatch,
        ) as exc:
            self._sync_failures += 1
            now = time.monotonic()
            if now - self._sync_failure_logged >= 60.0:
                self._sync_failure_logged = now
                logger.warning(
                    "syncing with the origin failed (%d in a row): %s",
                    self._sync_failures,
                    exc,
                )
            return False
        if self._sync_failures:
            logger.info(
                "syncing with the origin works again after %d failures",
                self._sync_failures,
            )
            self._sync_failures = 0
            self._sync_failure_logged = -float("inf")
        return True

    async def sync_forever(self) -> None:
        """Read the feed every ``sync_interval`` seconds.

        Pushes normally arrive first; this poll bounds how long a lost push,
        such as the last event before a quiet period, can go unnoticed.
        """
        while True:
            await asyncio.sleep(self.settings.sync_interval)
            try:
                await self.sync()
            except Exception:
                # The poll is the safety net for lost pushes: it must not stop.
                logger.exception("syncing with the origin raised")

    async def aclose(self) -> None:
        if self.jetstream is not None:
            await self.jetstream.stop()
        await self.events.aclose()
        await self.policies.aclose()
        await self.lookups.aclose()
        await self.upstream.aclose()
        await self.link.aclose()


def _upstream(
    settings: EdgeSettings, transport: httpx.AsyncBaseTransport | None
) -> Upstream:
    size, file_size = settings.memory_cache_bytes, settings.memory_cache_file_bytes
    if settings.upstream_url:
        memory = None
        if size:
            memory = UpstreamMemory(size, file_size, settings.memory_cache_seconds)
        return HttpUpstream(settings.upstream_url, transport=transport, memory=memory)
    assert settings.media_root is not None  # EdgeSettings requires one
    return FileUpstream(
        settings.media_root, MemoryFiles(size, file_size) if size else None
    )


def _playlist_authorizer(request: Request, edge: Edge, access: Access, content_id: str):
    host = (request.headers.get("host") or "").lower()
    gated = edge.settings.extra_hosts | {host}
    playlist_url = f"{request.url.scheme}://{host}{request.scope['path']}"
    content_prefix = f"/{content_id}/"

    def authorize(uri: str, scope: str) -> str | None:
        path = resolve_uri(uri, playlist_url, frozenset(gated))
        if path is None:
            return None
        if not path.startswith(content_prefix):
            logger.warning("playlist URI leaves content %s: %r", content_id, uri)
            return None
        return edge.signer.mint(access.session_part, scope, path)

    return authorize


async def _rewritten_playlist(
    request: Request,
    edge: Edge,
    access: Access,
    content_id: str,
    path: str,
    delivery: dict[str, str],
) -> Response:
    rewriter = PlaylistRewriter(
        _playlist_authorizer(request, edge, access, content_id),
        max_size=edge.settings.max_playlist_bytes,
    )
    pieces: list[bytes] = []
    try:
        async for chunk in edge.upstream.playlist_chunks(path, delivery):
            pieces.append(rewriter.feed(chunk))
        pieces.append(rewriter.close())
    except PlaylistTooLarge as exc:
        raise Problem(problems.UPSTREAM_INVALID, str(exc)) from None
    except InvalidPlaylist as exc:
        logger.warning("upstream playlist /%s rejected: %s", path, exc)
        raise Problem(problems.UPSTREAM_INVALID, str(exc)) from None
    body = b"".join(pieces)
    # Each viewer's playlist carries its own tokens: never share it.
    headers = {"Cache-Control": "private, no-store"}
    if request.method == "HEAD":
        headers["Content-Length"] = str(len(body))
        return Response(b"", media_type=PLAYLIST_MEDIA_TYPE, headers=headers)
    return Response(body, media_type=PLAYLIST_MEDIA_TYPE, headers=headers)


_CREDENTIAL_HEADERS = frozenset({b"authorization", b"range"})


def _query_tokens(query_string: bytes) -> tuple[str, ...]:
    """Return the ``sg`` values of a query string, as Starlette decodes them."""
    query = query_string.decode("latin-1")
    if "%" in query or "+" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
        return tuple(value for name, value in pairs if name == TOKEN_PARAM)
    # Without escapes, splitting is all that parse_qsl would do.
    return tuple(
        value
        for name, _, value in (field.partition("=") for field in query.split("&"))
        if name == TOKEN_PARAM
    )


def _credentials(scope: Scope) -> Credentials:
    # The first of each header, as Starlette's Headers.get returns it.
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _CREDENTIAL_HEADERS:
            found.setdefault(name, value)
    scheme, _, token = found.get(b"authorization", b"").decode("latin-1").partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" and token.strip() else None
    range_header = found.get(b"range")
    return Credentials(
        query=_query_tokens(scope["query_string"]),
        bearer=bearer,
        path=scope.get(PATH_TOKEN_SCOPE_KEY),
        range=None if range_header is None else range_header.decode("latin-1"),
    )


async def media(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    # The catch-all route also matches control paths requested with another
    # method; those get 405, not a media lookup.
    allowed = request.app.state.control_methods.get(request.scope["path"])
    if allowed is not None:
        raise Problem(problems.METHOD_NOT_ALLOWED, headers={"Allow": allowed})
    check_raw_path(request.scope.get("raw_path"))
    content_id, rest = split_media_path(request.scope["path"])
    access = await edge.gate.check(
        _credentials(request.scope), content_id, request.scope["path"]
    )
    request.scope[MODE_SCOPE_KEY] = "entitled" if access.claims.entitled else "preview"
    media_path = f"{content_id}/{rest}"
    if is_playlist(rest):
        delivery = delivery_directives(request.query_params)
        return await _rewritten_playlist(
            request, edge, access, content_id, media_path, delivery
        )
    return await edge.upstream.media_response(
        media_path, request, range_bound=access.range_bound
    )


async def serve_media(scope: Scope, receive: Receive, send: Send) -> None:
    """Serve :func:`media` as an ASGI app, without Starlette's router.

    A :class:`Problem` becomes its problem response, as the app's exception
    handler would make it. Any other error propagates to the server error
    handler.
    """
    request = Request(scope, receive, send)
    try:
        response = await media(request)
    except Problem as problem:
        response = problem_response(request, problem)
    await response(scope, receive, send)


def _jetstream_health(edge: Edge) -> dict[str, object] | None:
    consumer = edge.jetstream
    if consumer is None:
        return None
    return {"durable": consumer.durable, **dataclasses.asdict(consumer.stats)}


async def healthz(request: Request) -> Response:
    edge: Edge = request.app.state.edge
    link = edge.link
    silence = link.silence()
    return JSONResponse(
        {
            "status": "degraded" if link.degraded else "ok",
            "keys": len(edge.keys),
            "entitlements": len(edge.entitlements),
            "policies": len(edge.policies),
            "last_event_seq": edge.events.last_seq,
            "jetstream": _jetstream_health(edge),
            "origin": {
                "circuit": link.breaker.state,
                "silent_seconds": None if silence == float("inf") else silence,
                "within_grace": link.within_grace(),
                "degraded_decisions": dict(link.degraded_decisions),
            },
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
    except (httpx.HTTPError, OriginUnavailable) as exc:
        raise Problem(
            problems.UPSTREAM_UNAVAILABLE, f"catching up from the origin failed: {exc}"
        ) from None
    return JSONResponse({"applied": changed, "last_seq": edge.events.last_seq})


class _AnyPathConvertor(Convertor[str]):
    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", _AnyPathConvertor())


def create_app(
    settings: EdgeSettings,
    transport: httpx.AsyncBaseTransport | None = None,
    public_key: PublicKeyFactory = PyJwtKey,
) -> Starlette:
    """Build the edge ASGI application.

    ``transport`` carries its requests to the origin and an HTTP upstream;
    the default opens sockets. ``public_key`` turns the origin's JWKs into
    keys that verify its tokens; the default uses PyJWT and cryptography.
    """
    configure_tracing()
    redactor.add_secrets(
        [settings.origin_token, settings.metrics_token]
        + [base64.urlsafe_b64encode(secret).decode() for secret in settings.uri_secrets]
    )
    edge = Edge(settings, transport, public_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await edge.sync()
        if edge.jetstream is not None:
            edge.jetstream.start()
        poller = asyncio.create_task(edge.sync_forever())
        yield
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
        await edge.aclose()

    routes = [
        Route("/_edge/healthz", healthz, methods=["GET"]),
        Route("/_edge/events", receive_events, methods=["POST"]),
        Route(
            "/_edge/metrics", metrics_endpoint(settings.metrics_token), methods=["GET"]
        ),
        Route("/_edge/authorize", authorize, methods=["GET", "HEAD"]),
        # "anypath" also matches control characters, which the path check
        # rejects with a problem instead of the router's plain 404.
        Route("/{path:anypath}", media, methods=["GET", "HEAD"]),
    ]
    cors = {
        "allow_origins": list(settings.allow_origins),
        "allow_methods": ["GET", "HEAD", "OPTIONS"],
        "allow_headers": ["Range", "Authorization"],
        "expose_headers": [
            *(REASON_HEADER, "Content-Range", "Content-Length", "Date"),
            # Players learn of a deprecated operation from these.
            *("Deprecation", "Sunset"),
        ],
        "max_age": 86400,
    }
    middleware = [
        Middleware(
            EdgeMiddleware,
            media=serve_media,
            control_paths=[route.path for route in routes[:-1]],
            deprecated=spec_deprecations(edge=True),
            metrics=edge.metrics,
            cors=cors,
        )
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers=problem_handlers(logger),
    )
    # A trailing slash is not a path to redirect from: a redirect built from
    # the Host header could point anywhere.
    app.router.redirect_slashes = False
    app.state.edge = edge
    app.state.control_methods = {
        route.path: ", ".join(sorted(route.methods or ())) for route in routes[:-1]
    }
    return app
