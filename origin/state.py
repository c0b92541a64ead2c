"""The origin's long-lived objects, reachable from every request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncEngine

from origin.counters import OriginCounters
from origin.keyring import KeyRing
from origin.outbox import OutboxRelay
from origin.providers import PaymentProvider, SandboxProvider
from origin.recovery import RecoveryLoop
from origin.risk import RiskEngine
from origin.risk_signals import RequestContext
from origin.saga import PurchaseSaga
from origin.settings import OriginSettings


@dataclass
class Origin:
    settings: OriginSettings
    engine: AsyncEngine
    keys: KeyRing
    provider: PaymentProvider
    relay: OutboxRelay
    saga: PurchaseSaga
    recovery: RecoveryLoop
    # Epoch seconds; tests replace it to expire leases and authorizations.
    clock: Callable[[], float]
    # Admin tokens and the scopes each holds.
    admin_tokens: dict[str, frozenset[str]] = field(default_factory=dict)
    # The sandbox provider behind ``provider``, whose issuer pages the origin
    # serves; None with any other provider.
    sandbox: SandboxProvider | None = None
    # Set by create_app, once the master key is known.
    risk: RiskEngine = field(init=False)
    risk_context: RequestContext = field(init=False)
    counters: OriginCounters = field(default_factory=OriginCounters)
