"""The risk engine's counts over the assessments kept in the store.

Each count reads the rows of ``risk_assessments`` within a window that ends
now, so every origin replica on the same store gets the same counts. Declines
in a row join those rows to the purchases that they let through.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    bindparam,
    case,
    func,
    literal,
    select,
    true,
    union_all,
)
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

    One query counts the viewer, device, network and card windows, and one
    more reads the declines in a row. ``surge`` is the store-wide surge
    signal from the caller's recent count, or None to count it here.
    """
    with_card = attempt.card_key is not None
    parameters = {
        "recent_since": now - policy.velocity_seconds,
        "shared_since": now - policy.sharing_seconds,
        "viewer": attempt.viewer_id,
        "device": attempt.device_key,
        "network": attempt.network_key,
        "card": attempt.card_key,
    }
    query = _COUNTS_WITH_CARD if with_card else _COUNTS
    row = (await connection.execute(query, parameters)).one()
    signals: dict[str, Any] = {name: int(value) for name, value in row._mapping.items()}
    signals["declines_in_a_row"] = await _declines_in_a_row(
        connection, parameters, with_card
    )
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
    connection: AsyncConnection, parameters: dict[str, Any], with_card: bool
) -> int:
    """Count the most recent declined purchases, back to the last success.

    The count is taken for the viewer, the device and the card, and the
    longest streak is returned. One query reads the latest purchases of
    each. Purchases that asked for 3-D Secure are skipped, because their
    outcome depends on the viewer finishing authentication. Running and
    failed purchases are skipped too. Blocked requests have no purchase to
    count.
    """
    query = _LATEST_WITH_CARD if with_card else _LATEST
    by_key: dict[int, list[Any]] = {}
    for row in await connection.execute(query, parameters):
        by_key.setdefault(row.key, []).append(row)
    longest = 0
    for found in by_key.values():
        streak = 0
        # Newest first, because the union does not keep each part's order.
        for row in sorted(found, key=lambda row: row.at, reverse=True):
            if row.request_three_d_secure:
                continue
            if row.status == records.DECLINED:
                streak += 1
            elif row.status in _SUCCEEDED:
                break
        longest = max(longest, streak)
    return longest


# The queries above, built once with bound parameters: their expressions
# are large, and building them took longer than running them.
_T = risk_assessments.c
_RECENT = _T.at > bindparam("recent_since")


def _window(where: ColumnElement[bool], **columns: Any) -> Any:
    labeled = [column.label(name) for name, column in columns.items()]
    return select(*labeled).where(where, _T.at > bindparam("shared_since")).subquery()


_VIEWER = _window(
    _T.viewer_id == bindparam("viewer"),
    viewer_purchases=_rows(_RECENT),
    viewer_cards=_distinct(_T.card_key),
)
_DEVICE = _window(
    _T.device_key == bindparam("device"),
    device_purchases=_rows(_RECENT),
    device_viewers=_distinct(_T.viewer_id),
    device_viewers_recent=_distinct(_T.viewer_id, _RECENT),
    device_cards=_distinct(_T.card_key),
)
_NETWORK = _window(
    _T.network_key == bindparam("network"),
    network_viewers=_distinct(_T.viewer_id),
)
_CARD = _window(
    _T.card_key == bindparam("card"),
    card_purchases=_rows(_RECENT),
    card_viewers=_distinct(_T.viewer_id),
    card_viewers_recent=_distinct(_T.viewer_id, _RECENT),
    card_viewers_elsewhere=_distinct(
        _T.viewer_id,
        (_T.viewer_id != bindparam("viewer"))
        & (_T.network_key != bindparam("network")),
    ),
)
# Each window is one row, so joining them all gives one row.
_JOINED = _VIEWER.join(_DEVICE, true()).join(_NETWORK, true())
_COUNTS = select(_VIEWER, _DEVICE, _NETWORK).select_from(_JOINED)
_COUNTS_WITH_CARD = select(_VIEWER, _DEVICE, _NETWORK, _CARD).select_from(
    _JOINED.join(_CARD, true())
)


def _latest(with_card: bool) -> Any:
    joined = risk_assessments.join(
        purchases, risk_assessments.c.purchase_id == purchases.c.purchase_id
    )
    keys = [_T.viewer_id == bindparam("viewer"), _T.device_key == bindparam("device")]
    if with_card:
        keys.append(_T.card_key == bindparam("card"))
    parts = [
        select(
            literal(index).label("key"),
            _T.at,
            purchases.c.status,
            purchases.c.request_three_d_secure,
        )
        .select_from(joined)
        .where(key, _T.at > bindparam("shared_since"))
        .order_by(_T.at.desc())
        .limit(_STREAK_ROWS)
        .subquery()
        for index, key in enumerate(keys)
    ]
    return union_all(*(select(part) for part in parts))


_LATEST = _latest(with_card=False)
_LATEST_WITH_CARD = _latest(with_card=True)
