"""Access log of the edge: one record per request, with the denial reason.

Records go to the ``segmentgate.edge.access`` logger with the request's
method, path (never its query, which holds tokens), status and reason as
attributes, so operators and tests can read decisions without parsing text.
The same outcome moves the edge's request counters (:mod:`edge.metrics`).
:class:`edge.middleware.EdgeMiddleware` calls :func:`record_request` once
a request is finished.
"""

from __future__ import annotations

import logging

from starlette.types import Message, Scope

from edge.metrics import MODE_SCOPE_KEY, EdgeMetrics
from edge.paths import PATH_TOKEN_SCOPE_KEY

REASON_HEADER = b"segmentgate-reason"
CONTROL_PREFIX = "/_edge/"
logger = logging.getLogger("segmentgate.edge.access")


def _has_playback_token(scope: Scope) -> bool:
    """Tell a playback token (a JWT) from a URI token without parsing the query."""
    if scope.get(PATH_TOKEN_SCOPE_KEY):
        return True
    if b"sg=eyJ" in scope.get("query_string", b""):
        return True
    return any(name == b"authorization" for name, _ in scope.get("headers", ()))


def response_reason(message: Message) -> str:
    """Return the ``Segmentgate-Reason`` of a response start message, or ``""``."""
    reason = ""
    for name, value in message.get("headers", ()):
        if name.lower() == REASON_HEADER:
            reason = value.decode("latin-1")
    return reason


def record_request(
    scope: Scope,
    status: int,
    reason: str,
    seconds: float,
    metrics: EdgeMetrics | None,
) -> None:
    """Log one finished request and count it in ``metrics``.

    ``status`` is 500 when the app raised before it sent a response.
    """
    # Building the record's arguments costs time on every request, so it
    # happens only for an enabled logger.
    if logger.isEnabledFor(logging.INFO):
        logger.info(
            "%s %s %d %s %.1fms",
            scope["method"],
            scope["path"],
            status,
            reason or "-",
            seconds * 1000,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "reason": reason,
            },
        )
    path = scope["path"]
    if metrics is None or path.startswith(CONTROL_PREFIX):
        return
    # Only a playlist request is counted by the kind of token it carries.
    playback_token = path.endswith(".m3u8") and _has_playback_token(scope)
    metrics.count_request(
        path, playback_token, status, reason, scope.get(MODE_SCOPE_KEY, "")
    )
