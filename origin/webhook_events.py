"""Payment provider events, read as the provider's view of a payment intent.

Both schemes carry Stripe's event shape: ``type`` and ``data.object``, the
PaymentIntent or Charge that changed. Stripe puts the event id in ``id``;
Standard Webhooks puts it in the ``webhook-id`` header.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from origin.providers import PaymentIntent
from origin.providers.base import SUCCEEDED
from origin.providers.stripe import parse_intent

# PaymentIntent events whose object is the intent in its current state.
INTENT_EVENTS = frozenset(
    {
        "payment_intent.succeeded",
        "payment_intent.amount_capturable_updated",
        "payment_intent.canceled",
        "payment_intent.payment_failed",
    }
)
CHARGE_REFUNDED = "charge.refunded"


class InvalidEvent(ValueError):
    """Raised when an authentic body is not an event that the origin can read."""


@dataclass(frozen=True)
class ProviderEvent:
    """One provider event; ``intent`` is None for types that change no purchase."""

    event_id: str
    event_type: str
    intent: PaymentIntent | None


def parse_event(body: bytes, message_id: str | None) -> ProviderEvent:
    """Read an event from the raw body; ``message_id`` overrides the body's id."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidEvent("body is not valid JSON") from None
    if not isinstance(data, dict):
        raise InvalidEvent("body must be a JSON object")
    event_id = message_id or data.get("id")
    event_type = data.get("type")
    if not isinstance(event_id, str) or not 0 < len(event_id) <= 255:
        raise InvalidEvent("the event id must be a string of 1 to 255 characters")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 128:
        raise InvalidEvent("the event type must be a string of 1 to 128 characters")
    return ProviderEvent(event_id, event_type, _intent_of(event_type, data))


def _intent_of(event_type: str, data: dict[str, Any]) -> PaymentIntent | None:
    if event_type not in INTENT_EVENTS and event_type != CHARGE_REFUNDED:
        return None
    payload = data.get("data")
    item = payload.get("object") if isinstance(payload, dict) else None
    if not isinstance(item, dict):
        raise InvalidEvent(f"a {event_type} event needs data.object")
    try:
        if event_type == CHARGE_REFUNDED:
            return _intent_of_refunded_charge(item)
        return parse_intent(item)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEvent(f"data.object of {event_type} is invalid: {exc}") from None


def _intent_of_refunded_charge(charge: dict[str, Any]) -> PaymentIntent:
    # A refunded charge was captured, so its intent has succeeded.
    intent_id = charge["payment_intent"]
    if not isinstance(intent_id, str) or not intent_id:
        raise ValueError("payment_intent must be an intent id")
    amount = int(charge["amount"])
    return PaymentIntent(
        id=intent_id,
        status=SUCCEEDED,
        amount=amount,
        currency=str(charge["currency"]),
        amount_received=int(charge.get("amount_captured") or amount),
        amount_refunded=int(charge["amount_refunded"]),
    )
