"""Purchase endpoints: start a purchase, read it with its steps, refund it."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from origin import purchase_records as records
from origin.auth import Viewer, require_viewer
from origin.catalog import load_content
from origin.entitlements import get_entitlement
from origin.idempotency import (
    IdempotentCall,
    idempotency_key,
    required_idempotency_key,
    run_idempotent,
)
from origin.providers import InvalidPaymentRequest
from origin.risk import Assessment
from origin.risk_signals import build_attempt
from origin.saga import PurchaseConflict, PurchaseRequest
from origin.state import Origin
from origin.validation import read_body, read_object, string_field
from shared import problems
from shared.content import CONTENT_ID
from shared.problems import Problem


def _timestamp(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _public(purchase: dict[str, Any]) -> dict[str, Any]:
    steps = [
        {
            **step,
            "at": _timestamp(step["at"]),
            "finished_at": _timestamp(step["finished_at"]),
        }
        for step in purchase["steps"]
    ]
    return {
        "purchase_id": purchase["purchase_id"],
        "status": purchase["status"],
        "content_id": purchase["content_id"],
        "price": {"amount": purchase["amount"], "currency": purchase["currency"]},
        "payment_method": purchase["payment_method"],
        "provider": purchase["provider"],
        "created_at": _timestamp(purchase["created_at"]),
        "updated_at": _timestamp(purchase["updated_at"]),
        "refund_requested_at": _timestamp(purchase["refund_requested_at"]),
        "next_action": _next_action(purchase),
        "steps": steps,
    }


def _next_action(purchase: dict[str, Any]) -> dict[str, Any] | None:
    """Return where the viewer completes the issuer's authentication, and until when.

    ``url`` is null when the provider names no page (Stripe's
    ``use_stripe_sdk``), and a sandbox URL is a path on the origin.
    """
    if purchase["status"] != records.REQUIRES_ACTION:
        return None
    return {
        "type": "authenticate",
        "url": purchase["next_action_url"],
        "expires_at": _timestamp(purchase["action_expires_at"]),
    }


def _settled(purchase: dict[str, Any]) -> bool:
    if purchase["status"] == records.GRANTED:
        return purchase["refund_requested_at"] is None
    return purchase["status"] in records.SETTLED_STATUSES


async def _owned_purchase(
    origin: Origin, viewer: Viewer, purchase_id: str
) -> dict[str, Any]:
    async with origin.engine.connect() as connection:
        purchase = await records.load_purchase(connection, purchase_id)
    # Another viewer's purchase is reported as missing, not as forbidden,
    # so purchase ids cannot be probed.
    if purchase is None or purchase["viewer_id"] != viewer.viewer_id:
        raise Problem(problems.NOT_FOUND, f"no purchase '{purchase_id}'")
    return purchase


def _purchase_response(purchase: dict[str, Any], settled_code: int) -> Response:
    """Answer ``settled_code`` for a settled purchase and 202 while it runs."""
    status_code = settled_code if _settled(purchase) else 202
    headers = {
        "Location": f"/v1/purchases/{purchase['purchase_id']}",
        "Cache-Control": "no-store",
    }
    return JSONResponse(_public(purchase), status_code=status_code, headers=headers)


def _is_final(response: Response) -> bool:
    return response.status_code != 202


async def _assess(
    request: Request,
    origin: Origin,
    viewer: Viewer,
    content_id: str,
    payment_method: str,
) -> Assessment | None:
    """Run the risk checks; raise a problem if they block the purchase."""
    if not origin.risk.enabled:
        return None
    attempt = await build_attempt(
        request,
        origin.risk_context,
        origin.provider,
        viewer.viewer_id,
        content_id,
        payment_method,
    )
    assessment = await origin.risk.assess(attempt)
    if assessment.blocks:
        # The reasons stay with admins: telling them to the client would
        # show an attacker which limit to stay under.
        raise Problem(
            problems.PURCHASE_BLOCKED,
            "the purchase was blocked and nothing was charged; "
            "quote the assessment id to support",
            assessment_id=assessment.assessment_id,
        )
    return assessment


async def create_purchase(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer = await require_viewer(request, origin.engine)
    key = required_idempotency_key(request)
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
        assessment = await _assess(request, origin, viewer, content_id, payment_method)
        challenged = assessment is not None and assessment.challenges
        try:
            purchase_id, created = await origin.saga.start(
                PurchaseRequest(
                    viewer_id=viewer.viewer_id,
                    content_id=content_id,
                    amount=Decimal(item.price_amount),
                    currency=item.price_currency,
                    payment_method=payment_method,
                    idempotency_key=key,
                    request_three_d_secure=challenged,
                    assessment_id=(
                        None if assessment is None else assessment.assessment_id
                    ),
                )
            )
        except PurchaseConflict as exc:
            extensions = {"purchase_id": exc.purchase_id} if exc.purchase_id else {}
            raise Problem(problems.CONFLICT, str(exc), **extensions) from None
        except InvalidPaymentRequest as exc:
            raise Problem(problems.UNPROCESSABLE, str(exc)) from None
        if created:
            origin.counters.count_purchase(viewer.viewer_id, content_id)
        purchase = await _owned_purchase(origin, viewer, purchase_id)
        return _purchase_response(purchase, 201)

    async def resume(still_running: bool) -> Response | None:
        async with origin.engine.connect() as connection:
            found = await records.find_purchase_by_request(
                connection, viewer.viewer_id, key
            )
        if found is None:
            return None
        if still_running and found.leased(origin.clock()):
            return None
        purchase = await _owned_purchase(origin, viewer, found.purchase_id)
        return _purchase_response(purchase, 201)

    call = IdempotentCall(
        origin.engine,
        f"purchase:{viewer.viewer_id}",
        key,
        body,
        resume=resume,
        is_final=_is_final,
        clock=origin.clock,
    )
    return await run_idempotent(call, handle)


async def get_purchase(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer = await require_viewer(request, origin.engine)
    purchase = await _owned_purchase(origin, viewer, request.path_params["purchase_id"])
    return JSONResponse(_public(purchase), headers={"Cache-Control": "no-store"})


async def refund_purchase(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    viewer = await require_viewer(request, origin.engine)
    key = idempotency_key(request)
    purchase_id = request.path_params["purchase_id"]
    body = await read_body(request)

    async def current() -> Response:
        purchase = await _owned_purchase(origin, viewer, purchase_id)
        return _purchase_response(purchase, 200)

    async def handle() -> Response:
        purchase = await _owned_purchase(origin, viewer, purchase_id)
        if not await origin.saga.request_refund(purchase_id):
            raise Problem(
                problems.CONFLICT,
                f"purchase {purchase_id} is {purchase['status']}; "
                "nothing was charged that could be refunded",
            )
        return await current()

    async def resume(still_running: bool) -> Response | None:
        return None if still_running else await current()

    call = IdempotentCall(
        origin.engine,
        f"refund:{viewer.viewer_id}:{purchase_id}",
        key,
        body,
        resume=resume,
        is_final=_is_final,
        clock=origin.clock,
    )
    return await run_idempotent(call, handle)


routes = [
    Route("/v1/purchases", create_purchase, methods=["POST"]),
    Route("/v1/purchases/{purchase_id}", get_purchase, methods=["GET"]),
    Route("/v1/purchases/{purchase_id}/refund", refund_purchase, methods=["POST"]),
]
