"""The purchase saga: payment intent, authorization, capture, grant, refund.

Every step is recorded in the store before its provider call ("started")
and after it (its outcome), and the purchase's status only moves in the
transaction that records the step behind it (see :mod:`origin.purchase_records`).
A process killed between any two steps therefore leaves a purchase that a
later run picks up where it stopped: the recovery pass at start-up and
every ``recovery_interval`` seconds, or the viewer's retry of the request.

A provider call that got no usable response may still have acted. Before it
repeats such a step, the saga reads the intent back from the provider and
records what already happened, so a lost response never leads to a second
capture or refund. Calls carry idempotency keys derived from the purchase,
the step and the attempt (``pur_…:capture:1``), stored with the step.

An authorization that requires action (3-D Secure) waits in the
``requires_action`` status until the viewer completes the issuer's step at
the intent's ``next_action_url``. The saga then reads the intent back when
the issuer's page or a webhook runs it, every ``action_poll_seconds``, and
``action_seconds`` after the wait began. An authentication still not
completed then is voided.

Capture waits until the authorization succeeded and the entitlement can
still be granted; an authorization that cannot be captured (the refund was
requested, the content is no longer for sale, the authorization expired)
is voided. A grant that keeps failing after capture is compensated with a
refund, so no captured payment stays without an entitlement.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import TypeVar

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin import purchase_records as records
from origin.entitlements import get_entitlement, set_entitlement
from origin.providers import (
    IntentRequest,
    InvalidPaymentRequest,
    PaymentDeclined,
    PaymentIntent,
    PaymentProvider,
    PaymentProviderError,
    PaymentStateError,
    ProviderUnavailable,
    Refund,
)
from origin.providers.base import (
    CANCELED,
    REQUIRES_ACTION,
    REQUIRES_CAPTURE,
    REQUIRES_PAYMENT_METHOD,
    SUCCEEDED,
)
from origin.purchase_records import Purchase
from origin.risk import link_assessment
from origin.store import ACTIVE_STATUSES, content, purchases

logger = logging.getLogger("segmentgate.origin.saga")

T = TypeVar("T")

# An action runs one step; it returns True to go on with the next step, or
# False when the purchase must wait (a retry is scheduled) or is done.
Action = Callable[[Purchase, str], Awaitable[bool]]


class PurchaseConflict(Exception):
    """Raised when the viewer already has an active purchase of the content.

    ``purchase_id`` names that purchase, or is None when it ended before it
    could be read.
    """

    def __init__(self, message: str, purchase_id: str | None) -> None:
        super().__init__(message)
        self.purchase_id = purchase_id


@dataclass(frozen=True)
class PurchaseRequest:
    viewer_id: str
    content_id: str
    amount: Decimal
    currency: str
    payment_method: str
    idempotency_key: str
    # Set when the risk engine challenges the purchase.
    request_three_d_secure: bool = False
    # The risk assessment that let the purchase through, linked to the
    # purchase in the transaction that creates it.
    assessment_id: str | None = None


@dataclass(frozen=True)
class SagaPolicy:
    """Leases and retries of saga steps; times in seconds."""

    lease_seconds: float = 30.0
    retry_base: float = 2.0
    retry_max: float = 300.0
    # Tries of the intent, authorization and grant steps before the saga
    # gives up on them and compensates; capture, void and refund retry on.
    max_attempts: int = 5
    # How long a purchase waits for the viewer's authentication with the
    # issuer, and how often the provider is asked whether it was completed.
    action_seconds: float = 900.0
    action_poll_seconds: float = 30.0


class PurchaseSaga:
    """Run purchases and refunds step by step, recording every step."""

    def __init__(
        self,
        engine: AsyncEngine,
        provider: PaymentProvider,
        on_events: Callable[[], None],
        *,
        policy: SagaPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._provider = provider
        self._on_events = on_events
        self._policy = policy or SagaPolicy()
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    # Entry points -----------------------------------------------------------

    async def start(self, request: PurchaseRequest) -> tuple[str, bool]:
        """Create the purchase and run it as far as it goes now.

        Return the purchase id and whether this call created it; a purchase
        that the same viewer's request with the same key created earlier is
        returned as it is. Raise :class:`PurchaseConflict` if another
        purchase of the content is active, and :class:`InvalidPaymentRequest`
        if the provider rejects the payment method or amount.
        """
        owner = _new_owner()
        purchase_id = "pur_" + uuid.uuid4().hex
        now = self._clock()
        try:
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
                        status=records.PENDING,
                        idempotency_key=request.idempotency_key,
                        request_three_d_secure=request.request_three_d_secure,
                        lease_owner=owner,
                        lease_expires_at=now + self._policy.lease_seconds,
                        attempts=0,
                        created_at=now,
                        updated_at=now,
                    )
                )
                if request.assessment_id is not None:
                    await link_assessment(
                        connection, request.assessment_id, purchase_id
                    )
        except IntegrityError:
            async with self._engine.connect() as connection:
                existing = await records.find_purchase_by_request(
                    connection, request.viewer_id, request.idempotency_key
                )
                active = await _active_purchase_id(connection, request)
            if existing is not None:
                if request.assessment_id is not None:
                    async with self._engine.begin() as connection:
                        await link_assessment(
                            connection, request.assessment_id, existing.purchase_id
                        )
                return existing.purchase_id, False
            raise PurchaseConflict(
                f"a purchase of '{request.content_id}' is already running or granted",
                active,
            ) from None
        await self._shielded(self._drive(purchase_id, owner))
        return purchase_id, True

    async def request_refund(self, purchase_id: str) -> bool:
        """Record the viewer's refund request and run it as far as it goes now.

        Return False if the purchase is declined, failed or canceled, so
        there is nothing to refund. A refund requested while the purchase
        is still running ends it: an authorization is voided, a capture is
        refunded instead of granted.
        """
        now = self._clock()
        async with self._engine.begin() as connection:
            updated = await connection.execute(
                purchases.update()
                .where(
                    purchases.c.purchase_id == purchase_id,
                    purchases.c.refund_requested_at.is_(None),
                    purchases.c.status.in_(records.REFUNDABLE_STATUSES),
                )
                .values(refund_requested_at=now, updated_at=now, next_attempt_at=None)
            )
            purchase = await records.fetch_purchase(connection, purchase_id)
        if purchase is None:
            return False
        if updated.rowcount == 0 and purchase.refund_requested_at is None:
            return purchase.status == records.REFUNDED
        await self._shielded(self.run(purchase_id))
        return True

    async def run(self, purchase_id: str) -> bool:
        """Run the purchase's remaining steps unless another runner holds it.

        Return whether this call took the lease.
        """
        owner = _new_owner()
        async with self._engine.begin() as connection:
            taken = await records.acquire_lease(
                connection,
                purchase_id,
                owner,
                self._clock(),
                self._policy.lease_seconds,
            )
        if taken:
            await self._drive(purchase_id, owner)
        return taken

    async def resume(self, purchase_id: str) -> None:
        """Run the purchase's remaining steps now, unless another runner holds it.

        The run goes on in its own task if the request that calls this is
        canceled, as a purchase or refund request's does.
        """
        await self._shielded(self.run(purchase_id))

    async def recover(self, limit: int = 100) -> list[str]:
        """Resume purchases whose runner stopped or whose retry is due.

        Return the ids of the purchases that this pass ran. Each purchase is
        claimed on its own, so origin replicas recovering at the same time
        share the work and never run one purchase twice.
        """
        resumed: list[str] = []
        while len(resumed) < limit:
            owner = _new_owner()
            async with self._engine.begin() as connection:
                purchase_id = await records.claim_due_purchase(
                    connection,
                    owner,
                    self._clock(),
                    self._policy.lease_seconds,
                    passed=resumed,
                )
            if purchase_id is None:
                break
            resumed.append(purchase_id)
            with contextlib.suppress(InvalidPaymentRequest):
                await self._drive(purchase_id, owner)
        if resumed:
            logger.info("recovery resumed %d purchases: %s", len(resumed), resumed)
        return resumed

    @property
    def policy(self) -> SagaPolicy:
        return self._policy

    async def record_found(self, purchase: Purchase, step: str) -> bool:
        """Record ``step`` as done at the provider unless it already succeeded.

        Return whether a step was recorded.
        """
        async with self._engine.begin() as connection:
            last = await records.latest_step(connection, purchase.purchase_id, step)
            if last is not None and last.outcome == records.SUCCEEDED:
                return False
            await records.insert_step(
                connection,
                purchase.purchase_id,
                step,
                records.SUCCEEDED,
                "found at the provider",
                at=self._clock(),
            )
        return True

    async def settle_orphan(self, purchase: Purchase, owner: str, step: str) -> None:
        """Refund the capture, or void the authorization, of a settled purchase.

        Reconciliation calls this for money that the provider still holds
        although the purchase ended without an entitlement; the purchase
        keeps its status and gains the step.
        """
        intent_id = _intent_id(purchase)
        if step == records.REFUND:
            await self.record_found(purchase, records.CAPTURE)
        key = await self._next_key(purchase, step)
        step_id = await self._begin(purchase, step, key)
        try:
            if step == records.REFUND:
                await self._provider.refund(intent_id, key)
            else:
                await self._provider.void(intent_id, key)
        except PaymentProviderError as exc:
            async with self._engine.begin() as connection:
                await records.finish_step(
                    connection, step_id, records.UNKNOWN, str(exc), self._clock()
                )
            raise
        async with self._engine.begin() as connection:
            await records.finish_step(
                connection,
                step_id,
                records.SUCCEEDED,
                "money held after the purchase ended",
                self._clock(),
            )

    async def wait_idle(self) -> None:
        """Wait for runs that outlived the requests that started them."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # The run loop -----------------------------------------------------------

    async def _shielded(self, work: Awaitable[object]) -> None:
        # A viewer who disconnects cancels the request, not the purchase:
        # the run goes on in its own task and finishes its step.
        task: asyncio.Task[None] = asyncio.ensure_future(work)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        await asyncio.shield(task)

    async def _drive(self, purchase_id: str, owner: str) -> None:
        heartbeat = asyncio.create_task(self._heartbeat(purchase_id, owner))
        try:
            while True:
                async with self._engine.connect() as connection:
                    purchase = await records.fetch_purchase(connection, purchase_id)
                if purchase is None or purchase.lease_owner != owner:
                    return
                action = self._decide(purchase)
                if action is None or not await action(purchase, owner):
                    break
        except records.LeaseLost:
            logger.warning("purchase %s: lease passed to another runner", purchase_id)
            return
        except InvalidPaymentRequest:
            await self._release(purchase_id, owner)
            raise
        except Exception:
            logger.exception("purchase %s: step failed unexpectedly", purchase_id)
            await self._defer_after_error(purchase_id, owner)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        purchase = await self._release(purchase_id, owner)
        # A refund requested after the last decision found the lease taken;
        # run again so that it does not wait for the recovery pass.
        if purchase is not None and self._due(purchase):
            await self.run(purchase_id)

    def _due(self, purchase: Purchase) -> bool:
        if not purchase.has_work or purchase.leased(self._clock()):
            return False
        return purchase.next_attempt_at is None or (
            purchase.next_attempt_at <= self._clock()
        )

    def _decide(self, purchase: Purchase) -> Action | None:
        """Return the next step for ``purchase``, or None if it must not move."""
        refund_requested = purchase.refund_requested_at is not None
        status = purchase.status
        if status == records.PENDING:
            if refund_requested and purchase.payment_intent_id is None:
                return self._cancel_unpaid
            if refund_requested:
                return self._to_voiding(records.CANCELED)
            if purchase.payment_intent_id is None:
                return self._create_intent
            return self._authorize
        if status == records.REQUIRES_ACTION:
            if refund_requested:
                return self._to_voiding(records.CANCELED)
            return self._await_authentication
        if status == records.AUTHORIZED:
            if refund_requested:
                return self._to_voiding(records.CANCELED)
            expires_at = purchase.authorization_expires_at
            if expires_at is not None and self._clock() >= expires_at:
                return self._expire
            return self._capture
        if status in (records.CAPTURED, records.GRANTED) and refund_requested:
            return self._to_refunding(records.REFUNDED)
        if status == records.CAPTURED:
            return self._grant
        if status == records.VOIDING:
            return self._void
        if status == records.REFUNDING:
            return self._refund
        return None

    # Steps ------------------------------------------------------------------

    async def _create_intent(self, purchase: Purchase, owner: str) -> bool:
        request = IntentRequest(
            amount=Decimal(purchase.amount),
            currency=purchase.currency,
            payment_method=purchase.payment_method,
            purchase_id=purchase.purchase_id,
            description=f"segmentgate: {purchase.content_id}",
            request_three_d_secure=purchase.request_three_d_secure,
        )
        # No intent id is known yet, so nothing can be read back: an
        # unanswered creation is repeated with its own key, which makes the
        # provider return the intent that it may have created.
        opened = await self._open_step(
            purchase, records.PAYMENT_INTENT, repeat_unresolved=True
        )
        assert opened is not None  # an unresolved try is repeated, not returned
        step_id, key = opened
        try:
            intent = await self._provider.create_intent(request, key)
        except InvalidPaymentRequest as exc:
            await self._fail(purchase, owner, step_id, str(exc))
            raise
        except ProviderUnavailable as exc:
            return await self._unanswered(purchase, owner, step_id, exc)
        except PaymentProviderError as exc:
            await self._fail(purchase, owner, step_id, str(exc))
            return False
        now = self._clock()
        async with self._engine.begin() as connection:
            await records.finish_step(
                connection, step_id, records.SUCCEEDED, intent.id, now
            )
            await records.move(
                connection,
                purchase,
                owner,
                records.PENDING,
                now,
                payment_intent_id=intent.id,
            )
        return True

    async def _authorize(self, purchase: Purchase, owner: str) -> bool:
        intent_id = _intent_id(purchase)
        return await self._provider_step(
            purchase,
            owner,
            records.AUTHORIZATION,
            lambda key: self._provider.authorize(intent_id, key),
            self._authorized,
        )

    async def _authorized(
        self, purchase: Purchase, owner: str, step_id: int, intent: PaymentIntent
    ) -> bool:
        if intent.status == REQUIRES_ACTION:
            # Only the viewer can complete the issuer's step (3-D Secure), so
            # the purchase waits for it instead of being run further.
            await self._finish_and_move(
                purchase,
                owner,
                step_id,
                records.ACTION_REQUIRED,
                "the issuer requires authentication",
                records.REQUIRES_ACTION,
                **self._waiting(intent, self._clock()),
            )
            return False
        if intent.status != REQUIRES_CAPTURE:
            await self._observe_after(purchase, owner, step_id, intent)
            return True
        await self._finish_and_move(
            purchase,
            owner,
            step_id,
            records.SUCCEEDED,
            None,
            records.AUTHORIZED,
            authorization_expires_at=intent.capture_before,
        )
        return True

    def _waiting(self, intent: PaymentIntent, now: float) -> dict[str, object]:
        """Return the columns of a purchase that starts waiting for action."""
        expires_at = now + self._policy.action_seconds
        return {
            "next_action_url": intent.next_action_url,
            "action_expires_at": expires_at,
            "next_attempt_at": min(expires_at, now + self._policy.action_poll_seconds),
        }

    async def _await_authentication(self, purchase: Purchase, owner: str) -> bool:
        """Read the intent back; go on, wait longer, or void after the deadline.

        The intent is read before the deadline is checked, so an
        authentication completed just before it is not thrown away.
        """
        try:
            intent = await self._provider.retrieve(_intent_id(purchase))
        except ProviderUnavailable as exc:
            return await self._unanswered(
                purchase, owner, None, exc, records.AUTHENTICATION
            )
        if await self.apply_provider_view(purchase, owner, intent):
            return True
        now = self._clock()
        expires_at = purchase.action_expires_at or now
        if now >= expires_at:
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHENTICATION,
                f"the viewer did not authenticate by {_iso(expires_at)}",
                records.VOIDING,
                outcome=records.EXPIRED,
                closing_status=records.FAILED,
            )
            return True
        next_check = min(expires_at, now + self._policy.action_poll_seconds)
        async with self._engine.begin() as connection:
            await records.move(
                connection,
                purchase,
                owner,
                records.REQUIRES_ACTION,
                now,
                next_attempt_at=next_check,
            )
        return False

    async def _capture(self, purchase: Purchase, owner: str) -> bool:
        reason = await self._grant_blocker(purchase)
        if reason is not None:
            await self._record_and_move(
                purchase,
                owner,
                records.CAPTURE,
                f"not captured: {reason}",
                records.VOIDING,
                outcome=records.STEP_FAILED,
                closing_status=records.FAILED,
            )
            return True
        intent_id = _intent_id(purchase)
        return await self._provider_step(
            purchase,
            owner,
            records.CAPTURE,
            lambda key: self._provider.capture(intent_id, key),
            self._captured,
        )

    async def _captured(
        self, purchase: Purchase, owner: str, step_id: int, intent: PaymentIntent
    ) -> bool:
        if intent.status != SUCCEEDED:
            await self._observe_after(purchase, owner, step_id, intent)
            return True
        await self._finish_and_move(
            purchase, owner, step_id, records.SUCCEEDED, None, records.CAPTURED
        )
        return True

    async def _grant(self, purchase: Purchase, owner: str) -> bool:
        now = self._clock()
        try:
            async with self._engine.begin() as connection:
                # The refund check and the grant share one transaction, so a
                # refund requested now either prevents the grant or is run
                # against the granted purchase afterwards.
                updated = await connection.execute(
                    purchases.update()
                    .where(
                        purchases.c.purchase_id == purchase.purchase_id,
                        purchases.c.lease_owner == owner,
                        purchases.c.status == records.CAPTURED,
                        purchases.c.refund_requested_at.is_(None),
                    )
                    .values(
                        status=records.GRANTED,
                        updated_at=now,
                        attempts=0,
                        next_attempt_at=None,
                    )
                )
                if updated.rowcount != 1:
                    # Refund requested, or the lease is gone: decide again.
                    return True
                await set_entitlement(
                    connection,
                    purchase.viewer_id,
                    purchase.content_id,
                    granted=True,
                    purchase_id=purchase.purchase_id,
                )
                await records.insert_step(
                    connection,
                    purchase.purchase_id,
                    records.GRANT,
                    records.SUCCEEDED,
                    at=now,
                )
        except Exception as exc:  # noqa: BLE001 - a failed grant is compensated
            logger.warning("purchase %s: grant failed: %s", purchase.purchase_id, exc)
            return await self._grant_failed(purchase, owner, exc)
        self._on_events()
        return True

    async def _grant_failed(
        self, purchase: Purchase, owner: str, error: Exception
    ) -> bool:
        now = self._clock()
        attempts = purchase.attempts + 1
        async with self._engine.begin() as connection:
            await records.insert_step(
                connection,
                purchase.purchase_id,
                records.GRANT,
                records.STEP_FAILED,
                f"{type(error).__name__}: {error}",
                at=now,
            )
            if attempts >= self._policy.max_attempts:
                # Compensation: the payment was captured but the entitlement
                # cannot be granted, so the capture is refunded.
                await records.move(
                    connection,
                    purchase,
                    owner,
                    records.REFUNDING,
                    now,
                    closing_status=records.FAILED,
                )
                return True
            await self._schedule_retry(connection, purchase, owner, attempts, now)
        return False

    async def _expire(self, purchase: Purchase, owner: str) -> bool:
        expired_at = _iso(purchase.authorization_expires_at or self._clock())
        await self._record_and_move(
            purchase,
            owner,
            records.AUTHORIZATION,
            f"the authorization expired at {expired_at}",
            records.VOIDING,
            outcome=records.EXPIRED,
            closing_status=records.FAILED,
        )
        return True

    async def _void(self, purchase: Purchase, owner: str) -> bool:
        intent_id = _intent_id(purchase)
        return await self._provider_step(
            purchase,
            owner,
            records.VOID,
            lambda key: self._provider.void(intent_id, key),
            self._voided,
        )

    async def _voided(
        self, purchase: Purchase, owner: str, step_id: int, intent: PaymentIntent
    ) -> bool:
        if intent.status != CANCELED:
            await self._observe_after(purchase, owner, step_id, intent)
            return True
        await self._finish_and_move(
            purchase,
            owner,
            step_id,
            records.SUCCEEDED,
            None,
            purchase.closing_status or records.FAILED,
        )
        return True

    async def _refund(self, purchase: Purchase, owner: str) -> bool:
        intent_id = _intent_id(purchase)
        return await self._provider_step(
            purchase,
            owner,
            records.REFUND,
            lambda key: self._provider.refund(intent_id, key),
            self._refund_answered,
        )

    async def _refund_answered(
        self, purchase: Purchase, owner: str, step_id: int, refund: Refund
    ) -> bool:
        if refund.status in ("failed", "canceled"):
            error = PaymentStateError(f"refund {refund.id} is {refund.status}")
            return await self._rejected(purchase, owner, step_id, error, records.REFUND)
        return await self._refunded(purchase, owner, step_id, refund.id)

    async def _refunded(
        self,
        purchase: Purchase,
        owner: str,
        step_id: int | None,
        detail: str | None,
    ) -> bool:
        """Record the refund, revoke the entitlement it paid for, and close."""
        now = self._clock()
        revoked = False
        async with self._engine.begin() as connection:
            if step_id is None:
                await records.insert_step(
                    connection,
                    purchase.purchase_id,
                    records.REFUND,
                    records.SUCCEEDED,
                    detail,
                    at=now,
                )
            else:
                await records.finish_step(
                    connection, step_id, records.SUCCEEDED, detail, now
                )
            entitlement = await get_entitlement(
                connection, purchase.viewer_id, purchase.content_id
            )
            if entitlement.granted and entitlement.purchase_id == purchase.purchase_id:
                await set_entitlement(
                    connection,
                    purchase.viewer_id,
                    purchase.content_id,
                    granted=False,
                    purchase_id=purchase.purchase_id,
                )
                await records.insert_step(
                    connection,
                    purchase.purchase_id,
                    records.REVOKE,
                    records.SUCCEEDED,
                    at=now,
                )
                revoked = True
            closing = purchase.closing_status or records.REFUNDED
            if purchase.status in (records.CAPTURED, records.GRANTED):
                closing = records.REFUNDED
            await records.move(connection, purchase, owner, closing, now)
        if revoked:
            self._on_events()
        return True

    async def _cancel_unpaid(self, purchase: Purchase, owner: str) -> bool:
        async with self._engine.begin() as connection:
            await records.move(
                connection, purchase, owner, records.CANCELED, self._clock()
            )
        return True

    def _to_voiding(self, closing_status: str) -> Action:
        async def to_voiding(purchase: Purchase, owner: str) -> bool:
            async with self._engine.begin() as connection:
                await records.move(
                    connection,
                    purchase,
                    owner,
                    records.VOIDING,
                    self._clock(),
                    closing_status=closing_status,
                )
            return True

        return to_voiding

    def _to_refunding(self, closing_status: str) -> Action:
        async def to_refunding(purchase: Purchase, owner: str) -> bool:
            async with self._engine.begin() as connection:
                await records.move(
                    connection,
                    purchase,
                    owner,
                    records.REFUNDING,
                    self._clock(),
                    closing_status=closing_status,
                )
            return True

        return to_refunding

    # Provider steps ---------------------------------------------------------

    async def _provider_step(
        self,
        purchase: Purchase,
        owner: str,
        step: str,
        call: Callable[[str], Awaitable[T]],
        on_success: Callable[[Purchase, str, int, T], Awaitable[bool]],
    ) -> bool:
        """Run one provider call as a recorded step.

        If the previous try of this step got no answer, the intent is read
        back first, and the call is made again only if that try left no
        trace at the provider.
        """
        opened = await self._open_step(purchase, step, repeat_unresolved=False)
        if opened is None:
            try:
                intent = await self._provider.retrieve(_intent_id(purchase))
            except ProviderUnavailable as exc:
                return await self._unanswered(purchase, owner, None, exc, step)
            if await self.apply_provider_view(purchase, owner, intent):
                return True
            key = await self._next_key(purchase, step)
            step_id = await self._begin(purchase, step, key)
        else:
            step_id, key = opened
        try:
            intent = await call(key)
        except PaymentDeclined as exc:
            if step != records.AUTHORIZATION:
                return await self._rejected(purchase, owner, step_id, exc, step)
            await self._finish_and_move(
                purchase,
                owner,
                step_id,
                records.STEP_DECLINED,
                exc.decline_code,
                records.DECLINED,
            )
            return False
        except ProviderUnavailable as exc:
            return await self._unanswered(purchase, owner, step_id, exc, step)
        except PaymentProviderError as exc:
            return await self._rejected(purchase, owner, step_id, exc, step)
        return await on_success(purchase, owner, step_id, intent)

    async def _rejected(
        self,
        purchase: Purchase,
        owner: str,
        step_id: int,
        error: PaymentProviderError,
        step: str,
    ) -> bool:
        """Record a refused call, then learn from the intent why it was refused."""
        now = self._clock()
        async with self._engine.begin() as connection:
            await records.finish_step(
                connection, step_id, records.STEP_FAILED, str(error), now
            )
        try:
            intent = await self._provider.retrieve(_intent_id(purchase))
        except PaymentProviderError as exc:
            return await self._unanswered(purchase, owner, None, exc, step)
        if await self.apply_provider_view(purchase, owner, intent):
            return True
        return await self._unanswered(purchase, owner, None, error, step)

    async def _observe_after(
        self, purchase: Purchase, owner: str, step_id: int, intent: PaymentIntent
    ) -> None:
        """Close a step whose response was an unexpected status, and act on it."""
        now = self._clock()
        async with self._engine.begin() as connection:
            await records.finish_step(
                connection,
                step_id,
                records.STEP_FAILED,
                f"the payment intent is {intent.status}",
                now,
            )
        if not await self.apply_provider_view(purchase, owner, intent):
            async with self._engine.begin() as connection:
                await self._schedule_retry(
                    connection, purchase, owner, purchase.attempts + 1, now
                )

    async def apply_provider_view(
        self, purchase: Purchase, owner: str, intent: PaymentIntent
    ) -> bool:
        """Record what the provider did that the store does not show yet.

        Return whether the purchase moved. Reconciliation uses this too.
        """
        detail = "found at the provider"
        status = purchase.status
        if status == records.PENDING:
            return await self._view_pending(purchase, owner, intent, detail)
        if status == records.REQUIRES_ACTION:
            return await self._view_waiting(purchase, owner, intent)
        if status == records.AUTHORIZED:
            if intent.status == SUCCEEDED:
                await self._record_and_move(
                    purchase, owner, records.CAPTURE, detail, records.CAPTURED
                )
                return True
            if intent.status == CANCELED:
                return await self._view_canceled(purchase, owner, intent)
            return False
        if status == records.VOIDING:
            if intent.status == CANCELED:
                await self._record_and_move(
                    purchase,
                    owner,
                    records.VOID,
                    detail,
                    purchase.closing_status or records.FAILED,
                )
                return True
            if intent.status == SUCCEEDED:
                # The capture went through before the void: refund it.
                await self._record_and_move(
                    purchase,
                    owner,
                    records.CAPTURE,
                    detail,
                    records.REFUNDING,
                    closing_status=purchase.closing_status or records.FAILED,
                )
                return True
            return False
        if status in (records.CAPTURED, records.GRANTED, records.REFUNDING):
            if intent.refunded:
                return await self._refunded(purchase, owner, None, detail)
        return False

    async def _view_pending(
        self, purchase: Purchase, owner: str, intent: PaymentIntent, detail: str
    ) -> bool:
        if intent.status == REQUIRES_CAPTURE:
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHORIZATION,
                detail,
                records.AUTHORIZED,
                authorization_expires_at=intent.capture_before,
            )
        elif intent.status == SUCCEEDED:
            await self._record_and_move(
                purchase, owner, records.AUTHORIZATION, detail, records.AUTHORIZED
            )
            purchase = await self._reload(purchase)
            await self._record_and_move(
                purchase, owner, records.CAPTURE, detail, records.CAPTURED
            )
        elif intent.status == REQUIRES_ACTION:
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHORIZATION,
                f"{detail}: the issuer requires authentication",
                records.REQUIRES_ACTION,
                outcome=records.ACTION_REQUIRED,
                **self._waiting(intent, self._clock()),
            )
        elif intent.status == REQUIRES_PAYMENT_METHOD and intent.decline_code:
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHORIZATION,
                intent.decline_code,
                records.DECLINED,
                outcome=records.STEP_DECLINED,
            )
        elif intent.status == CANCELED and intent.cancellation_reason == "automatic":
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHORIZATION,
                "the authorization expired at the provider",
                records.FAILED,
                outcome=records.EXPIRED,
            )
        elif intent.status == CANCELED:
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHORIZATION,
                "the payment intent was canceled at the provider",
                records.FAILED,
                outcome=records.STEP_FAILED,
            )
        else:
            return False
        return True

    async def _view_waiting(
        self, purchase: Purchase, owner: str, intent: PaymentIntent
    ) -> bool:
        """Record how the viewer's authentication with the issuer ended."""
        if intent.status in (REQUIRES_CAPTURE, SUCCEEDED):
            await self._authenticated(purchase, owner, intent)
            if intent.status == SUCCEEDED:
                purchase = await self._reload(purchase)
                await self._record_and_move(
                    purchase,
                    owner,
                    records.CAPTURE,
                    "found at the provider",
                    records.CAPTURED,
                )
            return True
        if intent.status == REQUIRES_PAYMENT_METHOD:
            # The issuer refused the authentication: nothing is held.
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHENTICATION,
                intent.decline_code or "the authentication failed",
                records.DECLINED,
                outcome=records.STEP_DECLINED,
            )
            return True
        if intent.status == CANCELED:
            closing = records.FAILED
            if purchase.refund_requested_at is not None:
                closing = records.CANCELED
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHENTICATION,
                "the payment intent was canceled at the provider",
                closing,
                outcome=records.STEP_FAILED,
            )
            return True
        return False

    async def _authenticated(
        self, purchase: Purchase, owner: str, intent: PaymentIntent
    ) -> None:
        now = self._clock()
        async with self._engine.begin() as connection:
            await records.insert_step(
                connection,
                purchase.purchase_id,
                records.AUTHENTICATION,
                records.SUCCEEDED,
                at=now,
            )
            await records.insert_step(
                connection,
                purchase.purchase_id,
                records.AUTHORIZATION,
                records.SUCCEEDED,
                "after the viewer's authentication",
                at=now,
            )
            await records.move(
                connection,
                purchase,
                owner,
                records.AUTHORIZED,
                now,
                authorization_expires_at=intent.capture_before,
            )

    async def _view_canceled(
        self, purchase: Purchase, owner: str, intent: PaymentIntent
    ) -> bool:
        closing = records.FAILED
        if purchase.refund_requested_at is not None:
            closing = records.CANCELED
        if intent.cancellation_reason == "automatic":
            await self._record_and_move(
                purchase,
                owner,
                records.AUTHORIZATION,
                "the authorization expired at the provider",
                closing,
                outcome=records.EXPIRED,
            )
        else:
            await self._record_and_move(
                purchase, owner, records.VOID, "found at the provider", closing
            )
        return True

    async def _grant_blocker(self, purchase: Purchase) -> str | None:
        """Return why the entitlement could not be granted, or None if it can."""
        async with self._engine.connect() as connection:
            item = (
                await connection.execute(
                    select(content.c.policy_kind).where(
                        content.c.content_id == purchase.content_id
                    )
                )
            ).first()
            entitlement = await get_entitlement(
                connection, purchase.viewer_id, purchase.content_id
            )
        if item is None:
            return f"content '{purchase.content_id}' is no longer in the catalog"
        if item.policy_kind != "purchase":
            return f"content '{purchase.content_id}' is no longer for sale"
        if entitlement.granted and entitlement.purchase_id != purchase.purchase_id:
            return "the viewer already owns the content"
        return None

    # Recording helpers ------------------------------------------------------

    async def _open_step(
        self, purchase: Purchase, step: str, *, repeat_unresolved: bool
    ) -> tuple[int, str] | None:
        """Record a new try of ``step`` as started; return its id and key.

        A try still "started" here was cut off by a stopped process: its call
        may or may not have reached the provider, so it is marked unknown
        first. When the last try is unresolved, ``repeat_unresolved`` makes
        the new try reuse its idempotency key, so that the provider returns
        the result of the earlier call. Otherwise nothing is recorded and
        None is returned, for the caller to read the provider first. One
        transaction does all of this.
        """
        async with self._engine.begin() as connection:
            tries = await records.step_tries(connection, purchase.purchase_id, step)
            last = tries[-1] if tries else None
            if last is not None and last.outcome == records.STARTED:
                await records.finish_step(
                    connection,
                    last.step_id,
                    records.UNKNOWN,
                    "the run stopped before the answer was recorded",
                    self._clock(),
                )
            unresolved = last is not None and last.outcome in records.UNRESOLVED
            if unresolved and not repeat_unresolved:
                return None
            if unresolved:
                assert last is not None
                key = last.idempotency_key
            else:
                key = f"{purchase.purchase_id}:{step}:{len(tries) + 1}"
            step_id = await records.insert_step(
                connection,
                purchase.purchase_id,
                step,
                records.STARTED,
                idempotency_key=key,
                at=self._clock(),
            )
        return step_id, key

    async def _next_key(self, purchase: Purchase, step: str) -> str:
        async with self._engine.connect() as connection:
            tries = await records.count_steps(connection, purchase.purchase_id, step)
        return f"{purchase.purchase_id}:{step}:{tries + 1}"

    async def _begin(self, purchase: Purchase, step: str, key: str) -> int:
        async with self._engine.begin() as connection:
            return await records.insert_step(
                connection,
                purchase.purchase_id,
                step,
                records.STARTED,
                idempotency_key=key,
                at=self._clock(),
            )

    async def _finish_and_move(
        self,
        purchase: Purchase,
        owner: str,
        step_id: int,
        outcome: str,
        detail: str | None,
        status: str,
        **values: object,
    ) -> None:
        now = self._clock()
        async with self._engine.begin() as connection:
            await records.finish_step(connection, step_id, outcome, detail, now)
            await records.move(connection, purchase, owner, status, now, **values)

    async def _record_and_move(
        self,
        purchase: Purchase,
        owner: str,
        step: str,
        detail: str | None,
        status: str,
        *,
        outcome: str = records.SUCCEEDED,
        **values: object,
    ) -> None:
        now = self._clock()
        async with self._engine.begin() as connection:
            await records.insert_step(
                connection, purchase.purchase_id, step, outcome, detail, at=now
            )
            await records.move(connection, purchase, owner, status, now, **values)

    async def _fail(
        self, purchase: Purchase, owner: str, step_id: int, detail: str
    ) -> None:
        await self._finish_and_move(
            purchase, owner, step_id, records.STEP_FAILED, detail, records.FAILED
        )

    async def _unanswered(
        self,
        purchase: Purchase,
        owner: str,
        step_id: int | None,
        error: PaymentProviderError,
        step: str = records.PAYMENT_INTENT,
    ) -> bool:
        """Record a call without a usable answer and schedule the next try."""
        now = self._clock()
        attempts = purchase.attempts + 1
        logger.warning(
            "purchase %s: %s got no response (try %d): %s",
            purchase.purchase_id,
            step,
            attempts,
            error,
        )
        async with self._engine.begin() as connection:
            if step_id is not None:
                # A provider that reports the same request will fail again has
                # burnt the key; "failed" makes the next try use a new one.
                retryable = getattr(error, "retryable", True)
                outcome = records.UNKNOWN if retryable else records.STEP_FAILED
                await records.finish_step(connection, step_id, outcome, str(error), now)
            if attempts >= self._policy.max_attempts:
                if step == records.PAYMENT_INTENT:
                    await records.move(connection, purchase, owner, records.FAILED, now)
                    return False
                if step == records.AUTHORIZATION:
                    await records.move(
                        connection,
                        purchase,
                        owner,
                        records.VOIDING,
                        now,
                        closing_status=records.FAILED,
                        attempts=attempts,
                        next_attempt_at=now + self._backoff(attempts),
                    )
                    return False
            await self._schedule_retry(connection, purchase, owner, attempts, now)
        return False

    async def _schedule_retry(
        self,
        connection: AsyncConnection,
        purchase: Purchase,
        owner: str,
        attempts: int,
        now: float,
    ) -> None:
        await records.move(
            connection,
            purchase,
            owner,
            purchase.status,
            now,
            attempts=attempts,
            next_attempt_at=now + self._backoff(attempts),
        )

    def _backoff(self, attempts: int) -> float:
        ceiling = min(
            self._policy.retry_max, self._policy.retry_base * 2 ** (attempts - 1)
        )
        return ceiling * (0.5 + random.random() / 2)  # noqa: S311 - jitter only

    async def _defer_after_error(self, purchase_id: str, owner: str) -> None:
        with contextlib.suppress(Exception):
            async with self._engine.begin() as connection:
                purchase = await records.fetch_purchase(connection, purchase_id)
                if purchase is not None and purchase.lease_owner == owner:
                    now = self._clock()
                    await self._schedule_retry(
                        connection, purchase, owner, purchase.attempts + 1, now
                    )

    async def _reload(self, purchase: Purchase) -> Purchase:
        async with self._engine.connect() as connection:
            reloaded = await records.fetch_purchase(connection, purchase.purchase_id)
        if reloaded is None:
            raise records.LeaseLost(purchase.purchase_id)
        return reloaded

    async def _release(self, purchase_id: str, owner: str) -> Purchase | None:
        """Give up the lease and return the purchase as it is now."""
        async with self._engine.begin() as connection:
            await records.release_lease(connection, purchase_id, owner)
            return await records.fetch_purchase(connection, purchase_id)

    async def _heartbeat(self, purchase_id: str, owner: str) -> None:
        interval = self._policy.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self._engine.begin() as connection:
                    renewed = await records.renew_lease(
                        connection,
                        purchase_id,
                        owner,
                        self._clock() + self._policy.lease_seconds,
                    )
            except Exception as exc:  # noqa: BLE001 - the next beat tries again
                logger.warning("renewing lease of %s failed: %s", purchase_id, exc)
                continue
            if not renewed:
                return


async def _active_purchase_id(
    connection: AsyncConnection, request: PurchaseRequest
) -> str | None:
    return (
        await connection.execute(
            select(purchases.c.purchase_id).where(
                purchases.c.viewer_id == request.viewer_id,
                purchases.c.content_id == request.content_id,
                purchases.c.status.in_(ACTIVE_STATUSES),
            )
        )
    ).scalar()


def _new_owner() -> str:
    return "run_" + uuid.uuid4().hex


def _intent_id(purchase: Purchase) -> str:
    if purchase.payment_intent_id is None:
        raise PaymentStateError(f"purchase {purchase.purchase_id} has no intent")
    return purchase.payment_intent_id


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
