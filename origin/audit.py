"""The audit log of admin actions."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from origin.store import admin_audit


async def record_audit(
    connection: AsyncConnection,
    actor: str,
    action: str,
    target: str,
    detail: dict[str, Any] | None = None,
) -> None:
    """Write one audit entry inside the caller's transaction."""
    await connection.execute(
        admin_audit.insert().values(
            at=time.time(),
            actor=actor,
            action=action,
            target=target,
            detail=detail or {},
        )
    )
