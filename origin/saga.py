"""The purchase saga: payment intent, authorization, capture, grant, refund.

Each step is written to ``purchase_steps`` with its time and outcome, and
the purchase's status follows it:

    pending → authorized → captured → granted → refunded
          ↘ declined  ↘ failed (authorization voided)

The grant, the purchase's ``granted`` status and the outbox event commit in
one transaction; so do the revocation, ``refunded`` and its event. A capture
whose grant fails is refunded, so no captured payment is left without an
entitlement.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin.entitlements import set_entitlement
from origin.providers import (
    PaymentDeclined,
    PaymentProvider,
    PaymentProviderError,
    UnknownPaymentMethod,
)
from origin.store import purchase_steps, purchases
from shared import problems
from shared.problems import Problem

logger = logging.getLogger("segmentgate.origin.saga")

PENDING = "pending"
AUTHORIZED = "authorized"
CAPTURED = "captured"
GRANTED = "granted"
DECLINED = "declined"
FAILED = "failed"
REFUNDED = "refunded"


@dataclass(frozen=True)
class PurchaseRequest:
    viewer_id: str
    content_id: str
    amount: Decimal
    currency: str
    payment_method: str
    idempotency_key: str


class PurchaseSaga:
    """Run purchases and refunds step by step, recording every step."""

    def __init__(
        self,
        engine: AsyncEngine,
        provider: PaymentProvider,
        on_events: Callable[[], None],
    ) -> None:
        self._engine = engine
        self._provider = provider
        self._on_events = on_events

    async def purchase(self, request: PurchaseRequest) -> str:
        """Run a purchase to its end; return its id. Declines are outcomes."""
        purchase_id = "pur_" + uuid.uuid4().hex
        now = time.time()
        async with self._engine.begin() as connection:
            await connection.execute(
                purchases.insert().values(
                    purchase_id=purchase_id,
                    viewer_id=request.viewer_id,
                    content_id=request.content_id,
                    amount=str(request.amount),
                    currency=request.currency,
                    payment_method=request.payment_method,
                    provider=self._provider.name,
                    status=PENDING,
                    created_at=now,
                    updated_at=now,
                )
            )
        await self._run(purchase_id, request)
        return purchase_id

    async def _run(self, purchase_id: str, request: PurchaseRequest) -> None:
        try:
            intent_id = await self._provider.create_intent(
                request.amount,
                request.currency,
                request.payment_method,
                request.idempotency_key,
            )
        except UnknownPaymentMethod as exc:
            await self._step(purchase_id, "payment_intent", "failed", str(exc), FAILED)
            raise Problem(problems.UNPROCESSABLE, str(exc)) from None
        except PaymentProviderError as exc:
            await self._step(purchase_id, "payment_intent", "failed", str(exc), FAILED)
            return
        await self._step(
            purchase_id, "payment_intent", "succeeded", intent_id, PENDING, intent_id
        )

        try:
            await self._provider.authorize(intent_id)
        except PaymentDeclined as exc:
            await self._step(
                purchase_id, "authorization", "declined", exc.decline_code, DECLINED
            )
            return
        except PaymentProviderError as exc:
            await self._step(purchase_id, "authorization", "failed", str(exc), FAILED)
            return
        await self._step(purchase_id, "authorization", "succeeded", None, AUTHORIZED)

        try:
            await self._provider.capture(intent_id)
        except PaymentProviderError as exc:
            await self._step(purchase_id, "capture", "failed", str(exc), None)
            await self._void(purchase_id, intent_id)
            return
        await self._step(purchase_id, "capture", "succeeded", None, CAPTURED)

        await self._grant(purchase_id, request, intent_id)

    async def _grant(
        self, purchase_id: str, request: PurchaseRequest, intent_id: str
    ) -> None:
        try:
            async with self._engine.begin() as connection:
                await set_entitlement(
                    connection,
                    request.viewer_id,
                    request.content_id,
                    granted=True,
                    purchase_id=purchase_id,
                )
                await self._record(connection, purchase_id, "grant", "succeeded", None)
                await self._set_status(connection, purchase_id, GRANTED)
        except Exception as exc:
            # Compensation: a captured payment without an entitlement must
            # not stand, so the capture is refunded.
            logger.exception("granting purchase %s failed; refunding", purchase_id)
            await self._step(purchase_id, "grant", "failed", str(exc), None)
            await self._provider.refund(intent_id)
            await self._step(purchase_id, "refund", "succeeded", "compensation", FAILED)
            return
        self._on_events()

    async def _void(self, purchase_id: str, intent_id: str) -> None:
        try:
            await self._provider.void(intent_id)
        except PaymentProviderError as exc:
            logger.warning("voiding %s failed: %s", intent_id, exc)
            await self._step(purchase_id, "void", "failed", str(exc), FAILED)
            return
        await self._step(purchase_id, "void", "succeeded", None, FAILED)

    async def refund(self, purchase: dict[str, Any]) -> None:
        """Refund a granted purchase and revoke its entitlement."""
        purchase_id = purchase["purchase_id"]
        if purchase["status"] == REFUNDED:
            return
        if purchase["status"] != GRANTED:
            raise Problem(
                problems.CONFLICT,
                f"purchase {purchase_id} is {purchase['status']}; "
                "only granted purchases can be refunded",
            )
        try:
            await self._provider.refund(purchase["payment_intent_id"])
        except PaymentProviderError as exc:
            await self._step(purchase_id, "refund", "failed", str(exc), None)
            raise Problem(
                problems.UPSTREAM_UNAVAILABLE, f"the refund failed: {exc}"
            ) from None
        async with self._engine.begin() as connection:
            await self._record(connection, purchase_id, "refund", "succeeded", None)
            await set_entitlement(
                connection,
                purchase["viewer_id"],
                purchase["content_id"],
                granted=False,
                purchase_id=purchase_id,
            )
            await self._record(connection, purchase_id, "revoke", "succeeded", None)
            await self._set_status(connection, purchase_id, REFUNDED)
        self._on_events()

    async def _step(
        self,
        purchase_id: str,
        step: str,
        outcome: str,
        detail: str | None,
        status: str | None,
        intent_id: str | None = None,
    ) -> None:
        async with self._engine.begin() as connection:
            await self._record(connection, purchase_id, step, outcome, detail)
            if status is not None:
                await self._set_status(connection, purchase_id, status, intent_id)

    @staticmethod
    async def _record(
        connection: AsyncConnection,
        purchase_id: str,
        step: str,
        outcome: str,
        detail: str | None,
    ) -> None:
        await connection.execute(
            purchase_steps.insert().values(
                purchase_id=purchase_id,
                step=step,
                outcome=outcome,
                detail=detail,
                at=time.time(),
            )
        )

    @staticmethod
    async def _set_status(
        connection: AsyncConnection,
        purchase_id: str,
        status: str,
        intent_id: str | None = None,
    ) -> None:
        values: dict[str, Any] = {"status": status, "updated_at": time.time()}
        if intent_id is not None:
            values["payment_intent_id"] = intent_id
        await connection.execute(
            purchases.update()
            .where(purchases.c.purchase_id == purchase_id)
            .values(**values)
        )


async def load_purchase(
    connection: AsyncConnection, purchase_id: str
) -> dict[str, Any] | None:
    """Return a purchase with its steps in order, or None."""
    row = (
        await connection.execute(
            select(purchases).where(purchases.c.purchase_id == purchase_id)
        )
    ).first()
    if row is None:
        return None
    steps = (
        await connection.execute(
            select(purchase_steps)
            .where(purchase_steps.c.purchase_id == purchase_id)
            .order_by(purchase_steps.c.step_id)
        )
    ).all()
    purchase = dict(row._mapping)
    purchase["steps"] = [
        {"step": s.step, "outcome": s.outcome, "detail": s.detail, "at": s.at}
        for s in steps
    ]
    return purchase
