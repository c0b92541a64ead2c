"""The origin's long-lived objects, reachable from every request."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from origin.keyring import KeyRing
from origin.outbox import OutboxRelay
from origin.providers import PaymentProvider
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
