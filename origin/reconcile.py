"""Reconciliation: compare each payment in the store with the provider's view.

For every purchase with a payment intent (running ones, and settled ones
updated within the window), the intent is read from the provider and drift
is repaired through the saga, which records each repair as a step:

* a capture, authorization or refund the store never recorded is recorded,
  and the purchase runs on from there (a recorded capture gets its grant);
* an authorization that expired at the provider voids the purchase;
* money held for a purchase that ended without an entitlement (a capture
  neither granted nor refunded, an authorization never voided) is refunded
  or released.

Purchases leased by a live runner are skipped and listed as such in the report.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from origin import purchase_records as records
from origin.providers import PaymentIntent, PaymentProvider, PaymentProviderError
from origin.providers.base import REQUIRES_CAPTURE
from origin.purchase_records import Purchase
from origin.saga import PurchaseSaga
from origin.settings import OriginSettings
from origin.store import create_engine, create_tables, purchases

logger = logging.getLogger("segmentgate.origin.reconcile")

DEFAULT_WINDOW_SECONDS = 30 * 24 * 3600.0


@dataclass
class ReconcileReport:
    checked: int = 0
    changed: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


async def run_reconciliation(
    settings: OriginSettings, window_seconds: float = DEFAULT_WINDOW_SECONDS
) -> ReconcileReport:
    """Reconcile the store that ``settings`` name, as ``segmentgate reconcile`` does.

    Entitlement events of the repairs go to the outbox, where the running
    origin's relay finds them at its next poll.
    """
    from origin.app import build_provider
    from origin.providers import ResilientProvider

    engine = create_engine(settings.database_url)
    provider = ResilientProvider(build_provider(settings), settings.provider_calls)
    saga = PurchaseSaga(engine, provider, lambda: None, policy=settings.saga)
    try:
        await create_tables(engine)
        return await reconcile(
            engine, saga, provider, now=time.time(), window_seconds=window_seconds
        )
    finally:
        await provider.aclose()
        await engine.dispose()


def format_report(report: ReconcileReport) -> str:
    return json.dumps(report.as_dict(), indent=2)


async def reconcile(
    engine: AsyncEngine,
    saga: PurchaseSaga,
    provider: PaymentProvider,
    *,
    now: float,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
) -> ReconcileReport:
    """Repair drift between the store and the provider; return what changed."""
    report = ReconcileReport()
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(purchases.c.purchase_id)
            .where(
                purchases.c.payment_intent_id.is_not(None),
                or_(
                    purchases.c.status.in_(records.RUNNING_STATUSES),
                    purchases.c.updated_at >= now - window_seconds,
                ),
            )
            .order_by(purchases.c.created_at)
        )
        purchase_ids = [row.purchase_id for row in rows]
    for purchase_id in purchase_ids:
        report.checked += 1
        await _reconcile_one(engine, saga, provider, purchase_id, now, report)
    return report


async def _reconcile_one(
    engine: AsyncEngine,
    saga: PurchaseSaga,
    provider: PaymentProvider,
    purchase_id: str,
    now: float,
    report: ReconcileReport,
) -> None:
    owner = "reconcile_" + uuid.uuid4().hex
    lease = saga.policy.lease_seconds
    async with engine.begin() as connection:
        taken = await records.acquire_lease(connection, purchase_id, owner, now, lease)
    if not taken:
        report.skipped.append({"purchase_id": purchase_id, "reason": "running"})
        return
    entry: dict[str, Any] | None = None
    try:
        entry = await _check(engine, saga, provider, purchase_id, owner, report)
    finally:
        async with engine.begin() as connection:
            await records.release_lease(connection, purchase_id, owner)
    if entry is None:
        return
    # Continue the saga from the repaired state: grant a recorded capture,
    # void an expired authorization.
    await saga.run(purchase_id)
    async with engine.connect() as connection:
        final = await records.fetch_purchase(connection, purchase_id)
    entry["status_after"] = final.status if final else None
    report.changed.append(entry)
    logger.info("reconciled %s: %s", purchase_id, entry["repair"])


async def _check(
    engine: AsyncEngine,
    saga: PurchaseSaga,
    provider: PaymentProvider,
    purchase_id: str,
    owner: str,
    report: ReconcileReport,
) -> dict[str, Any] | None:
    async with engine.connect() as connection:
        before = await records.fetch_purchase(connection, purchase_id)
    if before is None or before.payment_intent_id is None:
        return None
    try:
        intent = await provider.retrieve(before.payment_intent_id)
    except PaymentProviderError as exc:
        report.skipped.append({"purchase_id": purchase_id, "reason": f"{exc}"})
        return None
    try:
        repair = await _repair(saga, before, owner, intent)
    except PaymentProviderError as exc:
        report.skipped.append({"purchase_id": purchase_id, "reason": f"{exc}"})
        return None
    if repair is None:
        return None
    return {
        "purchase_id": purchase_id,
        "payment_intent_id": before.payment_intent_id,
        "provider_status": intent.status,
        "repair": repair,
        "status_before": before.status,
        "status_after": None,
    }


async def _repair(
    saga: PurchaseSaga, purchase: Purchase, owner: str, intent: PaymentIntent
) -> str | None:
    if purchase.status not in records.SETTLED_STATUSES or (
        purchase.status == records.GRANTED and not intent.refunded
    ):
        if await saga.apply_provider_view(purchase, owner, intent):
            return f"recorded what the provider shows: intent {intent.status}"
        return None
    if purchase.status == records.GRANTED:
        # Refunded at the provider (for example from its dashboard).
        await saga.apply_provider_view(purchase, owner, intent)
        return "recorded a refund made at the provider and revoked the grant"
    if intent.refunded and await saga.record_found(purchase, records.REFUND):
        return "recorded a refund made at the provider"
    if intent.captured and not intent.refunded:
        await saga.settle_orphan(purchase, owner, records.REFUND)
        return f"refunded a capture of a {purchase.status} purchase"
    if intent.status == REQUIRES_CAPTURE:
        await saga.settle_orphan(purchase, owner, records.VOID)
        return f"voided an authorization of a {purchase.status} purchase"
    return None
