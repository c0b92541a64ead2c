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
AMOUNT = re.compile(r"\d{1,9}(\.\d{1,4})?")


def invalid(detail: str, field: str | None = None) -> Problem:
    extensions = {"errors": [{"field": field, "detail": detail}]} if field else {}
    return Problem(problems.INVALID_REQUEST, detail, **extensions)


async def read_object(request: Request) -> tuple[dict[str, Any], bytes]:
    """Return the JSON object of the body and its raw bytes."""
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise Problem(
            problems.PAYLOAD_TOO_LARGE, f"body exceeds {MAX_BODY_BYTES} bytes"
        )
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise invalid(f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise invalid("body must be a JSON object")
    return data, body


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
