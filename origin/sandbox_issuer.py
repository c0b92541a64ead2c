"""The sandbox issuer's authentication page, as a bank's 3-D Secure page.

A sandbox intent that requires action names
``/v1/sandbox/authentications/{authentication_id}`` as its next action. The
viewer approves or fails the authentication there. The page then records the
result at the sandbox and runs the purchase's saga, which reads the intent
back and captures, or ends the purchase declined. With another payment
provider these routes answer 404.
"""

from __future__ import annotations

import html
import logging
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import select
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from origin.providers.base import REQUIRES_ACTION, from_minor_units
from origin.providers.sandbox import (
    AuthenticationClosed,
    AuthenticationNotFound,
    SandboxProvider,
)
from origin.state import Origin
from origin.store import purchases
from origin.validation import invalid, read_body
from shared import problems
from shared.problems import Problem

logger = logging.getLogger("segmentgate.origin.sandbox_issuer")

RESULTS = {"approve": True, "fail": False}
# Sec-Fetch-Site values of a request that the page itself, or the viewer
# typing the URL, sent.
OWN_FETCH_SITES = frozenset({"same-origin", "none"})
# The page is shown in the storefront's frame, so it may be framed by the
# origin itself and nothing else.
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'self'",
}

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Sandbox issuer: authentication</title>
<style>
body {{ font: 15px system-ui, sans-serif; margin: 1.5em; color: #1b1b1b; }}
button {{ font: inherit; padding: .5em 1.2em; margin-right: .5em; }}
.approve {{ background: #1d6b35; color: white; border: 0; }}
.fail {{ background: #fff; border: 1px solid #a33; color: #a33; }}
</style></head>
<body>
<h1>Sandbox issuer</h1>
{body}
</body></html>
"""


def _sandbox(origin: Origin) -> SandboxProvider:
    if origin.sandbox is None:
        raise Problem(
            problems.NOT_FOUND,
            "the origin uses another payment provider, which runs its own "
            "authentication pages",
        )
    return origin.sandbox


def _page(body: str, status_code: int = 200) -> Response:
    return HTMLResponse(
        PAGE.format(body=body), status_code=status_code, headers=HEADERS
    )


def _closed_page(intent: dict[str, Any], status_code: int) -> Response | None:
    """Return the page of an authentication that takes no result, if it is one."""
    if intent.get("authentication_result") is not None:
        result = html.escape(intent["authentication_result"])
        return _page(f"<p>This authentication is already {result}.</p>", status_code)
    if intent["status"] != REQUIRES_ACTION:
        # The purchase stopped waiting (canceled or voided after its
        # deadline), so a result could no longer change it.
        status = html.escape(intent["status"])
        return _page(
            f"<p>This authentication is closed: the payment is {status}.</p>",
            status_code,
        )
    return None


async def show_authentication(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    authentication_id = request.path_params["authentication_id"]
    try:
        intent = _sandbox(origin).describe_authentication(authentication_id)
    except AuthenticationNotFound as exc:
        raise Problem(problems.NOT_FOUND, str(exc)) from None
    closed = _closed_page(intent, 200)
    if closed is not None:
        return closed
    currency = html.escape(intent["currency"].upper())
    amount = from_minor_units(intent["amount"], currency)
    return _page(
        f"<p>Confirm the payment of <strong>{amount} {currency}</strong> "
        "with your card ending in 3184.</p>"
        '<form method="post">'
        '<button class="approve" name="result" value="approve">'
        "Complete authentication</button>"
        '<button class="fail" name="result" value="fail">'
        "Fail authentication</button></form>"
    )


def _reject_cross_site(request: Request) -> None:
    """Raise 403 for a result that another site's page posted (CSRF).

    Browsers name the sending site in ``Sec-Fetch-Site``, and older ones
    only in ``Origin``. A client that sends neither, such as curl, is let
    through.
    """
    fetch_site = request.headers.get("sec-fetch-site")
    sender = request.headers.get("origin")
    if fetch_site is not None:
        # The browser's own verdict, which stays correct behind a proxy
        # that rewrites the Host header.
        foreign = fetch_site not in OWN_FETCH_SITES
    else:
        foreign = sender is not None and urlsplit(sender).netloc != request.url.netloc
    if not foreign:
        return
    # The authentication id is not logged because anyone who has it can
    # approve the payment.
    logger.warning(
        "rejected a sandbox authentication result posted from another site "
        "(Origin %r, Sec-Fetch-Site %r)",
        sender,
        fetch_site,
    )
    raise Problem(
        problems.FORBIDDEN,
        "the result was posted from another site's page, so it was rejected: "
        "approve or fail on the issuer's page itself",
    )


async def complete_authentication(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    sandbox = _sandbox(origin)
    authentication_id = request.path_params["authentication_id"]
    _reject_cross_site(request)
    form = parse_qs((await read_body(request)).decode("utf-8", "replace"))
    choice = (form.get("result") or [""])[0]
    if choice not in RESULTS:
        raise invalid("'result' must be 'approve' or 'fail'", "result")
    try:
        intent = await sandbox.complete_authentication(
            authentication_id, RESULTS[choice]
        )
    except AuthenticationNotFound as exc:
        raise Problem(problems.NOT_FOUND, str(exc)) from None
    except AuthenticationClosed as exc:
        # A browser posted the form of a page loaded before the purchase
        # stopped waiting, so it gets the closed page, not a JSON problem.
        if "text/html" in request.headers.get("accept", ""):
            closed = _closed_page(
                sandbox.describe_authentication(authentication_id), 409
            )
            if closed is not None:
                return closed
        raise Problem(problems.CONFLICT, str(exc), result=exc.result) from None
    async with origin.engine.connect() as connection:
        purchase_id = (
            await connection.execute(
                select(purchases.c.purchase_id).where(
                    purchases.c.payment_intent_id == intent.id,
                    purchases.c.provider == sandbox.name,
                )
            )
        ).scalar()
    logger.info(
        "sandbox authentication of %s (purchase %s): %s",
        intent.id,
        purchase_id,
        choice,
    )
    if purchase_id is not None:
        # NOTE: a runner that has the lease may have read the intent before
        # this result, and the purchase then moves at its next check,
        # action_poll_seconds later at most.
        await origin.saga.resume(purchase_id)
    verb = "approved" if RESULTS[choice] else "failed"
    return _page(f"<p>Authentication {verb}. You can close this window.</p>")


routes = [
    Route(
        "/v1/sandbox/authentications/{authentication_id}",
        show_authentication,
        methods=["GET"],
    ),
    Route(
        "/v1/sandbox/authentications/{authentication_id}",
        complete_authentication,
        methods=["POST"],
    ),
]
