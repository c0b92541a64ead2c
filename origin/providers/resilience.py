"""Timeouts, retries and circuit breakers around any payment provider.

Every call gets its operation's timeout. A call that got no usable response
(:class:`ProviderUnavailable`) is retried with jittered exponential backoff
by stamina, with the same idempotency key, so a retry after a lost response
replays the provider's first result instead of acting twice. Declines and
state errors are answers, not failures, and are never retried.

Each operation of each provider has its own circuit breaker: after
``failure_threshold`` failures in a row it opens, and calls fail at once
with :class:`CircuitOpen` until ``reset_seconds`` have passed. Then one
trial call is let through; its success closes the breaker, its failure
opens it again. The breaker is a small class here because purgatory 3.0.1,
the asyncio breaker on PyPI, reads the wall clock directly and lets every
concurrent call through while half-open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import stamina
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from origin.providers.base import (
    OPERATIONS,
    CircuitOpen,
    IntentRequest,
    PaymentIntent,
    PaymentMethodDetails,
    PaymentProvider,
    ProviderTimeout,
    ProviderUnavailable,
    Refund,
)

logger = logging.getLogger("segmentgate.origin.providers")

T = TypeVar("T")
tracer = trace.get_tracer("segmentgate.origin")

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

# Seconds per operation. Confirmation waits on the card issuer, so it gets
# the longest; these are estimates, not limits published by any provider.
DEFAULT_TIMEOUTS = {
    "create_intent": 10.0,
    "authorize": 30.0,
    "capture": 20.0,
    "void": 15.0,
    "refund": 20.0,
    "retrieve": 10.0,
    "payment_method": 10.0,
}


@dataclass(frozen=True)
class CallPolicy:
    """Timeouts, retries and circuit-breaker limits of provider calls."""

    timeouts: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    attempts: int = 3
    wait_initial: float = 0.2
    wait_max: float = 2.0
    wait_jitter: float = 0.5
    failure_threshold: int = 5
    reset_seconds: float = 30.0


class CircuitBreaker:
    """Count consecutive failures of one operation and stop calling when too many."""

    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        self.name = name
        self._threshold = failure_threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        if self._clock() - self._opened_at >= self._reset_seconds:
            return HALF_OPEN
        return OPEN

    async def call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation`` unless the breaker is open.

        :class:`ProviderUnavailable` counts as a failure; any other outcome
        counts as a success, because the provider answered.
        """
        trial = self._admit()
        try:
            result = await operation()
        except ProviderUnavailable:
            self._record_failure()
            raise
        except Exception:
            self._record_success()
            raise
        except BaseException:
            # Cancelled: no verdict on the provider, so free the trial slot.
            if trial:
                self._trial_running = False
            raise
        self._record_success()
        return result

    def _admit(self) -> bool:
        state = self.state
        if state == CLOSED:
            return False
        if state == HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        opened_at = self._opened_at or self._clock()
        retry_after = max(0.0, opened_at + self._reset_seconds - self._clock())
        raise CircuitOpen(self.name, retry_after)

    def _record_success(self) -> None:
        if self._opened_at is not None:
            logger.info("circuit %s closed", self.name)
        self._failures = 0
        self._opened_at = None
        self._trial_running = False

    def _record_failure(self) -> None:
        self._failures += 1
        self._trial_running = False
        if self._opened_at is not None or self._failures >= self._threshold:
            self._opened_at = self._clock()
            logger.warning(
                "circuit %s opened after %d failures in a row",
                self.name,
                self._failures,
            )


def _should_retry(exc: Exception) -> bool:
    return isinstance(exc, ProviderUnavailable) and exc.retryable


class ResilientProvider:
    """A payment provider whose calls are timed, retried and broken off."""

    def __init__(
        self,
        provider: PaymentProvider,
        policy: CallPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider = provider
        self.name = provider.name
        self.policy = policy or CallPolicy()
        self.breakers = {
            operation: CircuitBreaker(
                f"{provider.name}.{operation}",
                failure_threshold=self.policy.failure_threshold,
                reset_seconds=self.policy.reset_seconds,
                clock=clock,
            )
            for operation in OPERATIONS
        }

    async def create_intent(
        self, request: IntentRequest, idempotency_key: str
    ) -> PaymentIntent:
        return await self._call(
            "create_intent",
            lambda: self.provider.create_intent(request, idempotency_key),
        )

    async def authorize(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        return await self._call(
            "authorize", lambda: self.provider.authorize(intent_id, idempotency_key)
        )

    async def capture(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        return await self._call(
            "capture", lambda: self.provider.capture(intent_id, idempotency_key)
        )

    async def void(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        return await self._call(
            "void", lambda: self.provider.void(intent_id, idempotency_key)
        )

    async def refund(self, intent_id: str, idempotency_key: str) -> Refund:
        return await self._call(
            "refund", lambda: self.provider.refund(intent_id, idempotency_key)
        )

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        return await self._call("retrieve", lambda: self.provider.retrieve(intent_id))

    async def payment_method_details(self, payment_method: str) -> PaymentMethodDetails:
        return await self._call(
            "payment_method",
            lambda: self.provider.payment_method_details(payment_method),
        )

    async def aclose(self) -> None:
        await self.provider.aclose()

    async def _call(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        with tracer.start_as_current_span(
            f"payment {operation}",
            kind=SpanKind.CLIENT,
            attributes={"payment.provider": self.name},
        ):
            return await self._retried(operation, call)

    async def _retried(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        breaker = self.breakers[operation]
        timeout = self.policy.timeouts[operation]

        async def timed() -> T:
            try:
                async with asyncio.timeout(timeout):
                    return await call()
            except TimeoutError:
                raise ProviderTimeout(
                    f"{self.name} {operation} did not respond within {timeout:g} s"
                ) from None

        async for attempt in stamina.retry_context(
            on=_should_retry,
            attempts=self.policy.attempts,
            timeout=None,
            wait_initial=self.policy.wait_initial,
            wait_max=self.policy.wait_max,
            wait_jitter=self.policy.wait_jitter,
        ):
            with attempt:
                return await breaker.call(timed)
        raise AssertionError("stamina.retry_context ended without an outcome")
