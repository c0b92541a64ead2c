"""Purchases and their steps in the store: statuses, step rows and leases.

A purchase moves through these statuses; every move is one transaction
that also records the step that caused it::

    pending → authorized → captured → granted
      │         │            │         └─ refund requested: refunding → refunded
      │         │            ├─ refund requested: refunding → refunded
      │         │            └─ grant impossible: refunding → failed
      │         ├─ refund requested: voiding → canceled
      │         └─ expired or not grantable: voiding → failed
      ├─ issuer wants the viewer to authenticate: requires_action
      │    ├─ authenticated: authorized (and on as above)
      │    ├─ authentication failed: declined
      │    ├─ not completed in time: voiding → failed
      │    └─ refund requested: voiding → canceled
      ├─ declined
      └─ failed

``voiding`` and ``refunding`` end in the purchase's ``closing_status``. A
``requires_action`` purchase carries ``next_action_url``, the page where the
viewer completes the issuer's step, until ``action_expires_at``.

Only the holder of a purchase's lease changes it. A runner takes the lease
when it is free or expired, renews it while it works, and names itself in
every update (``lease_owner = ?``), so a runner whose lease passed to
another can no longer write.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from origin.store import purchase_steps, purchases

PENDING = "pending"
REQUIRES_ACTION = "requires_action"
AUTHORIZED = "authorized"
CAPTURED = "captured"
GRANTED = "granted"
VOIDING = "voiding"
REFUNDING = "refunding"
DECLINED = "declined"
FAILED = "failed"
CANCELED = "canceled"
REFUNDED = "refunded"

RUNNING_STATUSES = frozenset(
    {PENDING, REQUIRES_ACTION, AUTHORIZED, CAPTURED, VOIDING, REFUNDING}
)
# Statuses that change only if the viewer asks for a refund.
SETTLED_STATUSES = frozenset({GRANTED, DECLINED, FAILED, CANCELED, REFUNDED})
REFUNDABLE_STATUSES = RUNNING_STATUSES | {GRANTED}

# Steps, as GET /v1/purchases/{id} lists them.
PAYMENT_INTENT = "payment_intent"
AUTHORIZATION = "authorization"
# The viewer's step with the issuer (3-D Secure) after an authorization
# that requires action.
AUTHENTICATION = "authentication"
CAPTURE = "capture"
GRANT = "grant"
VOID = "void"
REFUND = "refund"
REVOKE = "revoke"

# Step outcomes. A step is "started" before a provider call and gets its
# outcome after it; "unknown" means the call got no usable response.
STARTED = "started"
SUCCEEDED = "succeeded"
STEP_DECLINED = "declined"
STEP_FAILED = "failed"
UNKNOWN = "unknown"
EXPIRED = "expired"
# The authorization waits for the viewer's authentication with the issuer.
ACTION_REQUIRED = "requires_action"
UNRESOLVED = frozenset({STARTED, UNKNOWN})


class LeaseLost(Exception):
    """Raised when a runner's update finds that it no longer holds the lease."""


@dataclass(frozen=True)
class Purchase:
    purchase_id: str
    viewer_id: str
    content_id: str
    amount: str
    currency: str
    payment_method: str
    provider: str
    payment_intent_id: str | None
    status: str
    idempotency_key: str | None
    refund_requested_at: float | None
    closing_status: str | None
    authorization_expires_at: float | None
    next_action_url: str | None
    action_expires_at: float | None
    lease_owner: str | None
    lease_expires_at: float | None
    attempts: int
    next_attempt_at: float | None
    request_three_d_secure: bool

    @classmethod
    def from_row(cls, row: Row[Any]) -> Purchase:
        values = {name: getattr(row, name) for name in cls.__dataclass_fields__}
        values["attempts"] = int(values["attempts"] or 0)
        values["request_three_d_secure"] = bool(values["request_three_d_secure"])
        return cls(**values)

    def leased(self, now: float) -> bool:
        """Whether a runner holds an unexpired lease on the purchase."""
        return self.lease_expires_at is not None and self.lease_expires_at > now

    @property
    def has_work(self) -> bool:
        """Whether the saga still has steps to run for this purchase."""
        if self.status in RUNNING_STATUSES:
            return True
        return self.status == GRANTED and self.refund_requested_at is not None


# Statements that every purchase runs several times, built once, so that
# SQLAlchemy skips building the expression and its cache key on each call.
# The WHERE clause's values are bound as match_*, which no column is named.
_FETCH = select(purchases).where(purchases.c.purchase_id == bindparam("match_id"))
_TRIES = (
    select(
        purchase_steps.c.step_id,
        purchase_steps.c.outcome,
        purchase_steps.c.idempotency_key,
    )
    .where(
        purchase_steps.c.purchase_id == bindparam("match_id"),
        purchase_steps.c.step == bindparam("match_step"),
    )
    .order_by(purchase_steps.c.step_id)
)
_INSERT_STEP = purchase_steps.insert()
_FINISH_STEP = purchase_steps.update().where(
    purchase_steps.c.step_id == bindparam("match_id")
)
# The SET clause comes from the parameters of each call.
_MOVE = purchases.update().where(
    purchases.c.purchase_id == bindparam("match_id"),
    purchases.c.lease_owner == bindparam("match_owner"),
    purchases.c.status == bindparam("match_status"),
)
_RELEASE = purchases.update().where(
    purchases.c.purchase_id == bindparam("match_id"),
    purchases.c.lease_owner == bindparam("match_owner"),
)


async def fetch_purchase(
    connection: AsyncConnection, purchase_id: str
) -> Purchase | None:
    row = (await connection.execute(_FETCH, {"match_id": purchase_id})).first()
    return None if row is None else Purchase.from_row(row)


async def find_purchase_by_request(
    connection: AsyncConnection, viewer_id: str, idempotency_key: str
) -> Purchase | None:
    """Return the purchase that the viewer's request with this key created."""
    row = (
        await connection.execute(
            select(purchases).where(
                purchases.c.viewer_id == viewer_id,
                purchases.c.idempotency_key == idempotency_key,
            )
        )
    ).first()
    return None if row is None else Purchase.from_row(row)


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
        {
            "step": step.step,
            "outcome": step.outcome,
            "detail": step.detail,
            "at": step.at,
            "finished_at": step.finished_at,
        }
        for step in steps
    ]
    return purchase


async def latest_step(
    connection: AsyncConnection, purchase_id: str, step: str
) -> Row[Any] | None:
    return (
        await connection.execute(
            select(purchase_steps)
            .where(
                purchase_steps.c.purchase_id == purchase_id,
                purchase_steps.c.step == step,
            )
            .order_by(purchase_steps.c.step_id.desc())
            .limit(1)
        )
    ).first()


async def step_tries(
    connection: AsyncConnection, purchase_id: str, step: str
) -> list[Row[Any]]:
    """Return every try of ``step``, oldest first: id, outcome and key."""
    parameters = {"match_id": purchase_id, "match_step": step}
    return list(await connection.execute(_TRIES, parameters))


async def count_steps(connection: AsyncConnection, purchase_id: str, step: str) -> int:
    return int(
        (
            await connection.execute(
                select(func.count()).where(
                    purchase_steps.c.purchase_id == purchase_id,
                    purchase_steps.c.step == step,
                )
            )
        ).scalar_one()
    )


async def insert_step(
    connection: AsyncConnection,
    purchase_id: str,
    step: str,
    outcome: str,
    detail: str | None = None,
    *,
    idempotency_key: str | None = None,
    at: float | None = None,
) -> int:
    """Record a step and return its id; a step that is not "started" is finished."""
    now = time.time() if at is None else at
    result = await connection.execute(
        _INSERT_STEP,
        {
            "purchase_id": purchase_id,
            "step": step,
            "outcome": outcome,
            "detail": detail,
            "at": now,
            "finished_at": None if outcome == STARTED else now,
            "idempotency_key": idempotency_key,
        },
    )
    return int(result.inserted_primary_key[0])  # type: ignore[index]


async def finish_step(
    connection: AsyncConnection,
    step_id: int,
    outcome: str,
    detail: str | None,
    at: float,
) -> None:
    await connection.execute(
        _FINISH_STEP,
        {"match_id": step_id, "outcome": outcome, "detail": detail, "finished_at": at},
    )


async def move(
    connection: AsyncConnection,
    purchase: Purchase,
    owner: str,
    status: str,
    now: float,
    **values: Any,
) -> None:
    """Move ``purchase`` from its current status to ``status``.

    The update names the lease owner and the expected status, so it changes
    nothing and raises :class:`LeaseLost` if another runner took over.
    Moving resets the retry counter unless ``values`` sets it.
    """
    values.setdefault("attempts", 0)
    values.setdefault("next_attempt_at", None)
    updated = await connection.execute(
        _MOVE,
        {
            "match_id": purchase.purchase_id,
            "match_owner": owner,
            "match_status": purchase.status,
            "status": status,
            "updated_at": now,
            **values,
        },
    )
    if updated.rowcount != 1:
        raise LeaseLost(purchase.purchase_id)


async def acquire_lease(
    connection: AsyncConnection,
    purchase_id: str,
    owner: str,
    now: float,
    seconds: float,
) -> bool:
    """Take the purchase's lease if it is free or expired; return whether taken."""
    updated = await connection.execute(
        purchases.update()
        .where(
            purchases.c.purchase_id == purchase_id,
            or_(
                purchases.c.lease_owner.is_(None),
                purchases.c.lease_expires_at.is_(None),
                purchases.c.lease_expires_at <= now,
            ),
        )
        .values(lease_owner=owner, lease_expires_at=now + seconds)
    )
    return updated.rowcount == 1


async def renew_lease(
    connection: AsyncConnection, purchase_id: str, owner: str, until: float
) -> bool:
    updated = await connection.execute(
        purchases.update()
        .where(purchases.c.purchase_id == purchase_id, purchases.c.lease_owner == owner)
        .values(lease_expires_at=until)
    )
    return updated.rowcount == 1


async def release_lease(
    connection: AsyncConnection, purchase_id: str, owner: str
) -> None:
    await connection.execute(
        _RELEASE,
        {
            "match_id": purchase_id,
            "match_owner": owner,
            "lease_owner": None,
            "lease_expires_at": None,
        },
    )


def _due(now: float) -> Select[Any]:
    """Select due purchases with steps left and no unexpired lease."""
    has_work = or_(
        purchases.c.status.in_(RUNNING_STATUSES),
        and_(
            purchases.c.status == GRANTED,
            purchases.c.refund_requested_at.is_not(None),
        ),
    )
    return (
        select(purchases.c.purchase_id)
        .where(
            has_work,
            or_(
                purchases.c.lease_expires_at.is_(None),
                purchases.c.lease_expires_at <= now,
            ),
            or_(
                purchases.c.next_attempt_at.is_(None),
                purchases.c.next_attempt_at <= now,
            ),
        )
        .order_by(purchases.c.updated_at)
    )


async def claim_due_purchase(
    connection: AsyncConnection,
    owner: str,
    now: float,
    seconds: float,
    *,
    passed: Collection[str] = (),
) -> str | None:
    """Take the lease of one due purchase that is not in ``passed``.

    On PostgreSQL, ``FOR UPDATE SKIP LOCKED`` passes over purchases that
    another replica is claiming in the same moment, so replicas that
    recover together take different purchases instead of queueing on one.
    Return the purchase id, or None when nothing is due.
    """
    query = _due(now).limit(1)
    if passed:
        query = query.where(purchases.c.purchase_id.not_in(list(passed)))
    if connection.dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    purchase_id = (await connection.execute(query)).scalar()
    if purchase_id is None:
        return None
    taken = await acquire_lease(connection, purchase_id, owner, now, seconds)
    return purchase_id if taken else None
