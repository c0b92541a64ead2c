"""``Deprecation`` and ``Sunset`` headers for operations the spec deprecates.

An operation marked ``deprecated: true`` in docs/openapi.yaml carries
``x-deprecated-at`` (the date it was deprecated) and ``x-sunset`` (the
date it may be removed). Its responses get ``Deprecation: @<epoch>``
(RFC 9745, a structured-field date) and ``Sunset: <HTTP date>`` (RFC 8594),
so clients learn of the removal from any response they already read.
"""

from __future__ import annotations

import datetime
import logging
import re
from dataclasses import dataclass
from email.utils import format_datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.contract import SPEC_PATH, load_spec, operations

_PARAMETER = re.compile(r"(\{[^}]+\})")
logger = logging.getLogger("segmentgate.deprecation")


@dataclass(frozen=True)
class DeprecatedOperation:
    """A deprecated operation: how to match its requests and what to send."""

    method: str
    path: re.Pattern[str]
    headers: tuple[tuple[bytes, bytes], ...]


def deprecated_operations(
    spec: dict[str, Any], *, edge: bool
) -> list[DeprecatedOperation]:
    """Return the deprecated operations of the edge's or the origin's paths.

    Edge operations are those with a ``servers`` entry of their own.
    """
    found = []
    for path, method, operation in operations(spec):
        if not operation.get("deprecated") or bool(operation.get("servers")) != edge:
            continue
        # Path parameters match one segment; a template with literal text
        # only matches itself.
        pattern = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part)
            for part in _PARAMETER.split(path)
        )
        found.append(
            DeprecatedOperation(
                method.upper(),
                re.compile(f"{pattern}\\Z"),
                _headers(operation["x-deprecated-at"], operation["x-sunset"]),
            )
        )
    return found


def spec_deprecations(*, edge: bool) -> list[DeprecatedOperation]:
    """Return the deprecated operations of docs/openapi.yaml, if it is there.

    A deployment without the source tree, such as a bundled Worker, has no
    spec to read and so sends no deprecation headers.
    """
    try:
        spec = load_spec()
    except FileNotFoundError:
        logger.warning("%s is missing; sending no Deprecation headers", SPEC_PATH)
        return []
    return deprecated_operations(spec, edge=edge)


def _midnight(value: Any) -> datetime.datetime:
    day = datetime.date.fromisoformat(str(value))
    return datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)


def _headers(deprecated_at: Any, sunset: Any) -> tuple[tuple[bytes, bytes], ...]:
    since = int(_midnight(deprecated_at).timestamp())
    until = format_datetime(_midnight(sunset), usegmt=True)
    return ((b"deprecation", f"@{since}".encode()), (b"sunset", until.encode()))


class DeprecationMiddleware:
    """Add the headers of a deprecated operation to each of its responses."""

    def __init__(self, app: ASGIApp, *, deprecated: list[DeprecatedOperation]) -> None:
        self.app = app
        self.deprecated = deprecated

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.deprecated:
            await self.app(scope, receive, send)
            return
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        match = next(
            (
                operation
                for operation in self.deprecated
                if operation.method == method and operation.path.match(scope["path"])
            ),
            None,
        )
        if match is None:
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in match.headers:
                    headers.append(name.decode(), value.decode())
            await send(message)

        await self.app(scope, receive, send_with_headers)
