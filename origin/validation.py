"""Reading and checking JSON request bodies."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

from starlette.requests import Request

from shared import problems
from shared.problems import Problem

MAX_BODY_BYTES = 64 * 1024
CURRENCY = re.compile(r"[A-Z]{3}")
# ASCII digits only, and at most two decimals, the minor unit of most
# currencies; "4.99" but not "4.999" or other scripts' digits.
AMOUNT = re.compile(r"[0-9]{1,9}(\.[0-9]{1,2})?")
JSON_MEDIA_TYPES = frozenset({"application/json"})


def invalid(detail: str, field: str | None = None) -> Problem:
    extensions = {"errors": [{"field": field, "detail": detail}]} if field else {}
    return Problem(problems.INVALID_REQUEST, detail, **extensions)


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise invalid(f"body has the key '{key}' twice")
        result[key] = value
    return result


async def read_body(request: Request) -> bytes:
    """Return the request body, reading no more than ``MAX_BODY_BYTES``."""
    too_large = Problem(
        problems.PAYLOAD_TOO_LARGE, f"body exceeds {MAX_BODY_BYTES} bytes"
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise too_large
    return bytes(body)


async def read_object(request: Request) -> tuple[dict[str, Any], bytes]:
    """Return the JSON object of the body and its raw bytes.

    A body without ``Content-Type`` is read as JSON; any type other than
    ``application/json`` is rejected with 415.
    """
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in JSON_MEDIA_TYPES:
            raise Problem(
                problems.UNSUPPORTED_MEDIA_TYPE,
                f"send the body as application/json, not {media_type[:60]!r}",
            )
    body = await read_body(request)
    try:
        data = json.loads(body, object_pairs_hook=_reject_duplicates)
    except Problem:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers malformed JSON, bad UTF-8 and integers longer
        # than Python converts; RecursionError covers deep nesting.
        detail = str(exc)[:200] if isinstance(exc, ValueError) else "nested too deep"
        raise invalid(f"body is not valid JSON: {detail}") from None
    if not isinstance(data, dict):
        raise invalid("body must be a JSON object")
    return data, body


def _check_storable(text: str, name: str) -> None:
    # JSON escapes allow a lone UTF-16 surrogate, which has no UTF-8
    # encoding, and NUL, which PostgreSQL's text type rejects: either would
    # fail the insert with a 500. Fields that are read are checked; fields
    # that the API ignores are never stored.
    if "\x00" in text:
        raise invalid(f"'{name}' contains a NUL character (\\u0000)", name)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(
            f"'{name}' contains an unpaired UTF-16 surrogate, which is not text", name
        ) from None


def string_field(
    data: dict[str, Any],
    name: str,
    *,
    max_length: int = 256,
    pattern: re.Pattern[str] | None = None,
) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value.strip():
        raise invalid(f"'{name}' must be a non-empty string", name)
    _check_storable(value, name)
    if len(value) > max_length:
        raise invalid(f"'{name}' exceeds {max_length} characters", name)
    if pattern is not None and not pattern.fullmatch(value):
        raise invalid(f"'{name}' has an invalid format", name)
    return value


def price_field(data: dict[str, Any], name: str) -> tuple[Decimal, str]:
    price = data.get(name)
    if not isinstance(price, dict):
        raise invalid(f"'{name}' must be an object with amount and currency", name)
    amount_text = price.get("amount")
    if not isinstance(amount_text, str) or not AMOUNT.fullmatch(amount_text):
        raise invalid(
            f"'{name}.amount' must be a decimal string such as \"4.99\"", name
        )
    try:
        amount = Decimal(amount_text)
    except InvalidOperation:
        raise invalid(f"'{name}.amount' is not a number", name) from None
    if amount <= 0:
        raise invalid(f"'{name}.amount' must be greater than zero", name)
    currency = price.get("currency")
    if not isinstance(currency, str) or not CURRENCY.fullmatch(currency):
        raise invalid(
            f"'{name}.currency' must be an ISO 4217 code such as \"EUR\"", name
        )
    return amount, currency


def number_field(
    data: dict[str, Any], name: str, *, default: float, minimum: float, maximum: float
) -> float:
    value = data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid(f"'{name}' must be a number", name)
    if not minimum <= value <= maximum:
        raise invalid(f"'{name}' must be between {minimum:g} and {maximum:g}", name)
    return float(value)
