"""Stripe's PaymentIntents API with manual capture, over httpx.

An intent is created with ``capture_method=manual`` and confirmed
server-side, which authorizes the card; it is then captured, or canceled to
void the authorization. Refunds go through ``POST /v1/refunds``. Every
``POST`` carries the caller's ``Idempotency-Key``; Stripe keeps the first
response per key (including a 500) and replays it, so only answers that
Stripe marks as retryable are raised as retryable.

An issuer that demands authentication (3-D Secure) leaves the intent
``requires_action``. When the provider was given a ``return_url``, confirms
send it, so Stripe's ``next_action`` is ``redirect_to_url`` and its URL
becomes the intent's ``next_action_url``; Stripe's ``payment_intent.
amount_capturable_updated`` webhook then reports the completed step.

Reads expand ``latest_charge``, whose ``amount_refunded`` and
``payment_method_details.card.capture_before`` (when the authorization
expires) the saga needs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from origin.providers.base import (
    IntentRequest,
    InvalidPaymentRequest,
    PaymentDeclined,
    PaymentIntent,
    PaymentMethodDetails,
    PaymentProviderError,
    PaymentStateError,
    ProviderTimeout,
    ProviderUnavailable,
    Refund,
    UnknownPaymentMethod,
    to_minor_units,
)
from shared.tracing import current_traceparent, inject_traceparent

API_URL = "https://api.stripe.com"
# The API version that the response shapes parsed here were written against.
# NOTE: checked only against Stripe's documented shapes under respx, never
# against Stripe's test mode, which this machine cannot reach.
API_VERSION = "2024-06-20"
EXPAND_CHARGE = {"expand[]": "latest_charge"}
# The ``param`` of a ``resource_missing`` error about the payment method: a
# PaymentIntent names its field, GET /v1/payment_methods/{id} the path's id.
PAYMENT_METHOD_PARAMS = frozenset({"payment_method", "id"})
STATE_ERROR_CODES = frozenset(
    {
        "payment_intent_unexpected_state",
        "charge_already_captured",
        "charge_already_refunded",
        "charge_expired_for_capture",
        "capture_charge_authorization_expired",
    }
)


class StripeProvider:
    name = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_url: str = API_URL,
        api_version: str = API_VERSION,
        timeout: float = 30.0,
        return_url: str | None = None,
    ) -> None:
        if not api_key:
            raise ValueError("the Stripe provider needs a secret API key (sk_...)")
        self._return_url = return_url
        self._client = httpx.AsyncClient(
            base_url=api_url,
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {api_key}",
                "Stripe-Version": api_version,
            },
            event_hooks={"request": [inject_traceparent]},
        )

    async def create_intent(
        self, request: IntentRequest, idempotency_key: str
    ) -> PaymentIntent:
        form = {
            "amount": str(to_minor_units(request.amount, request.currency)),
            "currency": request.currency.lower(),
            "payment_method": request.payment_method,
            "payment_method_types[]": "card",
            "capture_method": "manual",
            "metadata[purchase_id]": request.purchase_id,
        }
        # Stripe returns metadata in webhook events, so the trace of the
        # purchase reaches the webhook that reports on it.
        traceparent = current_traceparent()
        if traceparent:
            form["metadata[traceparent]"] = traceparent
        if request.description:
            form["description"] = request.description
        if request.request_three_d_secure:
            form["payment_method_options[card][request_three_d_secure]"] = "any"
        body = await self._post("/v1/payment_intents", form, idempotency_key)
        return parse_intent(body)

    async def authorize(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        form = dict(EXPAND_CHARGE)
        if self._return_url:
            form["return_url"] = self._return_url
        body = await self._post(
            f"/v1/payment_intents/{intent_id}/confirm", form, idempotency_key
        )
        return parse_intent(body)

    async def capture(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        body = await self._post(
            f"/v1/payment_intents/{intent_id}/capture", EXPAND_CHARGE, idempotency_key
        )
        return parse_intent(body)

    async def void(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        body = await self._post(
            f"/v1/payment_intents/{intent_id}/cancel", {}, idempotency_key
        )
        return parse_intent(body)

    async def refund(self, intent_id: str, idempotency_key: str) -> Refund:
        body = await self._post(
            "/v1/refunds", {"payment_intent": intent_id}, idempotency_key
        )
        return Refund(body["id"], body["status"], int(body["amount"]))

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        body = await self._send(
            "GET", f"/v1/payment_intents/{intent_id}", None, None, EXPAND_CHARGE
        )
        return parse_intent(body)

    async def payment_method_details(self, payment_method: str) -> PaymentMethodDetails:
        body = await self._send(
            "GET", f"/v1/payment_methods/{quote(payment_method, safe='')}", None, None
        )
        card = body.get("card") or {}
        return PaymentMethodDetails(
            payment_method=payment_method,
            fingerprint=card.get("fingerprint"),
            country=card.get("country"),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(
        self, path: str, form: dict[str, str], idempotency_key: str
    ) -> dict[str, Any]:
        return await self._send("POST", path, form, idempotency_key)

    async def _send(
        self,
        method: str,
        path: str,
        form: dict[str, str] | None,
        idempotency_key: str | None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        try:
            response = await self._client.request(
                method, path, data=form, params=params, headers=headers
            )
        except httpx.TimeoutException as exc:
            raise ProviderTimeout(f"Stripe {method} {path} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise ProviderUnavailable(f"Stripe {method} {path} failed: {exc}") from exc
        if response.is_success:
            try:
                return dict(response.json())
            except ValueError as exc:
                raise ProviderUnavailable(
                    f"Stripe {method} {path} sent a body that is not JSON"
                ) from exc
        raise stripe_error(response)


def stripe_error(response: httpx.Response) -> PaymentProviderError:
    """Map a Stripe error response to the provider error it stands for."""
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    kind = error.get("type")
    code = error.get("code")
    message = error.get("message") or f"Stripe responded {response.status_code}"
    intent = error.get("payment_intent") or {}
    should_retry = response.headers.get("Stripe-Should-Retry")

    if kind == "card_error":
        reason = error.get("decline_code") or code or "card_declined"
        return PaymentDeclined(reason, message)
    if code == "resource_missing" and error.get("param") in PAYMENT_METHOD_PARAMS:
        return UnknownPaymentMethod(message)
    if code in STATE_ERROR_CODES:
        return PaymentStateError(message, intent.get("status"))
    if kind == "idempotency_error":
        return PaymentProviderError(f"Stripe idempotency error: {message}")
    if response.status_code == 409 or response.status_code == 429:
        return ProviderUnavailable(message, retryable=should_retry != "false")
    if response.status_code >= 500:
        return ProviderUnavailable(
            f"Stripe responded {response.status_code}: {message}",
            retryable=should_retry != "false",
        )
    if kind == "invalid_request_error" and response.status_code == 400:
        return InvalidPaymentRequest(message)
    return PaymentProviderError(f"Stripe responded {response.status_code}: {message}")


def parse_intent(body: dict[str, Any]) -> PaymentIntent:
    """Build a :class:`PaymentIntent` from a Stripe PaymentIntent object."""
    charge = body.get("latest_charge")
    amount_refunded = 0
    capture_before: float | None = None
    if isinstance(charge, dict):
        amount_refunded = int(charge.get("amount_refunded") or 0)
        card = (charge.get("payment_method_details") or {}).get("card") or {}
        if card.get("capture_before") is not None:
            capture_before = float(card["capture_before"])
    last_error = body.get("last_payment_error") or {}
    return PaymentIntent(
        id=body["id"],
        status=body["status"],
        amount=int(body["amount"]),
        currency=body["currency"],
        amount_received=int(body.get("amount_received") or 0),
        amount_refunded=amount_refunded,
        capture_before=capture_before,
        cancellation_reason=body.get("cancellation_reason"),
        decline_code=last_error.get("decline_code") or last_error.get("code"),
        next_action_url=_redirect_url(body.get("next_action")),
    )


def _redirect_url(next_action: Any) -> str | None:
    """Return the URL of a ``redirect_to_url`` next action, or None."""
    if not isinstance(next_action, dict):
        return None
    if next_action.get("type") != "redirect_to_url":
        return None
    redirect = next_action.get("redirect_to_url") or {}
    url = redirect.get("url")
    return url if isinstance(url, str) and url.startswith("https://") else None
