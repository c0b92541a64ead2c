"""Payment providers behind one interface."""

from origin.providers.base import (
    CircuitOpen,
    IntentRequest,
    InvalidPaymentRequest,
    PaymentDeclined,
    PaymentIntent,
    PaymentMethodDetails,
    PaymentProvider,
    PaymentProviderError,
    PaymentStateError,
    ProviderTimeout,
    ProviderUnavailable,
    Refund,
    UnknownPaymentMethod,
)
from origin.providers.faults import SandboxFaults
from origin.providers.resilience import CallPolicy, CircuitBreaker, ResilientProvider
from origin.providers.sandbox import SandboxProvider
from origin.providers.stripe import StripeProvider

__all__ = [
    "CallPolicy",
    "CircuitBreaker",
    "CircuitOpen",
    "IntentRequest",
    "InvalidPaymentRequest",
    "PaymentDeclined",
    "PaymentIntent",
    "PaymentMethodDetails",
    "PaymentProvider",
    "PaymentProviderError",
    "PaymentStateError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "Refund",
    "ResilientProvider",
    "SandboxFaults",
    "SandboxProvider",
    "StripeProvider",
    "UnknownPaymentMethod",
]
