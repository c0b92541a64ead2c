"""Purchase endpoints: start a purchase, read it with its steps, refund it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin.auth import Viewer, require_viewer
from origin.catalog import load_content
from origin.entitlements import get_entitlement
from origin.idempotency import idempotency_key, run_idempotent
from origin.saga import PurchaseRequest, load_purchase
from origin.state import Origin
from origin.validation import read_object, string_field
from shared import problems
from shared.content import CONTENT_ID
from shared.problems import Problem

# Statuses after which a purchase does not change without a refund request.
FINAL_STATUSES = frozenset({"granted", "declined", "failed", "refunded"})


def _timestamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _public(purchase: dict[str, Any]) -> dict[str, Any]:
    steps = [{**step, "at": _timestamp(step["at"])} for step in purchase["steps"]]
    return {
        "purchase_id": purchase["purchase_id"],
        "status": purchase["status"],
        "content_id": purchase["content_id"],
        "price": {"amount": purchase["amount"], "currency": purchase["currency"]},
        "payment_method": purchase["payment_method"],
        "provider": purchase["provider"],
        "created_at": _timestamp(purchase["created_at"]),
        "updated_at": _timestamp(purchase["updated_at"]),
        "steps": steps,
    }


async def _owned_purchase(
    origin: Origin, viewer: Viewer, purchase_id: str
) -> dict[str, Any]:
    async with origin.engine.connect() as connection:
        purchase = await load_purchase(connection, purchase_id)
    # Another viewer's purchase is reported as missing, not as forbidden,
    # so purchase ids cannot be probed.
    if purchase is None or purchase["viewer_id"] != viewer.viewer_id:
        raise Problem(problems.NOT_FOUND, f"no purchase '{purchase_id}'")
    return purchase


async def create_purchase(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer = await require_viewer(request, origin.engine)
    key = idempotency_key(request, required=True)
    data, body = await read_object(request)

    async def handle() -> Response:
        content_id = string_field(
            data, "content_id", max_length=128, pattern=CONTENT_ID
        )
        payment_method = string_field(data, "payment_method", max_length=128)
        item = await load_content(origin, content_id)
        if item.policy_kind != "purchase":
            raise Problem(problems.CONFLICT, f"'{content_id}' is free to watch")
        async with origin.engine.connect() as connection:
            entitlement = await get_entitlement(
                connection, viewer.viewer_id, content_id
            )
        if entitlement.granted:
            raise Problem(problems.CONFLICT, f"the viewer already owns '{content_id}'")
        purchase_id = await origin.saga.purchase(
            PurchaseRequest(
                viewer_id=viewer.viewer_id,
                content_id=content_id,
                amount=Decimal(item.price_amount),
                currency=item.price_currency,
                payment_method=payment_method,
                idempotency_key=f"{viewer.viewer_id}:{key}",
            )
        )
        purchase = await _owned_purchase(origin, viewer, purchase_id)
        status_code = 201 if purchase["status"] in FINAL_STATUSES else 202
        headers = {"Location": f"/v1/purchases/{purchase_id}"}
        return JSONResponse(_public(purchase), status_code=status_code, headers=headers)

    return await run_idempotent(
        origin.engine, f"purchase:{viewer.viewer_id}", key, body, handle
    )


async def get_purchase(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer = await require_viewer(request, origin.engine)
    purchase = await _owned_purchase(origin, viewer, request.path_params["purchase_id"])
    return JSONResponse(_public(purchase), headers={"Cache-Control": "no-store"})


async def refund_purchase(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer = await require_viewer(request, origin.engine)
    key = idempotency_key(request, required=False)
    purchase_id = request.path_params["purchase_id"]
    body = await request.body()

    async def handle() -> Response:
        purchase = await _owned_purchase(origin, viewer, purchase_id)
        await origin.saga.refund(purchase)
        refunded = await _owned_purchase(origin, viewer, purchase_id)
        return JSONResponse(_public(refunded))

    return await run_idempotent(
        origin.engine, f"refund:{viewer.viewer_id}:{purchase_id}", key, body, handle
    )


routes = [
    Route("/v1/purchases", create_purchase, methods=["POST"]),
    Route("/v1/purchases/{purchase_id}", get_purchase, methods=["GET"]),
    Route("/v1/purchases/{purchase_id}/refund", refund_purchase, methods=["POST"]),
]
