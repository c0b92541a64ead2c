"""Consistency rules between purchases, their steps and entitlements.

For every settled purchase:

* no captured payment without a granted entitlement, or a refund;
* no granted entitlement without a captured, unrefunded payment;
* at most one capture and at most one refund;
* no refund without a capture.

Purchases that are still running may break the first two for a moment;
:func:`check_invariants` reports them as unsettled unless ``allow_running`` is set.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from origin import purchase_records as records
from origin.store import entitlements, purchase_steps, purchases


async def check_invariants(
    connection: AsyncConnection, *, allow_running: bool = False
) -> list[str]:
    """Return one line per broken rule; an empty list means consistent."""
    succeeded = Counter(
        (row.purchase_id, row.step)
        for row in await connection.execute(
            select(purchase_steps.c.purchase_id, purchase_steps.c.step).where(
                purchase_steps.c.outcome == records.SUCCEEDED
            )
        )
    )
    granted_by = {
        row.purchase_id: (row.viewer_id, row.content_id)
        for row in await connection.execute(
            select(entitlements).where(entitlements.c.granted.is_(True))
        )
    }
    problems: list[str] = []
    rows = (await connection.execute(select(purchases))).all()
    for row in rows:
        purchase_id = row.purchase_id
        captures = succeeded[(purchase_id, records.CAPTURE)]
        refunds = succeeded[(purchase_id, records.REFUND)]
        entitled = purchase_id in granted_by
        if captures > 1:
            problems.append(f"{purchase_id}: captured {captures} times")
        if refunds > 1:
            problems.append(f"{purchase_id}: refunded {refunds} times")
        if refunds and not captures:
            problems.append(f"{purchase_id}: refunded without a capture")
        running = row.status in records.RUNNING_STATUSES or (
            row.status == records.GRANTED and row.refund_requested_at is not None
        )
        if running:
            if not allow_running:
                problems.append(f"{purchase_id}: still {row.status}")
            continue
        if captures and not refunds and not entitled:
            problems.append(
                f"{purchase_id}: {row.status}, captured, but neither granted "
                "nor refunded"
            )
        if entitled and (not captures or refunds):
            problems.append(f"{purchase_id}: entitlement without a captured payment")
        if row.status == records.GRANTED and not entitled:
            problems.append(f"{purchase_id}: granted, but the entitlement is missing")
    known = {row.purchase_id for row in rows}
    for purchase_id, (viewer_id, content_id) in granted_by.items():
        if purchase_id not in known:
            problems.append(
                f"entitlement of {viewer_id} to {content_id} names no purchase"
            )
    return problems
