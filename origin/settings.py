"""Origin configuration, from keyword arguments or ``SEGMENTGATE_*`` variables."""

from __future__ import annotations

import logging
import math
import os
import secrets
from dataclasses import dataclass, field

from cryptography.fernet import Fernet

from origin.providers.resilience import CallPolicy
from origin.risk import RiskPolicy
from origin.saga import SagaPolicy
from shared.tokens import MAX_TOKEN_LIFETIME, SESSION_RENEWAL

logger = logging.getLogger("segmentgate.origin")


@dataclass
class OriginSettings:
    """Everything the origin needs to know.

    ``edge_public_url`` is where players reach the edge, used in the playlist
    URLs handed out; ``edge_urls`` are the edges that receive pushed events.
    ``payment_provider`` is ``sandbox`` or ``stripe``; the sandbox keeps its
    state in ``sandbox_state_path`` when set, and injects the faults of
    ``sandbox_faults`` (see :mod:`origin.providers.faults`).
    ``recovery_interval`` is the seconds between passes that resume
    unfinished purchases; 0 runs only the pass at start-up.
    """

    database_url: str = "sqlite+aiosqlite:///segmentgate.db"
    admin_token: str = ""
    edge_public_url: str = "http://127.0.0.1:8000"
    edge_urls: tuple[str, ...] = ()
    # Edges send this bearer token to read the event feed; empty leaves the
    # feed open to anyone who can reach the origin.
    edge_token: str = ""
    signing_algorithm: str = "EdDSA"
    # A Fernet key (urlsafe base64 of 32 bytes) that encrypts private keys
    # at rest. Empty with a SQLite file: a key file beside the database.
    master_key: str = ""
    # A new key is published this long before it signs; it must exceed the
    # edges' key refresh interval (30 s by default).
    key_publish_seconds: float = 60.0
    key_tick_interval: float = 1.0
    # Scoped admin tokens, "scope:token" pairs separated by commas; scopes
    # are catalog, keys, events and risk. admin_token has every scope.
    admin_tokens: str = ""
    playback_token_ttl: int = 30 * 60
    # Events must outlive every token that an edge may still honour: the
    # longest token lifetime plus the renewal window, with slack for clocks.
    event_retention_seconds: int = MAX_TOKEN_LIFETIME + SESSION_RENEWAL + 600
    relay_poll_interval: float = 1.0
    relay_timeout: float = 5.0
    # Test hook: block_before_push or block_after_push makes the relay stop
    # for good at that point, so that a test can kill the process there.
    relay_fault: str = ""
    # A NATS server with JetStream that receives every event as a second
    # destination, e.g. nats://127.0.0.1:4222; empty publishes to edges only.
    nats_url: str = ""
    nats_stream: str = "SEGMENTGATE_EVENTS"
    nats_subject_prefix: str = "segmentgate.events"
    payment_provider: str = "sandbox"
    stripe_api_key: str = ""
    stripe_api_url: str = "https://api.stripe.com"
    # Where Stripe sends the viewer back after the issuer's authentication
    # (3-D Secure), e.g. the storefront's URL. Empty leaves Stripe's
    # next_action as use_stripe_sdk, which needs Stripe.js in the page.
    stripe_return_url: str = ""
    sandbox_state_path: str = ""
    sandbox_faults: str = ""
    # Sandbox mode seeds a fresh store with the fixtures of origin/sandbox.py
    # and serves POST /v1/admin/sandbox/reset; never set it in production.
    sandbox: bool = False
    recovery_interval: float = 15.0
    # Inbound webhook secrets, "provider:secret" pairs separated by commas;
    # a provider may list several during rotation. Provider "stripe" uses
    # Stripe-Signature, any other provider the Standard Webhooks headers.
    webhook_secrets: str = ""
    webhook_tolerance_seconds: float = 300.0
    # Failed webhook processing is retried after retry_base, doubling up to
    # retry_max seconds, and moves to the dead-letter table after
    # max_attempts tries; retry_interval is the seconds between passes.
    webhook_retry_base: float = 2.0
    webhook_retry_max: float = 600.0
    webhook_max_attempts: int = 8
    webhook_retry_interval: float = 5.0
    saga: SagaPolicy = field(default_factory=SagaPolicy)
    provider_calls: CallPolicy = field(default_factory=CallPolicy)
    # The risk engine's mode and thresholds (see origin.risk).
    risk: RiskPolicy = field(default_factory=RiskPolicy)
    # Headers that a trusted proxy in front of the origin sets: the client's
    # address (empty: the connection's peer) and its country as ISO 3166-1
    # alpha-2 (empty: no country checks). Clients can forge them when no
    # proxy overwrites them.
    risk_client_ip_header: str = ""
    risk_country_header: str = "CF-IPCountry"

    def __post_init__(self) -> None:
        if not self.admin_token:
            self.admin_token = secrets.token_urlsafe(24)
            self.admin_token_generated = True
        else:
            self.admin_token_generated = False
        if not self.edge_token:
            logger.warning(
                "SEGMENTGATE_EDGE_TOKEN is not set: anyone who reaches the "
                "origin can read the event feed"
            )
        if not 0 < self.playback_token_ttl <= MAX_TOKEN_LIFETIME:
            raise ValueError(
                f"playback_token_ttl must be 1 to {MAX_TOKEN_LIFETIME} seconds, "
                "the longest lifetime edges accept"
            )
        if self.payment_provider not in ("sandbox", "stripe"):
            raise ValueError(
                f"payment_provider must be 'sandbox' or 'stripe', "
                f"not {self.payment_provider!r}"
            )
        if self.webhook_max_attempts < 1:
            raise ValueError("webhook_max_attempts must be at least 1")
        if self.recovery_interval < 0:
            raise ValueError("recovery_interval must be 0 (off) or more seconds")
        if self.event_retention_seconds < MAX_TOKEN_LIFETIME + SESSION_RENEWAL:
            raise ValueError(
                "event_retention_seconds must be at least "
                f"{MAX_TOKEN_LIFETIME + SESSION_RENEWAL} (token lifetime plus "
                "renewal), or a restarted edge could miss a revocation"
            )

    @classmethod
    def from_env(cls) -> OriginSettings:
        env = os.environ
        # A saga time of 0 makes a waiting purchase due again at once, and
        # its run then calls itself until the request fails.
        saga = SagaPolicy(
            lease_seconds=_positive_seconds(
                env, "SEGMENTGATE_SAGA_LEASE_SECONDS", SagaPolicy.lease_seconds
            ),
            action_seconds=_positive_seconds(
                env, "SEGMENTGATE_SAGA_ACTION_SECONDS", SagaPolicy.action_seconds
            ),
            action_poll_seconds=_positive_seconds(
                env,
                "SEGMENTGATE_SAGA_ACTION_POLL_SECONDS",
                SagaPolicy.action_poll_seconds,
            ),
        )
        return cls(
            payment_provider=env.get("SEGMENTGATE_PAYMENT_PROVIDER", "sandbox"),
            stripe_api_key=env.get("SEGMENTGATE_STRIPE_API_KEY", ""),
            stripe_api_url=env.get("SEGMENTGATE_STRIPE_API_URL", cls.stripe_api_url),
            stripe_return_url=env.get("SEGMENTGATE_STRIPE_RETURN_URL", ""),
            sandbox_state_path=env.get("SEGMENTGATE_SANDBOX_STATE", ""),
            sandbox_faults=env.get("SEGMENTGATE_SANDBOX_FAULTS", ""),
            sandbox=env.get("SEGMENTGATE_SANDBOX", "") == "1",
            recovery_interval=_seconds(
                env, "SEGMENTGATE_RECOVERY_INTERVAL", cls.recovery_interval
            ),
            saga=saga,
            risk=RiskPolicy.from_env(env),
            risk_client_ip_header=env.get("SEGMENTGATE_RISK_CLIENT_IP_HEADER", ""),
            risk_country_header=env.get(
                "SEGMENTGATE_RISK_COUNTRY_HEADER", cls.risk_country_header
            ),
            webhook_secrets=env.get("SEGMENTGATE_WEBHOOK_SECRETS", ""),
            relay_fault=env.get("SEGMENTGATE_RELAY_FAULT", ""),
            nats_url=env.get("SEGMENTGATE_NATS_URL", ""),
            nats_stream=env.get("SEGMENTGATE_NATS_STREAM", cls.nats_stream),
            nats_subject_prefix=env.get(
                "SEGMENTGATE_NATS_SUBJECT_PREFIX", cls.nats_subject_prefix
            ),
            webhook_tolerance_seconds=_seconds(
                env,
                "SEGMENTGATE_WEBHOOK_TOLERANCE_SECONDS",
                cls.webhook_tolerance_seconds,
            ),
            database_url=env.get("SEGMENTGATE_DATABASE_URL", cls.database_url),
            admin_token=env.get("SEGMENTGATE_ADMIN_TOKEN", ""),
            edge_token=env.get("SEGMENTGATE_EDGE_TOKEN", ""),
            master_key=_master_key_from_env(env),
            admin_tokens=env.get("SEGMENTGATE_ADMIN_TOKENS", ""),
            edge_public_url=env.get("SEGMENTGATE_EDGE_PUBLIC_URL", cls.edge_public_url),
            edge_urls=tuple(
                url.strip()
                for url in env.get("SEGMENTGATE_EDGE_URLS", "").split(",")
                if url.strip()
            ),
        )


def _seconds(env: os._Environ[str], name: str, default: float) -> float:
    text = env.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number of seconds, not {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite, non-negative number, not {text!r}")
    return value


def _positive_seconds(env: os._Environ[str], name: str, default: float) -> float:
    value = _seconds(env, name, default)
    if value == 0:
        raise ValueError(f"{name} must be more than 0 seconds")
    return value


def _master_key_from_env(env: os._Environ[str] | dict[str, str]) -> str:
    """Read ``SEGMENTGATE_MASTER_KEY``, or the file ``SEGMENTGATE_MASTER_KEY_FILE``."""
    if env.get("SEGMENTGATE_MASTER_KEY"):
        return env["SEGMENTGATE_MASTER_KEY"].strip()
    path = env.get("SEGMENTGATE_MASTER_KEY_FILE")
    if path:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    return ""


def resolve_master_key(settings: OriginSettings) -> bytes:
    """Return the master key; create a key file beside a SQLite database.

    Any other database needs ``master_key`` set, because a key file on one
    replica's disk would not reach the others.
    """
    if settings.master_key:
        return settings.master_key.encode("ascii")
    prefix = "sqlite+aiosqlite:///"
    if not settings.database_url.startswith(prefix):
        raise ValueError("set SEGMENTGATE_MASTER_KEY to encrypt signing keys")
    path = settings.database_url[len(prefix) :] + ".master-key"
    if os.path.exists(path):
        with open(path, encoding="ascii") as handle:
            return handle.read().strip().encode("ascii")
    key = Fernet.generate_key()
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key.decode("ascii"))
    logger.warning(
        "created a master key file at %s; back it up with the database", path
    )
    return key
