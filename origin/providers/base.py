"""What the purchase saga needs from a payment provider.

Errors::

    PaymentProviderError        the provider failed or could not be reached
    ├── PaymentDeclined         the payment method was declined
    └── UnknownPaymentMethod    the payment method does not exist
"""

from __future__ import annotations

from decimal import Decimal
from typing import Protocol


class PaymentProviderError(Exception):
    """Raised when a provider call fails; the outcome of the call is unknown."""


class PaymentDeclined(PaymentProviderError):
    """Raised when the provider declines; ``decline_code`` is the provider's reason."""

    def __init__(self, decline_code: str, message: str) -> None:
        super().__init__(message)
        self.decline_code = decline_code


class UnknownPaymentMethod(PaymentProviderError):
    """Raised when the payment method is not one the provider knows."""

    def __init__(self, payment_method: str) -> None:
        super().__init__(f"unknown payment method {payment_method!r}")
        self.payment_method = payment_method


class PaymentProvider(Protocol):
    """Intent, authorization, capture, void and refund of one payment."""

    name: str

    async def create_intent(
        self, amount: Decimal, currency: str, payment_method: str, idempotency_key: str
    ) -> str:
        """Create a payment intent and return its id."""
        ...

    async def authorize(self, intent_id: str) -> None:
        """Authorize the intent; raise :class:`PaymentDeclined` if declined."""
        ...

    async def capture(self, intent_id: str) -> None: ...

    async def void(self, intent_id: str) -> None: ...

    async def refund(self, intent_id: str) -> None: ...
