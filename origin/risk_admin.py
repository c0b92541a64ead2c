"""Admin API of the risk engine; needs the ``risk`` scope.

``GET /v1/admin/risk/assessments`` lists assessments, newest first, and
filters them by ``decision``, ``viewer_id`` or ``purchase_id``;
``GET /v1/admin/risk/assessments/{assessment_id}`` shows one with its
reasons and counted signals; ``GET /v1/admin/risk/policy`` returns the mode
and thresholds in force.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.auth import require_scope
from origin.risk import DECISIONS
from origin.state import Origin
from origin.store import risk_assessments
from origin.validation import invalid
from shared import problems
from shared.problems import Problem

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
FILTERS = ("viewer_id", "purchase_id")
NO_STORE = {"Cache-Control": "no-store"}


def _assessment(row: Any) -> dict[str, Any]:
    at = datetime.fromtimestamp(row.at, UTC).isoformat(timespec="milliseconds")
    return {
        "assessment_id": row.assessment_id,
        "at": at,
        "decision": row.decision,
        "enforced": row.enforced,
        "purchase_id": row.purchase_id,
        "viewer_id": row.viewer_id,
        "content_id": row.content_id,
        "card_country": row.card_country,
        "request_country": row.request_country,
        "reasons": row.reasons,
        "signals": row.signals,
    }


def _limit(request: Request) -> int:
    text = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise invalid(f"limit must be an integer from 1 to {MAX_LIMIT}", "limit")
    return int(text)


async def list_assessments(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "risk")
    query = select(risk_assessments)
    decision = request.query_params.get("decision")
    if decision is not None:
        if decision not in DECISIONS:
            raise invalid(f"decision must be one of {', '.join(DECISIONS)}", "decision")
        query = query.where(risk_assessments.c.decision == decision)
    for name in FILTERS:
        value = request.query_params.get(name)
        if value is not None:
            query = query.where(risk_assessments.c[name] == value)
    query = query.order_by(risk_assessments.c.at.desc()).limit(_limit(request))
    async with origin.engine.connect() as connection:
        rows = (await connection.execute(query)).all()
    items = [_assessment(row) for row in rows]
    return JSONResponse({"assessments": items}, headers=NO_STORE)


async def show_assessment(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "risk")
    assessment_id = request.path_params["assessment_id"]
    async with origin.engine.connect() as connection:
        row = (
            await connection.execute(
                select(risk_assessments).where(
                    risk_assessments.c.assessment_id == assessment_id
                )
            )
        ).first()
    if row is None:
        raise Problem(
            problems.NOT_FOUND, f"no risk assessment with id {assessment_id[:80]!r}"
        )
    return JSONResponse(_assessment(row), headers=NO_STORE)


async def show_policy(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "risk")
    return JSONResponse(dataclasses.asdict(origin.risk.policy), headers=NO_STORE)


routes = [
    Route("/v1/admin/risk/assessments", list_assessments, methods=["GET"]),
    Route(
        "/v1/admin/risk/assessments/{assessment_id}", show_assessment, methods=["GET"]
    ),
    Route("/v1/admin/risk/policy", show_policy, methods=["GET"]),
]
