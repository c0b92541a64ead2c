"""The Stripe provider against respx mocks of Stripe's API.

respx intercepts only requests to https://api.stripe.com, Stripe's own
server; nothing here reaches the network. Responses follow the shapes of
Stripe's API reference: the PaymentIntent object (with ``latest_charge``
expanded), the Refund object and the error object.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from opentelemetry import trace

from origin.invariants import check_invariants
from origin.providers import (
    IntentRequest,
    InvalidPaymentRequest,
    PaymentDeclined,
    PaymentProviderError,
    PaymentStateError,
    ProviderTimeout,
    ProviderUnavailable,
    ResilientProvider,
    StripeProvider,
    UnknownPaymentMethod,
)
from origin.providers.base import (
    CANCELED,
    REQUIRES_ACTION,
    REQUIRES_CAPTURE,
    SUCCEEDED,
)
from origin.providers.stripe import parse_intent
from origin.risk import RiskPolicy
from shared.tracing import configure_tracing, current_traceparent
from tests.saga_harness import (
    FAST_CALLS,
    FakeClock,
    buy,
    new_viewer,
    publish,
    refund,
    running_origin,
)

API = "https://api.stripe.com"
KEY = "sk_test_segmentgate"
CAPTURE_BEFORE = 1_800_604_800
RETURN_URL = "https://shop.example/storefront"
# The shape of the issuer page URL that Stripe's redirect_to_url names.
AUTHENTICATION_URL = "https://hooks.stripe.com/3d_secure_2/hosted?merchant=acct_1"
THREE_D_SECURE_OPTION = "payment_method_options[card][request_three_d_secure]"


def payment_intent(
    intent_id: str = "pi_3MtwBwLkdIwHu7ix28a3tqPa",
    status: str = "requires_confirmation",
    *,
    amount_received: int = 0,
    amount_refunded: int = 0,
    cancellation_reason: str | None = None,
    last_payment_error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A PaymentIntent object as Stripe returns it, with ``latest_charge`` expanded."""
    charge = None
    if status in (REQUIRES_CAPTURE, SUCCEEDED):
        charge = {
            "id": "ch_3MtwBwLkdIwHu7ix2X3lCmLe",
            "object": "charge",
            "amount": 499,
            "amount_captured": amount_received,
            "amount_refunded": amount_refunded,
            "captured": status == SUCCEEDED,
            "refunded": amount_refunded == 499,
            "currency": "eur",
            "payment_intent": intent_id,
            "payment_method_details": {
                "type": "card",
                "card": {
                    "brand": "visa",
                    "last4": "4242",
                    "capture_before": CAPTURE_BEFORE,
                },
            },
            "status": "succeeded",
        }
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": 499,
        "amount_capturable": 499 if status == REQUIRES_CAPTURE else 0,
        "amount_received": amount_received,
        "canceled_at": 1_800_000_100 if status == CANCELED else None,
        "cancellation_reason": cancellation_reason,
        "capture_method": "manual",
        "client_secret": f"{intent_id}_secret_YrKJUKribcBjcG8HVhfZluoGH",
        "confirmation_method": "automatic",
        "created": 1_800_000_000,
        "currency": "eur",
        "last_payment_error": last_payment_error,
        "latest_charge": charge,
        "livemode": False,
        "metadata": {"purchase_id": "pur_test"},
        "next_action": {"type": "use_stripe_sdk"}
        if status == REQUIRES_ACTION
        else None,
        "payment_method": "pm_1MtwBwLkdIwHu7ixl4OX0a8A",
        "payment_method_types": ["card"],
        "status": status,
    }


def stripe_error(
    status_code: int,
    error_type: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> httpx.Response:
    """An error response as Stripe sends it: ``{"error": {...}}``."""
    return httpx.Response(
        status_code,
        json={"error": {"type": error_type, "message": message, **fields}},
        headers=headers,
    )


def form(request: httpx.Request) -> dict[str, list[str]]:
    return parse_qs(request.content.decode())


@pytest.fixture
def stripe() -> StripeProvider:
    return StripeProvider(KEY, timeout=1.0)


INTENT_REQUEST = IntentRequest(Decimal("4.99"), "EUR", "pm_card_visa", "pur_test")


@respx.mock(base_url=API, assert_all_called=True)
async def test_create_intent_sends_manual_capture(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    route = respx_mock.post("/v1/payment_intents").respond(200, json=payment_intent())
    intent = await stripe.create_intent(INTENT_REQUEST, "pur_test:payment_intent:1")
    sent = route.calls.last.request
    assert sent.headers["Idempotency-Key"] == "pur_test:payment_intent:1"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Stripe-Version"]
    fields = form(sent)
    assert fields["amount"] == ["499"]
    assert fields["currency"] == ["eur"]
    assert fields["capture_method"] == ["manual"]
    assert fields["payment_method"] == ["pm_card_visa"]
    assert fields["metadata[purchase_id]"] == ["pur_test"]
    assert "confirm" not in fields
    assert intent.status == "requires_confirmation"
    assert intent.amount == 499


@respx.mock(base_url=API, assert_all_called=True)
async def test_create_intent_carries_trace(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    route = respx_mock.post("/v1/payment_intents").respond(200, json=payment_intent())
    configure_tracing("none")
    tracer = trace.get_tracer("segmentgate.test")
    with tracer.start_as_current_span("purchase"):
        expected = current_traceparent()
        await stripe.create_intent(INTENT_REQUEST, "pur_test:payment_intent:1")
    sent = route.calls.last.request

    assert expected.startswith("00-")
    assert sent.headers["traceparent"] == expected
    # Stripe returns metadata in webhook events, so the webhook joins the trace.
    assert form(sent)["metadata[traceparent]"] == [expected]


@respx.mock(base_url=API, assert_all_called=True)
async def test_confirm_authorizes_with_capture_deadline(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    route = respx_mock.post("/v1/payment_intents/pi_1/confirm").respond(
        200, json=payment_intent("pi_1", REQUIRES_CAPTURE)
    )
    intent = await stripe.authorize("pi_1", "pur_test:authorization:1")
    assert form(route.calls.last.request)["expand[]"] == ["latest_charge"]
    assert intent.status == REQUIRES_CAPTURE
    assert intent.capture_before == CAPTURE_BEFORE


@respx.mock(base_url=API)
async def test_confirm_needing_authentication(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    respx_mock.post("/v1/payment_intents/pi_1/confirm").respond(
        200, json=payment_intent("pi_1", REQUIRES_ACTION)
    )
    intent = await stripe.authorize("pi_1", "k")
    assert intent.status == REQUIRES_ACTION
    # use_stripe_sdk names no page for the viewer.
    assert intent.next_action_url is None


def redirect_action(url: str) -> dict[str, Any]:
    return {
        "type": "redirect_to_url",
        "redirect_to_url": {"url": url, "return_url": RETURN_URL},
    }


@respx.mock(base_url=API, assert_all_called=True)
async def test_confirm_sends_return_url_and_reads_redirect(
    respx_mock: respx.MockRouter,
) -> None:
    stripe = StripeProvider(KEY, timeout=1.0, return_url=RETURN_URL)
    route = respx_mock.post("/v1/payment_intents/pi_1/confirm").respond(
        200,
        json={
            **payment_intent("pi_1", REQUIRES_ACTION),
            "next_action": redirect_action(AUTHENTICATION_URL),
        },
    )
    intent = await stripe.authorize("pi_1", "k")
    assert form(route.calls.last.request)["return_url"] == [RETURN_URL]
    assert intent.status == REQUIRES_ACTION
    assert intent.next_action_url == AUTHENTICATION_URL


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "http://hooks.stripe.com/x", "", None]
)
def test_redirect_other_than_https_is_dropped(url: str | None) -> None:
    body = {**payment_intent("pi_1", REQUIRES_ACTION)}
    body["next_action"] = {"type": "redirect_to_url", "redirect_to_url": {"url": url}}
    assert parse_intent(body).next_action_url is None


@respx.mock(base_url=API)
async def test_card_error_is_a_decline(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    respx_mock.post("/v1/payment_intents/pi_1/confirm").mock(
        return_value=stripe_error(
            402,
            "card_error",
            "Your card has insufficient funds.",
            code="card_declined",
            decline_code="insufficient_funds",
            doc_url="https://stripe.com/docs/error-codes/card-declined",
            payment_intent=payment_intent("pi_1", "requires_payment_method"),
        )
    )
    with pytest.raises(PaymentDeclined) as declined:
        await stripe.authorize("pi_1", "k")
    assert declined.value.decline_code == "insufficient_funds"


@respx.mock(base_url=API)
async def test_capture_and_expired_capture(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    respx_mock.post("/v1/payment_intents/pi_1/capture").respond(
        200, json=payment_intent("pi_1", SUCCEEDED, amount_received=499)
    )
    captured = await stripe.capture("pi_1", "k")
    assert captured.captured
    respx_mock.post("/v1/payment_intents/pi_2/capture").mock(
        return_value=stripe_error(
            400,
            "invalid_request_error",
            "This PaymentIntent could not be captured because it has a status "
            "of canceled.",
            code="payment_intent_unexpected_state",
            payment_intent=payment_intent(
                "pi_2", CANCELED, cancellation_reason="automatic"
            ),
        )
    )
    with pytest.raises(PaymentStateError) as state:
        await stripe.capture("pi_2", "k2")
    assert state.value.intent_status == CANCELED


@respx.mock(base_url=API)
async def test_cancel_refund_and_retrieve(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    respx_mock.post("/v1/payment_intents/pi_1/cancel").respond(
        200,
        json=payment_intent(
            "pi_1", CANCELED, cancellation_reason="requested_by_customer"
        ),
    )
    assert (await stripe.void("pi_1", "k")).status == CANCELED
    refund_route = respx_mock.post("/v1/refunds").respond(
        200,
        json={
            "id": "re_1Nispe2eZvKYlo2Cd31jOCgZ",
            "object": "refund",
            "amount": 499,
            "charge": "ch_3MtwBwLkdIwHu7ix2X3lCmLe",
            "created": 1_800_000_200,
            "currency": "eur",
            "metadata": {},
            "payment_intent": "pi_1",
            "reason": None,
            "status": "succeeded",
        },
    )
    refund_result = await stripe.refund("pi_1", "k:refund")
    assert form(refund_route.calls.last.request)["payment_intent"] == ["pi_1"]
    assert refund_result.status == "succeeded"
    assert refund_result.amount == 499
    retrieve_route = respx_mock.get("/v1/payment_intents/pi_1").respond(
        200,
        json=payment_intent(
            "pi_1", SUCCEEDED, amount_received=499, amount_refunded=499
        ),
    )
    intent = await stripe.retrieve("pi_1")
    assert retrieve_route.calls.last.request.url.params["expand[]"] == "latest_charge"
    assert "Idempotency-Key" not in retrieve_route.calls.last.request.headers
    assert intent.refunded


@pytest.mark.parametrize(
    ("response", "error", "retryable"),
    [
        (stripe_error(500, "api_error", "Internal error"), ProviderUnavailable, True),
        (
            stripe_error(
                500,
                "api_error",
                "Internal error",
                headers={"Stripe-Should-Retry": "false"},
            ),
            ProviderUnavailable,
            False,
        ),
        (
            stripe_error(429, "invalid_request_error", "Too many requests"),
            ProviderUnavailable,
            True,
        ),
        (
            stripe_error(
                400,
                "invalid_request_error",
                "No such PaymentMethod: 'pm_nonsense'",
                code="resource_missing",
                param="payment_method",
            ),
            UnknownPaymentMethod,
            None,
        ),
        (
            stripe_error(
                400,
                "invalid_request_error",
                "Amount must be at least €0.50 eur",
                code="amount_too_small",
                param="amount",
            ),
            InvalidPaymentRequest,
            None,
        ),
        (
            stripe_error(
                400,
                "idempotency_error",
                "Keys for idempotent requests can only be used with the same "
                "parameters they were first used with.",
            ),
            PaymentProviderError,
            None,
        ),
        (
            stripe_error(401, "invalid_request_error", "Invalid API Key provided"),
            PaymentProviderError,
            None,
        ),
        (
            httpx.Response(502, text="<html>bad gateway</html>"),
            ProviderUnavailable,
            True,
        ),
    ],
)
async def test_error_mapping(
    response: httpx.Response, error: type[Exception], retryable: bool | None
) -> None:
    stripe = StripeProvider(KEY)
    with respx.mock(base_url=API) as mock:
        mock.post("/v1/payment_intents").mock(return_value=response)
        with pytest.raises(error) as raised:
            await stripe.create_intent(INTENT_REQUEST, "k")
    assert type(raised.value) is error
    if retryable is not None:
        assert raised.value.retryable is retryable  # type: ignore[attr-defined]


@respx.mock(base_url=API)
async def test_timeout_and_connection_errors(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    respx_mock.post("/v1/payment_intents/pi_1/capture").mock(
        side_effect=httpx.ReadTimeout("timed out")
    )
    with pytest.raises(ProviderTimeout):
        await stripe.capture("pi_1", "k")
    respx_mock.post("/v1/payment_intents/pi_2/capture").mock(
        side_effect=httpx.ConnectError("connection refused")
    )
    with pytest.raises(ProviderUnavailable):
        await stripe.capture("pi_2", "k")


@respx.mock(base_url=API)
async def test_retry_after_lost_response_reuses_the_key(
    respx_mock: respx.MockRouter,
) -> None:
    route = respx_mock.post("/v1/payment_intents/pi_1/capture").mock(
        side_effect=[
            httpx.ReadTimeout("response lost"),
            stripe_error(503, "api_error", "Service unavailable"),
            httpx.Response(
                200, json=payment_intent("pi_1", SUCCEEDED, amount_received=499)
            ),
        ]
    )
    provider = ResilientProvider(StripeProvider(KEY), FAST_CALLS)
    assert (await provider.capture("pi_1", "pur_x:capture:1")).captured
    keys = {call.request.headers["Idempotency-Key"] for call in route.calls}
    assert keys == {"pur_x:capture:1"}
    assert route.call_count == 3


class FakeStripe:
    """A stateful stand-in for Stripe's PaymentIntents endpoints under respx."""

    def __init__(self, *, authentication: bool = False) -> None:
        # Whether confirming needs the viewer's 3-D Secure step first.
        self.authentication = authentication
        self.intents: dict[str, dict[str, Any]] = {}
        self.responses: dict[str, httpx.Response] = {}
        self.ids = itertools.count(1)
        self.captures = 0
        self.refunds = 0
        # Intents created with request_three_d_secure=any, and the statuses
        # that their confirmation returned.
        self.three_d_secure: dict[str, str | None] = {}

    def install(self, mock: respx.MockRouter) -> None:
        mock.post("/v1/payment_intents").mock(side_effect=self.create)
        mock.post(path__regex=r"/v1/payment_intents/(?P<id>\w+)/(?P<verb>\w+)").mock(
            side_effect=self.act
        )
        mock.post("/v1/refunds").mock(side_effect=self.refund)
        mock.get(path__regex=r"/v1/payment_intents/(?P<id>\w+)").mock(
            side_effect=self.retrieve
        )
        mock.get(path__regex=r"/v1/payment_methods/(?P<id>\w+)").mock(
            side_effect=self.payment_method
        )

    def payment_method(self, request: httpx.Request, id: str) -> httpx.Response:
        card = {"brand": "visa", "country": "US", "fingerprint": "Xt5EWLLDS7FJjR1c"}
        body = {"id": id, "object": "payment_method", "type": "card", "card": card}
        return httpx.Response(200, json=body)

    def idempotent(
        self, request: httpx.Request, act: Any, *args: Any
    ) -> httpx.Response:
        key = request.headers["Idempotency-Key"]
        if key not in self.responses:
            self.responses[key] = act(*args)
        return self.responses[key]

    def create(self, request: httpx.Request) -> httpx.Response:
        def create() -> httpx.Response:
            intent_id = f"pi_fake{next(self.ids)}"
            self.intents[intent_id] = payment_intent(intent_id)
            options = form(request).get(THREE_D_SECURE_OPTION)
            if options == ["any"]:
                self.three_d_secure[intent_id] = None
            return httpx.Response(200, json=self.intents[intent_id])

        return self.idempotent(request, create)

    def act(self, request: httpx.Request, id: str, verb: str) -> httpx.Response:
        def act() -> httpx.Response:
            status = self.intents[id]["status"]
            if verb == "confirm" and id in self.three_d_secure:
                # The issuer runs 3-D Secure, which needs the card holder.
                self.intents[id] = payment_intent(id, REQUIRES_ACTION)
                self.three_d_secure[id] = REQUIRES_ACTION
            elif verb == "confirm" and status == "requires_confirmation":
                self.intents[id] = payment_intent(id, REQUIRES_CAPTURE)
                if self.authentication:
                    self.intents[id] = {
                        **payment_intent(id, REQUIRES_ACTION),
                        "next_action": redirect_action(AUTHENTICATION_URL),
                    }
            elif verb == "capture" and status == REQUIRES_CAPTURE:
                self.captures += 1
                self.intents[id] = payment_intent(id, SUCCEEDED, amount_received=499)
            elif verb == "cancel" and status != SUCCEEDED:
                self.intents[id] = payment_intent(id, CANCELED)
            else:
                return stripe_error(
                    400,
                    "invalid_request_error",
                    f"This PaymentIntent's status is {status}.",
                    code="payment_intent_unexpected_state",
                    payment_intent=self.intents[id],
                )
            return httpx.Response(200, json=self.intents[id])

        return self.idempotent(request, act)

    def refund(self, request: httpx.Request) -> httpx.Response:
        intent_id = form(request)["payment_intent"][0]

        def refund() -> httpx.Response:
            self.refunds += 1
            self.intents[intent_id] = payment_intent(
                intent_id, SUCCEEDED, amount_received=499, amount_refunded=499
            )
            return httpx.Response(
                200,
                json={
                    "id": f"re_fake{next(self.ids)}",
                    "object": "refund",
                    "amount": 499,
                    "payment_intent": intent_id,
                    "status": "succeeded",
                },
            )

        return self.idempotent(request, refund)

    def retrieve(self, request: httpx.Request, id: str) -> httpx.Response:
        return httpx.Response(200, json=self.intents[id])


async def test_purchase_and_refund_through_stripe(tmp_path: Path) -> None:
    fake = FakeStripe()
    with respx.mock(base_url=API, assert_all_called=False) as mock:
        fake.install(mock)
        url = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
        async with running_origin(url, StripeProvider(KEY), FakeClock()) as origin:
            await publish(origin.client)
            viewer = await new_viewer(origin.client)
            bought = await buy(origin.client, viewer, key=str(uuid.uuid4()))
            assert bought.status_code == 201, bought.text
            assert bought.json()["status"] == "granted"
            assert bought.json()["provider"] == "stripe"
            refunded = await refund(origin.client, viewer, bought.json()["purchase_id"])
            assert refunded.json()["status"] == "refunded"
            async with origin.engine.connect() as connection:
                assert await check_invariants(connection) == []
    assert fake.captures == 1
    assert fake.refunds == 1


async def test_authentication_through_stripe(tmp_path: Path) -> None:
    fake = FakeStripe(authentication=True)
    clock = FakeClock()
    with respx.mock(base_url=API, assert_all_called=False) as mock:
        fake.install(mock)
        url = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
        stripe = StripeProvider(KEY, return_url=RETURN_URL)
        async with running_origin(url, stripe, clock) as origin:
            await publish(origin.client)
            viewer = await new_viewer(origin.client)
            bought = await buy(origin.client, viewer)
            assert bought.status_code == 202, bought.text
            body = bought.json()
            assert body["status"] == "requires_action"
            assert body["next_action"]["url"] == AUTHENTICATION_URL
            # The viewer completes 3-D Secure on Stripe's page; the saga's
            # next check of the waiting purchase reads the intent back.
            (intent_id,) = fake.intents
            fake.intents[intent_id] = payment_intent(intent_id, REQUIRES_CAPTURE)
            clock.advance(31)
            assert await origin.saga.recover() == [body["purchase_id"]]
            done = await origin.client.get(
                f"/v1/purchases/{body['purchase_id']}", headers=viewer
            )
            assert done.json()["status"] == "granted"
            async with origin.engine.connect() as connection:
                assert await check_invariants(connection) == []
    assert fake.captures == 1


@respx.mock(base_url=API, assert_all_called=True)
async def test_create_intent_can_request_3ds(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    route = respx_mock.post("/v1/payment_intents").respond(200, json=payment_intent())
    challenged = dataclasses.replace(INTENT_REQUEST, request_three_d_secure=True)

    await stripe.create_intent(INTENT_REQUEST, "pur_test:payment_intent:1")
    plain = form(route.calls.last.request)
    await stripe.create_intent(challenged, "pur_test:payment_intent:2")
    fields = form(route.calls.last.request)

    assert "payment_method_options[card][request_three_d_secure]" not in plain
    assert fields["payment_method_options[card][request_three_d_secure]"] == ["any"]


@respx.mock(base_url=API, assert_all_called=True)
async def test_payment_method_details_read_the_card(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    # A PaymentMethod object as GET /v1/payment_methods/{id} returns it.
    route = respx_mock.get("/v1/payment_methods/pm_1Q0PsIJvEtkwdCNYMSaVuRz6").respond(
        200,
        json={
            "id": "pm_1Q0PsIJvEtkwdCNYMSaVuRz6",
            "object": "payment_method",
            "type": "card",
            "card": {
                "brand": "visa",
                "country": "US",
                "fingerprint": "Xt5EWLLDS7FJjR1c",
                "last4": "4242",
            },
        },
    )

    details = await stripe.payment_method_details("pm_1Q0PsIJvEtkwdCNYMSaVuRz6")

    assert details.fingerprint == "Xt5EWLLDS7FJjR1c"
    assert details.country == "US"
    sent = route.calls.last.request
    assert "expand[]" not in sent.url.params
    assert "Idempotency-Key" not in sent.headers


@respx.mock(base_url=API, assert_all_called=True)
async def test_payment_method_details_of_a_missing_method(
    respx_mock: respx.MockRouter, stripe: StripeProvider
) -> None:
    respx_mock.get("/v1/payment_methods/pm_nonsense").mock(
        return_value=stripe_error(
            404,
            "invalid_request_error",
            "No such PaymentMethod: 'pm_nonsense'",
            code="resource_missing",
            param="id",
        )
    )

    with pytest.raises(UnknownPaymentMethod):
        await stripe.payment_method_details("pm_nonsense")


async def test_risk_challenge_reaches_stripe(tmp_path: Path) -> None:
    fake = FakeStripe()
    with respx.mock(base_url=API, assert_all_called=False) as mock:
        fake.install(mock)
        url = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
        async with running_origin(
            url, StripeProvider(KEY), FakeClock(), risk=RiskPolicy()
        ) as origin:
            await publish(origin.client)
            viewer = await new_viewer(origin.client)
            # The card is issued in the US; the request comes from Germany.
            bought = await origin.client.post(
                "/v1/purchases",
                json={"content_id": "film", "payment_method": "pm_card_visa"},
                headers={
                    **viewer,
                    "Idempotency-Key": str(uuid.uuid4()),
                    "CF-IPCountry": "DE",
                },
            )
    # The challenged purchase waits for the viewer's 3-D Secure step.
    assert bought.status_code == 202, bought.text
    assert bought.json()["status"] == "requires_action"
    assert list(fake.three_d_secure.values()) == [REQUIRES_ACTION]
    assert fake.captures == 0
