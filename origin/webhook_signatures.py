"""Signature checks of inbound webhooks, over the raw body bytes.

Two schemes are supported:

* Stripe's ``Stripe-Signature: t=<unix time>,v1=<hex>[,v1=<hex>...]``, where
  each ``v1`` is HMAC-SHA256 of ``"{t}.{body}"`` keyed with the endpoint
  secret (the whole ``whsec_...`` string, as Stripe's libraries use it).
* Standard Webhooks (https://www.standardwebhooks.com): ``webhook-id``,
  ``webhook-timestamp`` and ``webhook-signature``, a space-separated list of
  ``v1,<base64 HMAC-SHA256>`` and ``v1a,<base64 Ed25519>`` signatures of
  ``"{id}.{timestamp}.{body}"``. HMAC secrets are ``whsec_<base64>`` and
  Ed25519 public keys ``whpk_<base64>``.

Every configured secret is tried against every signature in the header, so
old and new secrets both verify while a secret is rotated.

Errors::

    WebhookSignatureError         the delivery is not authentic
    ├── SignatureMissing          no signature or timestamp header
    ├── SignatureInvalid          no signature matches any secret
    └── TimestampOutOfTolerance   signed too long ago or in the future
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

STRIPE = "stripe"
STANDARD = "standard"
DEFAULT_TOLERANCE_SECONDS = 300.0


class WebhookSignatureError(Exception):
    """Raised when a delivery cannot be shown to come from the provider."""


class SignatureMissing(WebhookSignatureError):
    """Raised when the signature or timestamp headers are absent."""


class SignatureInvalid(WebhookSignatureError):
    """Raised when no signature in the header matches a configured secret."""


class TimestampOutOfTolerance(WebhookSignatureError):
    """Raised when the signed timestamp is outside the tolerance window."""


@dataclass(frozen=True)
class VerifiedDelivery:
    """An authentic delivery: the provider's event id (Standard Webhooks
    carries it in ``webhook-id``; Stripe only in the body) and its timestamp."""

    message_id: str | None
    timestamp: int


def verify(
    scheme: str,
    secrets: Sequence[str],
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
) -> VerifiedDelivery:
    """Check ``body`` and ``headers`` against ``secrets``; raise if not authentic."""
    if scheme == STRIPE:
        return _verify_stripe(secrets, body, headers, now, tolerance)
    return _verify_standard(secrets, body, headers, now, tolerance)


def _check_timestamp(text: str, now: float, tolerance: float) -> int:
    try:
        timestamp = int(text)
    except ValueError:
        raise SignatureInvalid(f"timestamp {text[:32]!r} is not an integer") from None
    if abs(now - timestamp) > tolerance:
        raise TimestampOutOfTolerance(
            f"timestamp {timestamp} is more than {tolerance:.0f} s from now"
        )
    return timestamp


def _verify_stripe(
    secrets: Sequence[str],
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: float,
) -> VerifiedDelivery:
    header = headers.get("stripe-signature", "")
    timestamp_text = ""
    signatures: list[str] = []
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name == "t":
            timestamp_text = value
        elif name == "v1":
            signatures.append(value)
    if not timestamp_text or not signatures:
        raise SignatureMissing("Stripe-Signature needs t= and at least one v1=")
    timestamp = _check_timestamp(timestamp_text, now, tolerance)
    signed = timestamp_text.encode() + b"." + body
    for secret in secrets:
        expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
        for signature in signatures:
            if hmac.compare_digest(expected.encode(), signature.encode()):
                return VerifiedDelivery(None, timestamp)
    raise SignatureInvalid("no v1 signature matches a configured secret")


def _verify_standard(
    secrets: Sequence[str],
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    tolerance: float,
) -> VerifiedDelivery:
    message_id = headers.get("webhook-id", "")
    timestamp_text = headers.get("webhook-timestamp", "")
    signature_header = headers.get("webhook-signature", "")
    if not (message_id and timestamp_text and signature_header):
        raise SignatureMissing(
            "webhook-id, webhook-timestamp and webhook-signature are required"
        )
    timestamp = _check_timestamp(timestamp_text, now, tolerance)
    signed = f"{message_id}.{timestamp_text}.".encode() + body
    for item in signature_header.split(" "):
        version, _, encoded = item.partition(",")
        try:
            signature = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        for secret in secrets:
            if _matches(version, secret, signed, signature):
                return VerifiedDelivery(message_id, timestamp)
    raise SignatureInvalid("no signature matches a configured secret")


def _matches(version: str, secret: str, signed: bytes, signature: bytes) -> bool:
    if version == "v1" and secret.startswith("whsec_"):
        key = _decode_key(secret.removeprefix("whsec_"))
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        return hmac.compare_digest(expected, signature)
    if version == "v1a" and secret.startswith("whpk_"):
        public_key = Ed25519PublicKey.from_public_bytes(
            _decode_key(secret.removeprefix("whpk_"))
        )
        try:
            public_key.verify(signature, signed)
        except InvalidSignature:
            return False
        return True
    return False


def _decode_key(encoded: str) -> bytes:
    # Secrets are sometimes published without base64 padding.
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)


def check_secret(scheme: str, secret: str) -> None:
    """Raise ValueError if ``secret`` cannot verify deliveries of ``scheme``."""
    if scheme == STRIPE:
        if not secret:
            raise ValueError("a Stripe webhook secret must not be empty")
        return
    prefix, _, encoded = secret.partition("_")
    if prefix not in ("whsec", "whpk") or not encoded:
        raise ValueError(
            "a Standard Webhooks secret must be whsec_<base64> (HMAC) or "
            "whpk_<base64> (Ed25519 public key)"
        )
    try:
        key = _decode_key(encoded)
    except binascii.Error:
        raise ValueError(f"the {prefix}_ secret is not valid base64") from None
    if prefix == "whpk" and len(key) != 32:
        raise ValueError("a whpk_ Ed25519 public key must be 32 bytes")
