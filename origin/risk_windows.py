"""The risk engine's counts over the assessments kept in the store.

Each count reads the rows of ``risk_assessments`` within a window that ends
now, so every origin replica on the same store gets the same counts. Declines
in a row join those rows to the purchases that they let through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, case, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection

from origin import purchase_records as records
from origin.store import purchases, risk_assessments

if TYPE_CHECKING:
    from origin.risk import Attempt, RiskPolicy

# Purchase statuses that end a run of declines: the card was authorized.
_SUCCEEDED = frozenset(
    {
        records.AUTHORIZED,
        records.CAPTURED,
        records.GRANTED,
        records.REFUNDING,
        records.REFUNDED,
    }
)
# The most recent purchases read when counting declines in a row.
_STREAK_ROWS = 20


async def count_signals(
    connection: AsyncConnection,
    attempt: Attempt,
    policy: RiskPolicy,
    now: float,
    *,
    surge: bool | None = None,
) -> dict[str, Any]:
    """Count every signal of ``attempt``, whose own row is already written.

    ``surge`` is the store-wide surge signal when the caller knows it from a
    recent count; otherwise it is counted here.
    """
    table = risk_assessments.c
    recent = table.at > now - policy.velocity_seconds
    shared = table.at > now - policy.sharing_seconds
    elsewhere = (table.viewer_id != attempt.viewer_id) & (
        table.network_key != attempt.network_key
    )

    async def counts(where: ColumnElement[bool], **columns: Any) -> dict[str, int]:
        labeled = [column.label(name) for name, column in columns.items()]
        query = select(*labeled).where(where, shared)
        row = (await connection.execute(query)).one()
        return {name: int(row[index]) for index, name in enumerate(columns)}

    signals: dict[str, Any] = await counts(
        table.viewer_id == attempt.viewer_id,
        viewer_purchases=_rows(recent),
        viewer_cards=_distinct(table.card_key),
    )
    device = table.device_key == attempt.device_key
    signals |= await counts(
        device,
        device_purchases=_rows(recent),
        device_viewers=_distinct(table.viewer_id),
        device_viewers_recent=_distinct(table.viewer_id, recent),
        device_cards=_distinct(table.card_key),
    )
    network = table.network_key == attempt.network_key
    signals |= await counts(network, network_viewers=_distinct(table.viewer_id))
    keys = [
        (table.viewer_id, attempt.viewer_id),
        (table.device_key, attempt.device_key),
    ]
    if attempt.card_key is not None:
        signals |= await counts(
            table.card_key == attempt.card_key,
            card_purchases=_rows(recent),
            card_viewers=_distinct(table.viewer_id),
            card_viewers_recent=_distinct(table.viewer_id, recent),
            card_viewers_elsewhere=_distinct(table.viewer_id, elsewhere),
        )
        keys.append((table.card_key, attempt.card_key))
    since = now - policy.sharing_seconds
    signals["declines_in_a_row"] = await _declines_in_a_row(connection, keys, since)
    signals["crowd"] = _in_crowd(signals, policy)
    if surge is None:
        surge = await count_surge(connection, policy, now)
    signals["surge"] = surge
    return signals


def _rows(condition: ColumnElement[bool]) -> Any:
    return func.count(case((condition, 1)))


def _distinct(column: Any, condition: ColumnElement[bool] | None = None) -> Any:
    if condition is not None:
        column = case((condition, column))
    # COUNT skips NULLs. Rows outside the condition become NULL here, and a
    # card without a provider fingerprint is stored as NULL.
    return func.count(column.distinct())


def _in_crowd(signals: dict[str, Any], policy: RiskPolicy) -> bool:
    """Return True when the device is one of many on a network, as on a campus."""
    share = signals["device_viewers"] / max(signals["network_viewers"], 1)
    return bool(share < policy.crowd_device_share)


async def count_surge(
    connection: AsyncConnection, policy: RiskPolicy, now: float
) -> bool:
    """Return True when purchases arrive at several times their usual rate."""
    table = risk_assessments.c
    start = now - policy.surge_seconds
    query = select(_rows(table.at > start), _rows(table.at <= start)).where(
        table.at > now - policy.sharing_seconds
    )
    recent, before = (await connection.execute(query)).one()
    periods = (policy.sharing_seconds - policy.surge_seconds) / policy.surge_seconds
    usual = max(before / periods, 1.0)
    return bool(
        recent >= policy.surge_min_purchases and recent >= policy.surge_factor * usual
    )


async def _declines_in_a_row(
    connection: AsyncConnection, keys: list[tuple[Any, str]], since: float
) -> int:
    """Count the most recent declined purchases, back to the last success.

    The count is taken for each of ``keys`` (column and value), and the
    longest streak is returned; one query reads the latest purchases of
    every key. Purchases that asked for 3-D Secure are skipped, because
    their outcome depends on the viewer finishing authentication. Running
    and failed purchases are skipped too. Blocked requests have no purchase
    to count.
    """
    joined = risk_assessments.join(
        purchases, risk_assessments.c.purchase_id == purchases.c.purchase_id
    )
    latest = [
        select(
            literal(index).label("key"),
            risk_assessments.c.at,
            purchases.c.status,
            purchases.c.request_three_d_secure,
        )
        .select_from(joined)
        .where(column == value, risk_assessments.c.at > since)
        .order_by(risk_assessments.c.at.desc())
        .limit(_STREAK_ROWS)
        .subquery()
        for index, (column, value) in enumerate(keys)
    ]
    rows = await connection.execute(union_all(*(select(part) for part in latest)))
    by_key: dict[int, list[Any]] = {}
    for row in rows:
        by_key.setdefault(row.key, []).append(row)
    longest = 0
    for found in by_key.values():
        streak = 0
        # Newest first; the union does not keep each part's order.
        for row in sorted(found, key=lambda row: row.at, reverse=True):
            if row.request_three_d_secure:
                continue
            if row.status == records.DECLINED:
                streak += 1
            elif row.status in _SUCCEEDED:
                break
        longest = max(longest, streak)
    return longest
