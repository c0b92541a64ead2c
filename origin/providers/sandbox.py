"""A built-in payment provider for development, demos and tests.

Payment methods are named like the test tokens that payment providers
publish: ``pm_card_visa`` and ``pm_card_mastercard`` succeed,
``pm_card_chargeDeclined`` is declined at authorization, and
``pm_card_chargeDeclinedInsufficientFunds`` is declined for lack of funds.
State lives in memory, as it would on the provider's side.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import Decimal

from origin.providers.base import (
    PaymentDeclined,
    PaymentProviderError,
    UnknownPaymentMethod,
)

APPROVED = frozenset({"pm_card_visa", "pm_card_mastercard", "pm_card_amex"})
DECLINED = {
    "pm_card_chargeDeclined": "generic_decline",
    "pm_card_chargeDeclinedInsufficientFunds": "insufficient_funds",
    "pm_card_chargeDeclinedExpiredCard": "expired_card",
}


@dataclass
class _Intent:
    amount: Decimal
    currency: str
    payment_method: str
    status: str = "requires_authorization"


class SandboxProvider:
    name = "sandbox"

    def __init__(self) -> None:
        self._intents: dict[str, _Intent] = {}
        self._by_idempotency_key: dict[str, str] = {}

    async def create_intent(
        self, amount: Decimal, currency: str, payment_method: str, idempotency_key: str
    ) -> str:
        if payment_method not in APPROVED and payment_method not in DECLINED:
            raise UnknownPaymentMethod(payment_method)
        existing = self._by_idempotency_key.get(idempotency_key)
        if existing is not None:
            return existing
        intent_id = "pi_sandbox_" + secrets.token_hex(12)
        self._intents[intent_id] = _Intent(amount, currency, payment_method)
        self._by_idempotency_key[idempotency_key] = intent_id
        return intent_id

    def _intent(self, intent_id: str, *expected: str) -> _Intent:
        intent = self._intents.get(intent_id)
        if intent is None:
            raise PaymentProviderError(f"no payment intent {intent_id}")
        if intent.status not in expected:
            raise PaymentProviderError(
                f"payment intent {intent_id} is {intent.status}, "
                f"expected {' or '.join(expected)}"
            )
        return intent

    async def authorize(self, intent_id: str) -> None:
        intent = self._intent(intent_id, "requires_authorization", "authorized")
        decline_code = DECLINED.get(intent.payment_method)
        if decline_code is not None:
            intent.status = "declined"
            raise PaymentDeclined(decline_code, "the card was declined")
        intent.status = "authorized"

    async def capture(self, intent_id: str) -> None:
        self._intent(intent_id, "authorized", "captured").status = "captured"

    async def void(self, intent_id: str) -> None:
        self._intent(intent_id, "authorized", "voided").status = "voided"

    async def refund(self, intent_id: str) -> None:
        self._intent(intent_id, "captured", "refunded").status = "refunded"

    def status(self, intent_id: str) -> str:
        """Return the intent's status, for tests that check the provider's side."""
        return self._intents[intent_id].status
