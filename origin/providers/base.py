"""What the purchase saga needs from a payment provider.

The interface follows Stripe's PaymentIntents API with manual capture: an
intent is created, confirmed (the card is authorized), then captured or
canceled (the authorization is voided), and a captured intent can be
refunded. Every call that changes state takes an idempotency key, so a
retry after a lost response returns the first result instead of acting
twice.

Errors::

    PaymentProviderError            the provider rejected the call
    ├── PaymentDeclined             the issuer declined the payment method
    ├── InvalidPaymentRequest       the request can never succeed as it is
    │   └── UnknownPaymentMethod    the payment method does not exist
    ├── PaymentStateError           the intent's status does not allow the call
    └── ProviderUnavailable         no answer: the call may have taken effect
        ├── ProviderTimeout         no answer within the operation's timeout
        └── CircuitOpen             not sent, because the circuit breaker is open
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

# PaymentIntent statuses, as Stripe names them.
REQUIRES_PAYMENT_METHOD = "requires_payment_method"
REQUIRES_CONFIRMATION = "requires_confirmation"
REQUIRES_ACTION = "requires_action"
PROCESSING = "processing"
REQUIRES_CAPTURE = "requires_capture"
CANCELED = "canceled"
SUCCEEDED = "succeeded"

# Provider operations; circuit breakers and timeouts are kept per operation.
OPERATIONS = (
    "create_intent",
    "authorize",
    "capture",
    "void",
    "refund",
    "retrieve",
    "payment_method",
)

# Currencies without minor units, and with three decimals, in Stripe's list
# of supported currencies (https://docs.stripe.com/currencies).
ZERO_DECIMAL_CURRENCIES = frozenset(
    "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF".split()
)
THREE_DECIMAL_CURRENCIES = frozenset("BHD JOD KWD OMR TND".split())


class PaymentProviderError(Exception):
    """Raised when the provider reports that a call failed."""


class PaymentDeclined(PaymentProviderError):
    """Raised when the issuer declines; ``decline_code`` is the provider's reason."""

    def __init__(self, decline_code: str, message: str) -> None:
        super().__init__(message)
        self.decline_code = decline_code


class InvalidPaymentRequest(PaymentProviderError):
    """Raised for a request that no retry can make succeed."""


class UnknownPaymentMethod(InvalidPaymentRequest):
    """Raised when the provider does not recognise the payment method."""

    def __init__(self, payment_method: str) -> None:
        super().__init__(f"unknown payment method {payment_method!r}")
        self.payment_method = payment_method


class PaymentStateError(PaymentProviderError):
    """Raised when the intent's status does not allow the call.

    A capture of an intent whose authorization expired, or a refund of an
    intent that is already refunded, ends here. ``intent_status`` is the
    status the provider reported, when it did.
    """

    def __init__(self, message: str, intent_status: str | None = None) -> None:
        super().__init__(message)
        self.intent_status = intent_status


class ProviderUnavailable(PaymentProviderError):
    """Raised when no usable answer arrived: the call may or may not have acted.

    ``retryable`` is False when the provider said that the same request
    will fail again (Stripe's ``Stripe-Should-Retry: false``).
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class ProviderTimeout(ProviderUnavailable):
    """Raised when a call did not finish within its operation's timeout."""


class CircuitOpen(ProviderUnavailable):
    """Raised instead of calling while the operation's circuit breaker is open."""

    def __init__(self, circuit: str, retry_after: float) -> None:
        super().__init__(
            f"circuit {circuit} is open; calls resume in {retry_after:.1f} s",
            retryable=False,
        )
        self.circuit = circuit
        self.retry_after = retry_after


@dataclass(frozen=True)
class IntentRequest:
    """A payment to create: amount in major units, e.g. ``Decimal("4.99")``."""

    amount: Decimal
    currency: str
    payment_method: str
    purchase_id: str
    description: str = ""
    # Whether the issuer must authenticate the card holder (3-D Secure)
    # whatever its own rules decide. Confirmation then returns
    # ``requires_action``.
    request_three_d_secure: bool = False


@dataclass(frozen=True)
class PaymentMethodDetails:
    """Details that the provider returns for a payment method before it is charged.

    ``fingerprint`` is the provider's identifier of the card number, the
    same for every payment method made from one card (Stripe's
    ``card.fingerprint``); ``country`` is the issuing country as ISO 3166-1
    alpha-2. Either is None when the provider does not report it.
    """

    payment_method: str
    fingerprint: str | None
    country: str | None


@dataclass(frozen=True)
class PaymentIntent:
    """The provider's view of one payment; amounts are in minor units."""

    id: str
    status: str
    amount: int
    currency: str
    amount_received: int = 0
    amount_refunded: int = 0
    # Epoch seconds after which an uncaptured authorization is void.
    capture_before: float | None = None
    cancellation_reason: str | None = None
    decline_code: str | None = None
    # While the status is requires_action: the page where the viewer
    # completes the issuer's authentication (Stripe's redirect_to_url).
    next_action_url: str | None = None

    @property
    def captured(self) -> bool:
        return self.status == SUCCEEDED and self.amount_received > 0

    @property
    def refunded(self) -> bool:
        return self.amount_refunded > 0


@dataclass(frozen=True)
class Refund:
    id: str
    status: str
    amount: int


def currency_exponent(currency: str) -> int:
    """Return how many decimals the currency's minor unit has (JPY 0, EUR 2)."""
    code = currency.upper()
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return 2


def to_minor_units(amount: Decimal, currency: str) -> int:
    """Convert ``amount`` to the currency's minor units, as Stripe's API expects.

    Raise :class:`InvalidPaymentRequest` when the amount has more decimals
    than the currency allows.
    """
    exponent = currency_exponent(currency)
    minor = amount.scaleb(exponent)
    if minor != minor.to_integral_value():
        raise InvalidPaymentRequest(
            f"{amount} {currency.upper()} has more than {exponent} decimals"
        )
    return int(minor)


def from_minor_units(minor: int, currency: str) -> Decimal:
    """Convert an amount in the currency's minor units back to a decimal."""
    return Decimal(minor).scaleb(-currency_exponent(currency))


class PaymentProvider(Protocol):
    """Intent, authorization, capture, void and refund of one payment."""

    name: str

    async def create_intent(
        self, request: IntentRequest, idempotency_key: str
    ) -> PaymentIntent:
        """Create an uncaptured payment intent with manual capture."""
        ...

    async def authorize(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        """Confirm the intent; raise :class:`PaymentDeclined` if declined.

        The returned intent is ``requires_capture`` when the card was
        authorized, or ``requires_action`` when the issuer demands
        authentication that only the viewer can complete, at the intent's
        ``next_action_url`` when the provider names one.
        """
        ...

    async def capture(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        """Capture an authorized intent in full."""
        ...

    async def void(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        """Cancel the intent, releasing an authorization that was not captured."""
        ...

    async def refund(self, intent_id: str, idempotency_key: str) -> Refund:
        """Refund a captured intent in full."""
        ...

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        """Return the provider's current view of the intent."""
        ...

    async def payment_method_details(self, payment_method: str) -> PaymentMethodDetails:
        """Return the card's fingerprint and country.

        Raise :class:`UnknownPaymentMethod` if the payment method does not exist.
        """
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
