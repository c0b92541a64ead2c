"""Signals of a purchase request for the risk engine, as keyed hashes.

The device fingerprint is an HMAC of the user agent, the client hints and
Accept-Language together with the client's network. The network is an HMAC
of the client address's /24 (IPv4) or /64 (IPv6) prefix. The raw headers and
addresses are never stored. The key comes from the origin's master key, so
every replica computes the same fingerprints.

The client address and country are read from headers that only a trusted
proxy may set (``risk_client_ip_header``, ``risk_country_header``), or the
address from the connection when no header is configured.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
from dataclasses import dataclass

from starlette.requests import Request

from origin.providers import (
    InvalidPaymentRequest,
    PaymentProvider,
    PaymentProviderError,
)
from origin.risk import Attempt
from shared import problems
from shared.problems import Problem

logger = logging.getLogger("segmentgate.origin.risk")

# Headers that describe the browser and device, as sent by the client.
DEVICE_HEADERS = (
    "user-agent",
    "sec-ch-ua",
    "sec-ch-ua-mobile",
    "sec-ch-ua-platform",
    "sec-ch-ua-platform-version",
    "sec-ch-ua-model",
    "sec-ch-ua-full-version-list",
    "accept-language",
)


def derive_fingerprint_key(master_key: bytes) -> bytes:
    """Derive the HMAC key of fingerprints from the master key."""
    return hmac.new(master_key, b"segmentgate risk fingerprints", "sha256").digest()


@dataclass(frozen=True)
class RequestContext:
    """The fingerprint key, and the headers of the client's address and country."""

    fingerprint_key: bytes
    client_ip_header: str = ""
    country_header: str = "CF-IPCountry"

    def keyed_hash(self, kind: str, value: str) -> str:
        message = f"{kind}\x00{value}".encode()
        return hmac.new(self.fingerprint_key, message, hashlib.sha256).hexdigest()

    def network(self, request: Request) -> str:
        """Return the client's network prefix, or ``unknown``.

        Without the configured header, the request did not come through the
        proxy, so the connection's peer is the client.
        """
        address = ""
        if self.client_ip_header:
            address = request.headers.get(self.client_ip_header, "")
        if not address and request.client:
            address = request.client.host
        return network_prefix(address.split(",")[0].strip())

    def country(self, request: Request) -> str | None:
        if not self.country_header:
            return None
        value = request.headers.get(self.country_header, "").strip().upper()
        # Cloudflare sends XX when it does not know, and T1 for Tor.
        if len(value) != 2 or not value.isalpha() or value == "XX":
            return None
        return value


def network_prefix(address: str) -> str:
    """Return the /24 (IPv4) or /64 (IPv6) network of ``address``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


async def build_attempt(
    request: Request,
    context: RequestContext,
    provider: PaymentProvider,
    viewer_id: str,
    content_id: str,
    payment_method: str,
) -> Attempt:
    """Collect the signals of one purchase request.

    Raise a problem if the provider rejects the payment method. When the
    provider cannot be reached or fails otherwise, the card signals are left
    out and the purchase is assessed on the others.
    """
    network = context.network(request)
    profile = "\x00".join(request.headers.get(name, "") for name in DEVICE_HEADERS)
    card_key = card_country = None
    try:
        details = await provider.payment_method_details(payment_method)
    except InvalidPaymentRequest as exc:
        raise Problem(problems.UNPROCESSABLE, str(exc)) from None
    except PaymentProviderError as exc:
        # Unavailable or an unexpected error: the saga's own calls will
        # meet the same provider, so the purchase is not refused here.
        logger.warning(
            "card details of viewer %s unavailable for risk checks: %s",
            viewer_id,
            exc,
        )
    else:
        if details.fingerprint:
            card = f"{provider.name}:{details.fingerprint}"
            card_key = context.keyed_hash("card", card)
        card_country = details.country
    return Attempt(
        viewer_id=viewer_id,
        content_id=content_id,
        device_key=context.keyed_hash("device", f"{profile}\x00{network}"),
        network_key=context.keyed_hash("network", network),
        card_key=card_key,
        card_country=card_country,
        request_country=context.country(request),
    )
