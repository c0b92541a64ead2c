"""The origin application."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin import catalog, feeds, playback, purchases, viewers
from origin.keyring import KeyRing
from origin.outbox import OutboxRelay
from origin.providers import PaymentProvider, SandboxProvider
from origin.saga import PurchaseSaga
from origin.settings import OriginSettings
from origin.state import Origin
from origin.store import create_engine, create_tables
from shared.http import problem_handlers

logger = logging.getLogger("segmentgate.origin")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


def create_app(
    settings: OriginSettings, provider: PaymentProvider | None = None
) -> Starlette:
    """Build the origin ASGI application; tables and keys are set up at start."""
    engine = create_engine(settings.database_url)
    keys = KeyRing(engine, settings.signing_algorithm)
    relay = OutboxRelay(
        engine,
        keys,
        settings.edge_urls,
        retention_seconds=settings.event_retention_seconds,
        poll_interval=settings.relay_poll_interval,
        timeout=settings.relay_timeout,
    )
    provider = provider or SandboxProvider()
    saga = PurchaseSaga(engine, provider, relay.notify)
    state = Origin(settings, engine, keys, provider, relay, saga)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await create_tables(engine)
        await keys.load()
        await relay.start()
        yield
        await relay.stop()
        await engine.dispose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        *catalog.routes,
        *viewers.routes,
        *playback.routes,
        *purchases.routes,
        *feeds.routes,
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers=problem_handlers(logger)
    )
    app.state.origin = state
    return app
