"""The sandbox provider: Stripe's test payment methods, faults and persistence."""

from __future__ import annotations

import asyncio
import dataclasses
from decimal import Decimal
from pathlib import Path

import pytest

from origin.providers import (
    IntentRequest,
    PaymentDeclined,
    PaymentProviderError,
    PaymentStateError,
    ProviderUnavailable,
    SandboxFaults,
    SandboxProvider,
    UnknownPaymentMethod,
)
from origin.providers.base import (
    CANCELED,
    REQUIRES_ACTION,
    REQUIRES_CAPTURE,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
    InvalidPaymentRequest,
    to_minor_units,
)
from origin.providers.sandbox import AuthenticationClosed, AuthenticationNotFound
from tests.saga_harness import FakeClock


def request(payment_method: str = "pm_card_visa") -> IntentRequest:
    return IntentRequest(Decimal("4.99"), "EUR", payment_method, "pur_test")


async def authorized(sandbox: SandboxProvider, method: str = "pm_card_visa") -> str:
    intent = await sandbox.create_intent(request(method), "k:intent")
    await sandbox.authorize(intent.id, "k:authorize")
    return intent.id


async def test_visa_authorizes_captures_and_refunds() -> None:
    sandbox = SandboxProvider()
    intent = await sandbox.create_intent(request(), "k:intent")
    assert intent.amount == 499
    assert intent.currency == "eur"
    authorized_intent = await sandbox.authorize(intent.id, "k:authorize")
    assert authorized_intent.status == REQUIRES_CAPTURE
    assert authorized_intent.capture_before is not None
    captured = await sandbox.capture(intent.id, "k:capture")
    assert captured.status == SUCCEEDED
    assert captured.amount_received == 499
    refund = await sandbox.refund(intent.id, "k:refund")
    assert refund.amount == 499
    assert (await sandbox.retrieve(intent.id)).refunded


@pytest.mark.parametrize(
    ("method", "decline_code"),
    [
        ("pm_card_chargeDeclined", "generic_decline"),
        ("pm_card_chargeDeclinedInsufficientFunds", "insufficient_funds"),
        ("pm_card_chargeDeclinedExpiredCard", "expired_card"),
    ],
)
async def test_decline_test_cards(method: str, decline_code: str) -> None:
    sandbox = SandboxProvider()
    intent = await sandbox.create_intent(request(method), "k:intent")
    with pytest.raises(PaymentDeclined) as declined:
        await sandbox.authorize(intent.id, "k:authorize")
    assert declined.value.decline_code == decline_code
    retrieved = await sandbox.retrieve(intent.id)
    assert retrieved.status == REQUIRES_PAYMENT_METHOD
    assert retrieved.decline_code == decline_code


async def test_authentication_required_card_needs_action() -> None:
    sandbox = SandboxProvider()
    intent = await sandbox.create_intent(
        request("pm_card_authenticationRequired"), "k:intent"
    )
    assert (await sandbox.authorize(intent.id, "k:authorize")).status == (
        REQUIRES_ACTION
    )
    assert (await sandbox.void(intent.id, "k:void")).status == CANCELED


async def waiting_intent(sandbox: SandboxProvider) -> tuple[str, str]:
    """Return the id and authentication id of an intent that requires action."""
    intent = await sandbox.create_intent(
        request("pm_card_authenticationRequired"), "k:intent"
    )
    waiting = await sandbox.authorize(intent.id, "k:authorize")
    assert waiting.next_action_url is not None
    assert waiting.next_action_url.startswith("/v1/sandbox/authentications/sa_")
    return intent.id, waiting.next_action_url.rsplit("/", 1)[1]


async def test_approved_authentication_authorizes() -> None:
    clock = FakeClock()
    sandbox = SandboxProvider(clock=clock)
    intent_id, authentication_id = await waiting_intent(sandbox)
    approved = await sandbox.complete_authentication(authentication_id, True)
    assert approved.status == REQUIRES_CAPTURE
    assert approved.capture_before == clock.now + 7 * 24 * 3600
    assert approved.next_action_url is None
    assert (await sandbox.retrieve(intent_id)).status == REQUIRES_CAPTURE
    again = await sandbox.complete_authentication(authentication_id, True)
    assert again.status == REQUIRES_CAPTURE
    with pytest.raises(AuthenticationClosed) as closed:
        await sandbox.complete_authentication(authentication_id, False)
    assert closed.value.result == "approved"


async def test_failed_authentication_declines() -> None:
    sandbox = SandboxProvider()
    intent_id, authentication_id = await waiting_intent(sandbox)
    failed = await sandbox.complete_authentication(authentication_id, False)
    assert failed.status == REQUIRES_PAYMENT_METHOD
    assert failed.decline_code == "payment_intent_authentication_failure"
    with pytest.raises(PaymentStateError):
        await sandbox.capture(intent_id, "k:capture")


async def test_authentication_after_void_is_closed() -> None:
    sandbox = SandboxProvider()
    intent_id, authentication_id = await waiting_intent(sandbox)
    await sandbox.void(intent_id, "k:void")
    with pytest.raises(AuthenticationClosed) as closed:
        await sandbox.complete_authentication(authentication_id, True)
    assert closed.value.result is None
    with pytest.raises(AuthenticationNotFound):
        await sandbox.complete_authentication("sa_unknown", True)


async def test_authentication_outlives_restart(tmp_path: Path) -> None:
    state = tmp_path / "sandbox.json"
    intent_id, authentication_id = await waiting_intent(
        SandboxProvider(state_path=state)
    )
    restarted = SandboxProvider(state_path=state)
    await restarted.complete_authentication(authentication_id, True)
    reread = SandboxProvider(state_path=state)
    assert (await reread.retrieve(intent_id)).status == REQUIRES_CAPTURE


async def test_unknown_payment_method_is_rejected() -> None:
    with pytest.raises(UnknownPaymentMethod):
        await SandboxProvider().create_intent(request("pm_nonsense"), "k")


async def test_same_key_replays_the_first_result() -> None:
    sandbox = SandboxProvider()
    first = await sandbox.create_intent(request(), "k:intent")
    again = await sandbox.create_intent(request(), "k:intent")
    assert again.id == first.id
    assert len(sandbox.intents_for("pur_test")) == 1


async def test_same_key_with_other_parameters_is_an_error() -> None:
    sandbox = SandboxProvider()
    await sandbox.create_intent(request(), "k:intent")
    with pytest.raises(PaymentProviderError, match="another request"):
        await sandbox.create_intent(request("pm_card_amex"), "k:intent")


async def test_second_capture_and_refund_are_state_errors() -> None:
    sandbox = SandboxProvider()
    intent_id = await authorized(sandbox)
    await sandbox.capture(intent_id, "k:capture:1")
    with pytest.raises(PaymentStateError):
        await sandbox.capture(intent_id, "k:capture:2")
    await sandbox.refund(intent_id, "k:refund:1")
    with pytest.raises(PaymentStateError):
        await sandbox.refund(intent_id, "k:refund:2")
    (intent,) = sandbox.intents_for("pur_test")
    assert intent["captures"] == 1
    assert intent["refunds"] == 1


async def test_authorization_expires() -> None:
    clock = FakeClock()
    sandbox = SandboxProvider(clock=clock, authorization_seconds=60)
    intent_id = await authorized(sandbox)
    clock.advance(61)
    expired = await sandbox.retrieve(intent_id)
    assert expired.status == CANCELED
    assert expired.cancellation_reason == "automatic"
    with pytest.raises(PaymentStateError):
        await sandbox.capture(intent_id, "k:capture")


async def test_error_fault_acts_not() -> None:
    sandbox = SandboxProvider()
    intent_id = await authorized(sandbox)
    sandbox.faults.add("capture", "error")
    with pytest.raises(ProviderUnavailable):
        await sandbox.capture(intent_id, "k:capture")
    assert (await sandbox.retrieve(intent_id)).status == REQUIRES_CAPTURE
    # The fault struck once; the retry with the same key goes through.
    assert (await sandbox.capture(intent_id, "k:capture")).status == SUCCEEDED


async def test_drop_fault_acts_then_loses_the_answer() -> None:
    sandbox = SandboxProvider()
    intent_id = await authorized(sandbox)
    sandbox.faults.add("capture", "drop")
    with pytest.raises(ProviderUnavailable):
        await sandbox.capture(intent_id, "k:capture")
    assert (await sandbox.retrieve(intent_id)).status == SUCCEEDED
    replay = await sandbox.capture(intent_id, "k:capture")
    assert replay.status == SUCCEEDED
    assert sandbox.intents_for("pur_test")[0]["captures"] == 1


@pytest.mark.parametrize(("kind", "acted"), [("timeout", False), ("late", True)])
async def test_hanging_faults(kind: str, acted: bool) -> None:
    sandbox = SandboxProvider()
    intent_id = await authorized(sandbox)
    sandbox.faults.add("capture", kind)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await sandbox.capture(intent_id, "k:capture")
    status = (await sandbox.retrieve(intent_id)).status
    assert status == (SUCCEEDED if acted else REQUIRES_CAPTURE)


async def test_gate_blocks_until_opened() -> None:
    sandbox = SandboxProvider()
    intent_id = await authorized(sandbox)
    gate = sandbox.faults.add("capture", "block_before")
    capture = asyncio.create_task(sandbox.capture(intent_id, "k:capture"))
    await gate.reached.wait()
    assert (await sandbox.retrieve(intent_id)).status == REQUIRES_CAPTURE
    gate.open()
    assert (await capture).status == SUCCEEDED


def test_fault_spec_parsing() -> None:
    faults = SandboxFaults.parse("capture:drop:2, refund:error")
    assert [(f.operation, f.kind, f.times) for f in faults._faults] == [
        ("capture", "drop", 2),
        ("refund", "error", None),
    ]
    with pytest.raises(ValueError, match="unknown operation"):
        SandboxFaults.parse("charge:error")
    with pytest.raises(ValueError, match="unknown fault"):
        SandboxFaults.parse("capture:explode")
    with pytest.raises(ValueError, match="positive integer"):
        SandboxFaults.parse("capture:error:x")


async def test_state_file_outlives_the_provider(tmp_path: Path) -> None:
    path = tmp_path / "sandbox.json"
    first = SandboxProvider(state_path=path)
    intent_id = await authorized(first)
    second = SandboxProvider(state_path=path)
    assert (await second.retrieve(intent_id)).status == REQUIRES_CAPTURE
    replay = await second.authorize(intent_id, "k:authorize")
    assert replay.status == REQUIRES_CAPTURE


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [("4.99", "EUR", 499), ("500", "JPY", 500), ("1.234", "KWD", 1234)],
)
def test_minor_units(amount: str, currency: str, minor: int) -> None:
    assert to_minor_units(Decimal(amount), currency) == minor


def test_minor_units_reject_extra_decimals() -> None:
    with pytest.raises(InvalidPaymentRequest):
        to_minor_units(Decimal("4.995"), "EUR")
    with pytest.raises(InvalidPaymentRequest):
        to_minor_units(Decimal("1.5"), "JPY")


async def test_requested_3ds_requires_action_for_any_card() -> None:
    sandbox = SandboxProvider()
    for index, method in enumerate(("pm_card_visa", "pm_card_chargeDeclined")):
        challenged = dataclasses.replace(request(method), request_three_d_secure=True)
        intent = await sandbox.create_intent(challenged, f"k:intent:{index}")
        authorized = await sandbox.authorize(intent.id, f"k:authorize:{index}")
        assert authorized.status == REQUIRES_ACTION, method


async def test_payment_method_details_per_card() -> None:
    sandbox = SandboxProvider()
    visa = await sandbox.payment_method_details("pm_card_visa")
    again = await sandbox.payment_method_details("pm_card_visa")
    german = await sandbox.payment_method_details("pm_card_de")

    assert visa.fingerprint == again.fingerprint
    assert visa.fingerprint != german.fingerprint
    assert visa.country == "US"
    assert german.country == "DE"
    with pytest.raises(UnknownPaymentMethod):
        await sandbox.payment_method_details("pm_nonsense")


async def test_payment_method_details_take_faults() -> None:
    sandbox = SandboxProvider()
    sandbox.faults.add("payment_method", "error")

    with pytest.raises(ProviderUnavailable):
        await sandbox.payment_method_details("pm_card_visa")
    assert (await sandbox.payment_method_details("pm_card_visa")).country == "US"
