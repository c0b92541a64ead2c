"""Timeouts, retries with the same idempotency key, and circuit breakers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from origin.providers import (
    CallPolicy,
    CircuitBreaker,
    CircuitOpen,
    IntentRequest,
    PaymentDeclined,
    ProviderTimeout,
    ProviderUnavailable,
    ResilientProvider,
    SandboxProvider,
)
from origin.providers.base import OPERATIONS, SUCCEEDED
from origin.providers.resilience import CLOSED, HALF_OPEN, OPEN
from tests.saga_harness import FakeClock


def policy(**changes: object) -> CallPolicy:
    values: dict[str, object] = {
        "timeouts": dict.fromkeys(OPERATIONS, 0.05),
        "attempts": 3,
        "wait_initial": 0.001,
        "wait_max": 0.002,
        "wait_jitter": 0.0,
        "failure_threshold": 100,
        "reset_seconds": 10.0,
    }
    values.update(changes)
    return CallPolicy(**values)  # type: ignore[arg-type]


async def authorized(provider: ResilientProvider) -> str:
    request = IntentRequest(Decimal("4.99"), "EUR", "pm_card_visa", "pur_test")
    intent = await provider.create_intent(request, "k:intent")
    await provider.authorize(intent.id, "k:authorize")
    return intent.id


@pytest.mark.parametrize("kind", ["error", "timeout", "drop", "late"])
async def test_one_fault_is_retried_with_the_same_key(kind: str) -> None:
    sandbox = SandboxProvider()
    provider = ResilientProvider(sandbox, policy())
    intent_id = await authorized(provider)
    sandbox.faults.add("capture", kind)
    assert (await provider.capture(intent_id, "k:capture")).status == SUCCEEDED
    assert sandbox.intents_for("pur_test")[0]["captures"] == 1


async def test_persistent_timeout_raises_provider_timeout() -> None:
    sandbox = SandboxProvider()
    provider = ResilientProvider(sandbox, policy())
    intent_id = await authorized(provider)
    sandbox.faults.add("capture", "timeout", times=None)
    with pytest.raises(ProviderTimeout):
        await provider.capture(intent_id, "k:capture")


async def test_declines_are_not_retried() -> None:
    sandbox = SandboxProvider()
    provider = ResilientProvider(sandbox, policy(failure_threshold=1))
    request = IntentRequest(Decimal("4.99"), "EUR", "pm_card_chargeDeclined", "p")
    intent = await provider.create_intent(request, "k:intent")
    for _ in range(3):
        with pytest.raises(PaymentDeclined):
            await provider.authorize(intent.id, "k:authorize")
    # A decline is a response from the provider, so the breaker with a
    # threshold of 1 stays closed.
    assert provider.breakers["authorize"].state == CLOSED


async def test_breaker_opens_per_operation() -> None:
    sandbox = SandboxProvider()
    provider = ResilientProvider(sandbox, policy(failure_threshold=2, attempts=1))
    intent_id = await authorized(provider)
    sandbox.faults.add("capture", "error", times=None)
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await provider.capture(intent_id, "k:capture")
    with pytest.raises(CircuitOpen):
        await provider.capture(intent_id, "k:capture")
    assert provider.breakers["capture"].state == OPEN
    assert provider.breakers["retrieve"].state == CLOSED
    assert (await provider.retrieve(intent_id)).id == intent_id


async def test_open_breaker_is_not_retried() -> None:
    sandbox = SandboxProvider()
    provider = ResilientProvider(sandbox, policy(failure_threshold=1, attempts=5))
    intent_id = await authorized(provider)
    sandbox.faults.add("capture", "error", times=1)
    # The first try fails and opens the breaker; the retry fails fast with
    # CircuitOpen, which is not retried, so the call ends there.
    with pytest.raises(CircuitOpen):
        await provider.capture(intent_id, "k:capture")


class Failing:
    def __init__(self) -> None:
        self.calls = 0

    async def fail(self) -> None:
        self.calls += 1
        raise ProviderUnavailable("down")

    async def succeed(self) -> str:
        self.calls += 1
        return "ok"


async def test_breaker_half_open_trial_closes_it() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(
        "p.capture", failure_threshold=2, reset_seconds=5, clock=clock
    )
    calls = Failing()
    for _ in range(2):
        with pytest.raises(ProviderUnavailable):
            await breaker.call(calls.fail)
    assert breaker.state == OPEN
    with pytest.raises(CircuitOpen) as opened:
        await breaker.call(calls.succeed)
    assert opened.value.retry_after == 5
    assert calls.calls == 2
    clock.advance(5)
    assert breaker.state == HALF_OPEN
    assert await breaker.call(calls.succeed) == "ok"
    assert breaker.state == CLOSED


async def test_breaker_half_open_failure_reopens() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(
        "p.capture", failure_threshold=3, reset_seconds=5, clock=clock
    )
    calls = Failing()
    for _ in range(3):
        with pytest.raises(ProviderUnavailable):
            await breaker.call(calls.fail)
    clock.advance(5)
    with pytest.raises(ProviderUnavailable):
        await breaker.call(calls.fail)
    # One failed trial reopens it at once, without three new failures.
    assert breaker.state == OPEN


async def test_breaker_lets_one_trial_through_while_half_open() -> None:
    clock = FakeClock(0.0)
    breaker = CircuitBreaker(
        "p.capture", failure_threshold=1, reset_seconds=5, clock=clock
    )
    calls = Failing()
    with pytest.raises(ProviderUnavailable):
        await breaker.call(calls.fail)
    clock.advance(5)
    inside_trial: list[BaseException] = []

    async def trial() -> str:
        try:
            await breaker.call(calls.succeed)
        except CircuitOpen as exc:
            inside_trial.append(exc)
        return "trial"

    assert await breaker.call(trial) == "trial"
    assert len(inside_trial) == 1
    assert breaker.state == CLOSED


def test_breaker_needs_a_positive_threshold() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CircuitBreaker("p.x", failure_threshold=0, reset_seconds=1)
