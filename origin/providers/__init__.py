"""Payment providers behind one interface."""

from origin.providers.base import (
    PaymentDeclined,
    PaymentProvider,
    PaymentProviderError,
    UnknownPaymentMethod,
)
from origin.providers.sandbox import SandboxProvider

__all__ = [
    "PaymentDeclined",
    "PaymentProvider",
    "PaymentProviderError",
    "SandboxProvider",
    "UnknownPaymentMethod",
]
