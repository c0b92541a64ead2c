"""Entitlements: which viewer may watch which content in full.

Each grant or revocation bumps the entitlement's version and writes an
outbox event in the caller's transaction. Playback tokens carry the version
they were issued at, which lets edges order tokens and events.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection

from origin.outbox import append_event
from origin.store import entitlements, viewers
from shared.events import ENTITLEMENT_GRANTED, ENTITLEMENT_REVOKED


class EntitlementConflict(Exception):
    """Raised when another transaction changed the entitlement first."""


@dataclass(frozen=True)
class Entitlement:
    granted: bool
    version: int
    purchase_id: str | None = None


# Built once: every purchase reads the entitlement more than once.
_READ = select(
    entitlements.c.granted,
    entitlements.c.version,
    entitlements.c.purchase_id,
).where(
    entitlements.c.viewer_id == bindparam("match_viewer"),
    entitlements.c.content_id == bindparam("match_content"),
)


async def get_entitlement(
    connection: AsyncConnection, viewer_id: str, content_id: str
) -> Entitlement:
    parameters = {"match_viewer": viewer_id, "match_content": content_id}
    row = (await connection.execute(_READ, parameters)).first()
    if row is None:
        return Entitlement(False, 0)
    return Entitlement(bool(row.granted), int(row.version), row.purchase_id)


async def set_entitlement(
    connection: AsyncConnection,
    viewer_id: str,
    content_id: str,
    *,
    granted: bool,
    purchase_id: str,
) -> Entitlement:
    """Grant or revoke, bump the version and announce it, in one transaction.

    Raise :class:`EntitlementConflict` if a concurrent transaction changed
    the entitlement since it was read; the caller's transaction must then
    roll back and try again.
    """
    current = await get_entitlement(connection, viewer_id, content_id)
    version = current.version + 1
    values = {
        "granted": granted,
        "version": version,
        "purchase_id": purchase_id,
        "updated_at": time.time(),
    }
    if current.version == 0:
        await connection.execute(
            entitlements.insert().values(
                viewer_id=viewer_id, content_id=content_id, **values
            )
        )
    else:
        updated = await connection.execute(
            entitlements.update()
            .where(
                entitlements.c.viewer_id == viewer_id,
                entitlements.c.content_id == content_id,
                entitlements.c.version == current.version,
            )
            .values(**values)
        )
        if updated.rowcount != 1:
            raise EntitlementConflict(
                f"entitlement of {viewer_id} to {content_id} changed concurrently"
            )
    viewer_ref = (
        await connection.execute(
            select(viewers.c.viewer_ref).where(viewers.c.viewer_id == viewer_id)
        )
    ).scalar_one()
    event_type = ENTITLEMENT_GRANTED if granted else ENTITLEMENT_REVOKED
    await append_event(connection, event_type, viewer_ref, content_id, version)
    return Entitlement(granted, version, purchase_id)
