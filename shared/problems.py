"""RFC 9457 problem details with stable type URIs.

Every error that either service returns is a :class:`Problem`. Its ``type``
is a URN that never changes once published, so clients branch on it rather
than on the human-readable title or detail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:segmentgate:problem:"
REASON_HEADER = "Segmentgate-Reason"


@dataclass(frozen=True)
class ProblemType:
    """A kind of error: its slug, HTTP status and short title."""

    slug: str
    status: int
    title: str

    @property
    def uri(self) -> str:
        return TYPE_PREFIX + self.slug


INVALID_REQUEST = ProblemType("invalid-request", 400, "Invalid request")
INVALID_PATH = ProblemType("invalid-path", 400, "Invalid media path")
IDEMPOTENCY_KEY_MISSING = ProblemType(
    "idempotency-key-missing", 400, "Idempotency-Key header is missing"
)
UNAUTHORIZED = ProblemType("unauthorized", 401, "Authentication required")
TOKEN_MISSING = ProblemType("token-missing", 401, "Playback token is missing")
TOKEN_EXPIRED = ProblemType("token-expired", 401, "Playback token has expired")
PREVIEW_ENDED = ProblemType("preview-ended", 402, "Preview ended")
FORBIDDEN = ProblemType("forbidden", 403, "Not allowed")
PURCHASE_BLOCKED = ProblemType(
    "purchase-blocked", 403, "Purchase blocked by the risk checks"
)
TOKEN_INVALID = ProblemType("token-invalid", 403, "Playback token is invalid")
WRONG_CONTENT = ProblemType("wrong-content", 403, "Playback token is for other content")
NOT_FOUND = ProblemType("not-found", 404, "Not found")
CONTENT_WITHDRAWN = ProblemType("content-withdrawn", 410, "Content was withdrawn")
ORIGIN_UNREACHABLE = ProblemType(
    "origin-unreachable", 503, "Entitlements cannot be confirmed with the origin"
)
METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", 405, "Method not allowed")
CONFLICT = ProblemType("conflict", 409, "Conflict with the current state")
IDEMPOTENCY_KEY_IN_USE = ProblemType(
    "idempotency-key-in-use", 409, "A request with this Idempotency-Key is running"
)
IDEMPOTENCY_KEY_REUSED = ProblemType(
    "idempotency-key-reused", 422, "Idempotency-Key was used with another body"
)
UNPROCESSABLE = ProblemType("unprocessable", 422, "Request cannot be processed")
UNSUPPORTED_MEDIA_TYPE = ProblemType(
    "unsupported-media-type", 415, "Unsupported media type"
)
RANGE_NOT_SATISFIABLE = ProblemType(
    "range-not-satisfiable", 416, "Range not satisfiable"
)
PAYLOAD_TOO_LARGE = ProblemType("payload-too-large", 413, "Payload too large")
UPSTREAM_UNAVAILABLE = ProblemType(
    "upstream-unavailable", 502, "Upstream is unavailable"
)
UPSTREAM_INVALID = ProblemType(
    "upstream-invalid", 502, "Upstream sent an invalid playlist"
)
INTERNAL = ProblemType("internal", 500, "Internal error")
ASSET_MISSING = ProblemType("asset-missing", 503, "A file of the page is not installed")
WEBHOOK_SIGNATURE_MISSING = ProblemType(
    "webhook-signature-missing", 400, "Webhook signature is missing"
)
WEBHOOK_SIGNATURE_INVALID = ProblemType(
    "webhook-signature-invalid", 400, "Webhook signature is invalid"
)
WEBHOOK_TIMESTAMP_OUT_OF_TOLERANCE = ProblemType(
    "webhook-timestamp-out-of-tolerance",
    400,
    "Webhook timestamp is outside the tolerance window",
)


class Problem(Exception):
    """An error to send to the client as problem details.

    ``reason`` is the slug of the problem type unless given; the edge also
    sends it in the ``Segmentgate-Reason`` header so players that cannot read
    a response body can still tell an expired token from a missing payment.
    """

    def __init__(
        self,
        problem_type: ProblemType,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or problem_type.title)
        self.problem_type = problem_type
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions

    @property
    def status(self) -> int:
        return self.problem_type.status

    def to_dict(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": self.problem_type.uri,
            "title": self.problem_type.title,
            "status": self.status,
        }
        if self.detail:
            body["detail"] = self.detail
        if instance:
            body["instance"] = instance
        body.update(self.extensions)
        return body

    def to_response(self, instance: str | None = None) -> Response:
        headers = {REASON_HEADER: self.problem_type.slug, **self.headers}
        return Response(
            json.dumps(self.to_dict(instance)),
            status_code=self.status,
            media_type=PROBLEM_MEDIA_TYPE,
            headers=headers,
        )
