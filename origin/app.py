"""The origin application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin import (
    admin,
    api_docs,
    catalog,
    dlq,
    feeds,
    metrics,
    outbox_admin,
    playback,
    purchases,
    risk_admin,
    sandbox,
    sandbox_issuer,
    status,
    storefront,
    viewers,
    webhooks,
)
from origin.auth import parse_admin_tokens
from origin.keyring import KeyRing
from origin.outbox import OutboxRelay
from origin.providers import (
    PaymentProvider,
    ResilientProvider,
    SandboxFaults,
    SandboxProvider,
    StripeProvider,
)
from origin.recovery import RecoveryLoop
from origin.risk import RiskEngine
from origin.risk_signals import RequestContext, derive_fingerprint_key
from origin.saga import PurchaseSaga
from origin.settings import OriginSettings, resolve_master_key
from origin.state import Origin
from origin.store import create_engine, create_tables
from shared.bodies import DrainBodyMiddleware
from shared.deprecation import DeprecationMiddleware, spec_deprecations
from shared.http import join_routes, problem_handlers
from shared.logs import redactor
from shared.tracing import TraceMiddleware, configure_tracing

logger = logging.getLogger("segmentgate.origin")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"}, headers={"Cache-Control": "no-store"})


def build_provider(
    settings: OriginSettings, clock: Callable[[], float] = time.time
) -> PaymentProvider:
    """Create the payment provider that ``settings`` name, without retries."""
    if settings.payment_provider == "stripe":
        return StripeProvider(
            settings.stripe_api_key,
            api_url=settings.stripe_api_url,
            return_url=settings.stripe_return_url or None,
            timeout=max(settings.provider_calls.timeouts.values()),
        )
    state_path = settings.sandbox_state_path
    return SandboxProvider(
        clock=clock,
        faults=SandboxFaults.parse(settings.sandbox_faults),
        state_path=Path(state_path) if state_path else None,
    )


def create_app(
    settings: OriginSettings,
    provider: PaymentProvider | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """Build the origin ASGI application; tables and keys are set up at start.

    ``provider`` replaces the one that ``settings`` name; either way its
    calls get the timeouts, retries and circuit breakers of
    ``settings.provider_calls``.
    """
    configure_tracing()
    engine = create_engine(settings.database_url)
    master_key = resolve_master_key(settings)
    keys = KeyRing(
        engine,
        settings.signing_algorithm,
        master_key=master_key,
        publish_seconds=settings.key_publish_seconds,
        token_lifetime=settings.playback_token_ttl,
    )
    relay = OutboxRelay(
        engine,
        keys,
        (*settings.edge_urls, *([settings.nats_url] if settings.nats_url else [])),
        retention_seconds=settings.event_retention_seconds,
        poll_interval=settings.relay_poll_interval,
        timeout=settings.relay_timeout,
        fault=settings.relay_fault,
        jetstream_names=(settings.nats_stream, settings.nats_subject_prefix),
    )
    inner = provider or build_provider(settings, clock)
    resilient = ResilientProvider(inner, settings.provider_calls)
    saga = PurchaseSaga(
        engine, resilient, relay.notify, policy=settings.saga, clock=clock
    )
    recovery = RecoveryLoop(saga, settings.recovery_interval)
    processor = webhooks.WebhookProcessor(engine, saga, settings, clock)
    state = Origin(settings, engine, keys, resilient, relay, saga, recovery, clock)
    state.admin_tokens = parse_admin_tokens(settings.admin_token, settings.admin_tokens)
    if isinstance(inner, SandboxProvider):
        state.sandbox = inner
    state.risk = RiskEngine(engine, settings.risk, clock=clock)
    state.risk_context = RequestContext(
        derive_fingerprint_key(master_key),
        client_ip_header=settings.risk_client_ip_header,
        country_header=settings.risk_country_header,
    )
    redactor.add_secrets(
        [
            *state.admin_tokens,
            settings.edge_token,
            settings.master_key,
            settings.stripe_api_key,
            *(secret for values in processor.secrets.values() for secret in values),
        ]
    )
    keys.on_event = relay.notify

    async def tick_keys() -> None:
        while True:
            await asyncio.sleep(settings.key_tick_interval)
            try:
                await keys.tick()
            except Exception:
                logger.exception("advancing key rotation failed")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await create_tables(engine)
        await keys.load()
        await relay.start()
        recovery.start()
        if settings.sandbox and await sandbox.seed_if_empty(state):
            logger.info("sandbox mode: seeded the store with its fixtures")
        await processor.load_stored_secrets(keys.decrypt_text)
        processor.start()
        ticker = asyncio.create_task(tick_keys())
        yield
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await processor.stop()
        await recovery.stop()
        await saga.wait_idle()
        await relay.stop()
        await resilient.aclose()
        await engine.dispose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        *catalog.routes,
        *viewers.routes,
        *playback.routes,
        *purchases.routes,
        *sandbox_issuer.routes,
        *storefront.routes,
        *feeds.routes,
        *admin.routes,
        *webhooks.routes,
        *dlq.routes,
        *outbox_admin.routes,
        *risk_admin.routes,
        *metrics.routes,
        *api_docs.routes,
        *sandbox.routes,
        *status.routes,
    ]
    deprecated = spec_deprecations(edge=False)
    app = Starlette(
        routes=join_routes(routes),
        middleware=[
            # A request rejected before its body is read keeps its
            # connection usable for the client's next request.
            Middleware(DrainBodyMiddleware),
            Middleware(TraceMiddleware, tracer_name="segmentgate.origin"),
            Middleware(DeprecationMiddleware, deprecated=deprecated),
        ],
        lifespan=lifespan,
        exception_handlers=problem_handlers(logger),
    )
    # A trailing slash is not a path to redirect from: a redirect built from
    # the Host header could point anywhere.
    app.router.redirect_slashes = False
    app.state.origin = state
    app.state.webhooks = processor
    return app
