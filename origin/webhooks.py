"""Inbound payment provider webhooks: ``POST /v1/webhooks/{provider}``.

A delivery is verified over its raw body (see
:mod:`origin.webhook_signatures`), stored for audit with a correlation id,
and recorded once per event id, so a duplicate changes nothing. Processing
hands the provider's view of the payment intent to the saga, which moves a
purchase only forward along its statuses: an older event never overwrites a
newer status, and a refund that arrives before the capture records both.

An event that cannot be applied yet (no purchase has its payment intent, or
a saga runner has the lease on the purchase) or whose processing fails is retried with
exponential backoff, and after the last attempt moves to the dead-letter
table, from where ``segmentgate dlq replay`` puts it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry import trace
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin import purchase_records as records
from origin.providers import PaymentIntent
from origin.saga import PurchaseSaga
from origin.settings import OriginSettings
from origin.state import Origin
from origin.store import (
    purchases,
    webhook_dead_letters,
    webhook_deliveries,
    webhook_events,
    webhook_secrets,
)
from origin.validation import read_body
from origin.webhook_events import InvalidEvent, ProviderEvent, parse_event
from origin.webhook_signatures import (
    STANDARD,
    STRIPE,
    SignatureMissing,
    TimestampOutOfTolerance,
    WebhookSignatureError,
    check_secret,
    verify,
)
from shared import problems
from shared.logs import redactor
from shared.problems import Problem
from shared.tracing import TRACEPARENT, span_from

logger = logging.getLogger("segmentgate.origin.webhooks")
tracer = trace.get_tracer("segmentgate.origin")

CORRELATION_HEADER = "Segmentgate-Correlation-Id"
PENDING = "pending"
PROCESSED = "processed"
IGNORED = "ignored"
DEAD = "dead"
# Seconds that a processor keeps its claim on an event before another takes it.
CLAIM_SECONDS = 60.0
# Header names whose values are never stored: signatures and credentials.
_REDACTED = ("signature", "authorization", "cookie", "secret", "token", "key")


class RetryLater(Exception):
    """Raised when an event cannot be applied now but may be later."""


def parse_webhook_secrets(text: str) -> dict[str, tuple[str, ...]]:
    """Map providers to their secrets from ``provider:secret`` pairs."""
    secrets: dict[str, tuple[str, ...]] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        provider, _, secret = item.strip().partition(":")
        if not provider or not secret:
            raise ValueError(
                "webhook secret entries must be 'provider:secret', for example "
                "'stripe:whsec_...'"
            )
        check_secret(scheme_of(provider), secret)
        secrets[provider] = (*secrets.get(provider, ()), secret)
    return secrets


def scheme_of(provider: str) -> str:
    return STRIPE if provider == STRIPE else STANDARD


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {
        name: "[redacted]" if any(word in name.lower() for word in _REDACTED) else value
        for name, value in headers.items()
    }


class WebhookProcessor:
    """Record provider events once and apply them to purchases, with retries."""

    def __init__(
        self,
        engine: AsyncEngine,
        saga: PurchaseSaga,
        settings: OriginSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._saga = saga
        self._settings = settings
        self.clock = clock
        self._configured = parse_webhook_secrets(settings.webhook_secrets)
        self.secrets = dict(self._configured)
        self._task: asyncio.Task[None] | None = None

    async def load_stored_secrets(self, decrypt: Callable[[str], str]) -> None:
        """Merge the secrets in the store with those of the environment."""
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(webhook_secrets).order_by(webhook_secrets.c.created_at)
                )
            ).all()
        merged = {
            provider: list(values) for provider, values in self._configured.items()
        }
        for row in rows:
            merged.setdefault(row.provider, []).append(decrypt(row.secret))
        self.secrets = {provider: tuple(values) for provider, values in merged.items()}
        redactor.add_secrets(
            secret for values in self.secrets.values() for secret in values
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._settings.webhook_retry_interval)
            try:
                await self.process_due()
            except Exception:
                logger.exception("retrying webhook events failed")

    # Receipt ------------------------------------------------------------------

    def verify(self, provider: str, body: bytes, headers: Mapping[str, str]) -> Any:
        """Check the delivery's signature; raise a :class:`Problem` if it fails."""
        secrets = self.secrets.get(provider)
        if not secrets:
            raise Problem(
                problems.NOT_FOUND,
                f"no webhook secret is configured for provider {provider[:40]!r}",
            )
        try:
            return verify(
                scheme_of(provider),
                secrets,
                body,
                headers,
                self.clock(),
                self._settings.webhook_tolerance_seconds,
            )
        except SignatureMissing as exc:
            raise Problem(problems.WEBHOOK_SIGNATURE_MISSING, str(exc)) from None
        except TimestampOutOfTolerance as exc:
            raise Problem(
                problems.WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE, str(exc)
            ) from None
        except WebhookSignatureError as exc:
            raise Problem(problems.WEBHOOK_SIGNATURE_INVALID, str(exc)) from None

    async def accept(
        self,
        provider: str,
        event: ProviderEvent,
        headers: Mapping[str, str],
        body: bytes,
    ) -> tuple[str, bool]:
        """Store the delivery; return its correlation id and whether it is new."""
        correlation_id = "whd_" + uuid.uuid4().hex
        now = self.clock()
        delivery = {
            "correlation_id": correlation_id,
            "provider": provider,
            "event_id": event.event_id,
            "received_at": now,
            "headers": redact_headers(headers),
            "payload": body.decode("utf-8", errors="replace"),
        }
        try:
            async with self._engine.begin() as connection:
                await connection.execute(
                    webhook_events.insert().values(
                        provider=provider,
                        event_id=event.event_id,
                        correlation_id=correlation_id,
                        event_type=event.event_type,
                        status=PENDING,
                        attempts=0,
                        next_attempt_at=now,
                        received_at=now,
                    )
                )
                await connection.execute(
                    webhook_deliveries.insert().values(duplicate=False, **delivery)
                )
        except IntegrityError:
            async with self._engine.begin() as connection:
                await connection.execute(
                    webhook_deliveries.insert().values(duplicate=True, **delivery)
                )
            return correlation_id, False
        return correlation_id, True

    # Processing ---------------------------------------------------------------

    async def process_due(self, limit: int = 100) -> int:
        """Process pending events whose retry is due; return how many were tried."""
        async with self._engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(webhook_events.c.provider, webhook_events.c.event_id)
                    .where(
                        webhook_events.c.status == PENDING,
                        webhook_events.c.next_attempt_at <= self.clock(),
                    )
                    .order_by(webhook_events.c.next_attempt_at)
                    .limit(limit)
                )
            ).all()
        for row in rows:
            await self.process(row.provider, row.event_id)
        return len(rows)

    async def process(self, provider: str, event_id: str) -> str:
        """Apply a pending event that no other processor claimed; return its status."""
        now = self.clock()
        async with self._engine.begin() as connection:
            claimed = await connection.execute(
                webhook_events.update()
                .where(
                    webhook_events.c.provider == provider,
                    webhook_events.c.event_id == event_id,
                    webhook_events.c.status == PENDING,
                    webhook_events.c.next_attempt_at <= now,
                )
                .values(next_attempt_at=now + CLAIM_SECONDS)
            )
            row = (
                await connection.execute(
                    select(webhook_events, webhook_deliveries.c.payload)
                    .join(
                        webhook_deliveries,
                        webhook_deliveries.c.correlation_id
                        == webhook_events.c.correlation_id,
                    )
                    .where(
                        webhook_events.c.provider == provider,
                        webhook_events.c.event_id == event_id,
                    )
                )
            ).one()
        if claimed.rowcount != 1:
            return str(row.status)
        try:
            status = await self._apply(provider, row)
        except RetryLater as exc:
            return await self._retry_or_bury(row, str(exc))
        except Exception as exc:
            logger.exception(
                "processing webhook event %s (%s) failed", event_id, row.correlation_id
            )
            return await self._retry_or_bury(row, f"{type(exc).__name__}: {exc}")
        await self._finish(row, status)
        return status

    async def _apply(self, provider: str, row: Any) -> str:
        # The stored event id wins over the body's, so that a Standard
        # Webhooks event (id in the webhook-id header) parses the same again.
        event = parse_event(row.payload.encode(), row.event_id)
        if event.intent is None:
            return IGNORED
        await self._apply_intent(provider, event.intent)
        return PROCESSED

    async def _apply_intent(self, provider: str, intent: PaymentIntent) -> None:
        async with self._engine.connect() as connection:
            purchase_id = (
                await connection.execute(
                    select(purchases.c.purchase_id).where(
                        purchases.c.payment_intent_id == intent.id,
                        purchases.c.provider == provider,
                    )
                )
            ).scalar()
        if purchase_id is None:
            # The saga stores the intent id after the provider created it, so
            # an event may arrive before that transaction commits.
            raise RetryLater(f"no purchase has payment intent {intent.id} yet")
        owner = "webhook_" + uuid.uuid4().hex
        async with self._engine.begin() as connection:
            taken = await records.acquire_lease(
                connection,
                purchase_id,
                owner,
                self.clock(),
                self._saga.policy.lease_seconds,
            )
        if not taken:
            raise RetryLater(f"purchase {purchase_id} is held by a saga runner")
        try:
            # Each call records at most one step, so a refunded charge on an
            # authorized purchase takes two: the capture, then the refund.
            for _ in range(4):
                async with self._engine.connect() as connection:
                    purchase = await records.fetch_purchase(connection, purchase_id)
                if purchase is None or not await self._saga.apply_provider_view(
                    purchase, owner, intent
                ):
                    break
        finally:
            async with self._engine.begin() as connection:
                await records.release_lease(connection, purchase_id, owner)
        # Continue from the recorded state, as reconciliation does: a
        # recorded capture gets its grant.
        await self._saga.run(purchase_id)

    async def _finish(self, row: Any, status: str) -> None:
        async with self._engine.begin() as connection:
            await connection.execute(
                _event_update(row).values(
                    status=status,
                    attempts=row.attempts + 1,
                    next_attempt_at=None,
                    last_error=None,
                    processed_at=self.clock(),
                )
            )
        logger.info(
            "webhook event %s (%s, %s) %s",
            row.event_id,
            row.event_type,
            row.correlation_id,
            status,
        )

    async def _retry_or_bury(self, row: Any, error: str) -> str:
        attempts = row.attempts + 1
        now = self.clock()
        async with self._engine.begin() as connection:
            if attempts >= self._settings.webhook_max_attempts:
                await connection.execute(
                    _event_update(row).values(
                        status=DEAD,
                        attempts=attempts,
                        next_attempt_at=None,
                        last_error=error,
                    )
                )
                await _bury(connection, row, attempts, error, now)
                status = DEAD
            else:
                delay = min(
                    self._settings.webhook_retry_base * 2 ** (attempts - 1),
                    self._settings.webhook_retry_max,
                )
                await connection.execute(
                    _event_update(row).values(
                        attempts=attempts, next_attempt_at=now + delay, last_error=error
                    )
                )
                status = PENDING
        logger.warning(
            "webhook event %s (%s) attempt %d failed: %s; %s",
            row.event_id,
            row.correlation_id,
            attempts,
            error,
            "moved to the dead-letter table" if status == DEAD else "will retry",
        )
        return status


def _event_update(row: Any) -> Any:
    return webhook_events.update().where(
        webhook_events.c.provider == row.provider,
        webhook_events.c.event_id == row.event_id,
    )


async def _bury(
    connection: Any, row: Any, attempts: int, error: str, now: float
) -> None:
    values = {
        "provider": row.provider,
        "event_id": row.event_id,
        "event_type": row.event_type,
        "attempts": attempts,
        "last_error": error,
        "dead_at": now,
        "replayed_at": None,
    }
    updated = await connection.execute(
        webhook_dead_letters.update()
        .where(webhook_dead_letters.c.correlation_id == row.correlation_id)
        .values(**values)
    )
    if updated.rowcount == 0:
        await connection.execute(
            webhook_dead_letters.insert().values(
                correlation_id=row.correlation_id, **values
            )
        )


def _metadata_traceparent(body: bytes) -> str:
    """Return ``data.object.metadata.traceparent`` of an event body, or ``""``."""
    try:
        metadata = json.loads(body)["data"]["object"]["metadata"]
        return str(metadata.get("traceparent", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return ""


async def receive_webhook(request: Request) -> Response:
    """Verify, store and process one delivery.

    A delivery without a ``traceparent`` header is processed in the trace
    that the payment intent's metadata names, when the provider returns it
    (Stripe does), linked to the delivery's own request span.
    """
    # NOTE: bodies over MAX_BODY_BYTES (64 KiB) are rejected with 413, and
    # the provider retries such a delivery until it gives up.
    body = await read_body(request)
    traceparent = ""
    if TRACEPARENT not in request.headers:
        traceparent = _metadata_traceparent(body)
    with span_from(
        tracer,
        "webhook delivery",
        traceparent,
        links=[trace.Link(trace.get_current_span().get_span_context())],
    ):
        return await _receive_webhook(request, body)


async def _receive_webhook(request: Request, body: bytes) -> Response:
    processor: WebhookProcessor = request.app.state.webhooks
    provider = request.path_params["provider"]
    try:
        delivery = processor.verify(provider, body, request.headers)
    except Problem as exc:
        # Any path segment reaches here: an unknown provider gets one label,
        # so made-up names cannot grow the metric without bound.
        label = provider if provider in processor.secrets else "unknown"
        origin: Origin = request.app.state.origin
        origin.counters.count_webhook_failure(label, exc.problem_type.slug)
        raise
    try:
        event = parse_event(body, delivery.message_id)
    except InvalidEvent as exc:
        raise Problem(problems.UNPROCESSABLE, str(exc)) from None
    correlation_id, new = await processor.accept(provider, event, request.headers, body)
    status = "duplicate"
    if new:
        status = await processor.process(provider, event.event_id)
    return JSONResponse(
        {
            "status": status,
            "event_id": event.event_id,
            "correlation_id": correlation_id,
        },
        headers={CORRELATION_HEADER: correlation_id, "Cache-Control": "no-store"},
    )


routes = [Route("/v1/webhooks/{provider}", receive_webhook, methods=["POST"])]
