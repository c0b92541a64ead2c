"""A mock of both services that answers every operation with the spec's examples.

``segmentgate mock`` lets a storefront or a payment partner integrate
before a real origin runs. Each request is matched to an operation of
docs/openapi.yaml; the answer is that operation's first success response
with its example. A client picks another response or example with the
``Prefer`` header (RFC 7240), as other OpenAPI mock servers do:
``Prefer: code=404`` or ``Prefer: example=granted``.

NOTE: the mock checks neither credentials nor request bodies; the sandbox
mode of the real origin does.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import problems
from shared.contract import example_values, load_spec, operations, resolve
from shared.http import problem_handlers
from shared.problems import Problem

MOCK_HEADER = "Segmentgate-Mock-Operation"
_PARAMETER = re.compile(r"(\{[^}]+\})")
_PREFER = re.compile(r"(code|example)=([\w.-]+)")


@dataclass(frozen=True)
class MockedOperation:
    """One operation of the spec, matched by method and path pattern."""

    method: str
    template: str
    pattern: re.Pattern[str]
    operation: dict[str, Any]

    @property
    def specificity(self) -> int:
        # Literal text beats parameters: /v1/catalog wins over /{id}/{file}.
        return len(_PARAMETER.sub("", self.template))


def mocked_operations(spec: dict[str, Any]) -> list[MockedOperation]:
    """Return the spec's operations, the most specific path first."""
    found = []
    for path, method, operation in operations(spec):
        # The edge's file parameter may contain slashes; others are segments.
        pattern = "".join(
            ("(?:[^/]+/)*[^/]+" if part == "{file}" else "[^/]+")
            if part.startswith("{")
            else re.escape(part)
            for part in _PARAMETER.split(path)
        )
        found.append(
            MockedOperation(
                method.upper(), path, re.compile(f"{pattern}\\Z"), operation
            )
        )
    return sorted(found, key=lambda mocked: -mocked.specificity)


def _preferences(request: Request) -> dict[str, str]:
    return dict(_PREFER.findall(request.headers.get("prefer", "")))


def _choose_status(operation: dict[str, Any], preferred: str | None) -> str:
    responses = operation["responses"]
    if preferred is not None:
        if preferred not in responses:
            raise Problem(
                problems.INVALID_REQUEST,
                f"Prefer: code={preferred} is not documented for this operation; "
                f"documented: {', '.join(responses)}",
            )
        return preferred
    return min(status for status in responses if status.startswith("2"))


def _answer(
    spec: dict[str, Any], mocked: MockedOperation, request: Request
) -> Response:
    preferences = _preferences(request)
    status = _choose_status(mocked.operation, preferences.get("code"))
    response = resolve(spec, mocked.operation["responses"][status])
    headers = {MOCK_HEADER: mocked.operation.get("operationId", mocked.template)}
    for media_type, media in response.get("content", {}).items():
        examples = example_values(spec, media)
        if not examples:
            continue
        name = preferences.get("example", next(iter(examples)))
        if name not in examples:
            raise Problem(
                problems.INVALID_REQUEST,
                f"Prefer: example={name} is not an example of this response; "
                f"examples: {', '.join(examples)}",
            )
        body = examples[name]
        if media_type == problems.PROBLEM_MEDIA_TYPE:
            body = _problem_for(int(status), request.url.path)
        text = body if isinstance(body, str) else json.dumps(body)
        return Response(text, int(status), headers=headers, media_type=media_type)
    return Response(status_code=int(status), headers=headers)


def _problem_for(status: int, path: str) -> dict[str, Any]:
    """Return a problem body of the first problem type with ``status``."""
    kind = next(
        (
            value
            for value in vars(problems).values()
            if isinstance(value, problems.ProblemType) and value.status == status
        ),
        problems.INTERNAL,
    )
    body = Problem(kind, "an example answer of the mock").to_dict(instance=path)
    return {**body, "status": status}


def create_mock_app(spec: dict[str, Any] | None = None) -> Starlette:
    """Build an ASGI app that answers every operation of ``spec`` with examples."""
    spec = spec or load_spec()
    mocked = mocked_operations(spec)

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        matching = [m for m in mocked if m.pattern.match(request.url.path)]
        if not matching:
            raise Problem(problems.NOT_FOUND, "no operation of the spec has this path")
        for candidate in matching:
            if candidate.method == method:
                return _answer(spec, candidate, request)
        same_path = [m for m in matching if m.template == matching[0].template]
        allowed = ", ".join(sorted({m.method for m in same_path}))
        raise Problem(problems.METHOD_NOT_ALLOWED, headers={"Allow": allowed})

    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"]
    return Starlette(
        routes=[Route("/{path:path}", dispatch, methods=methods)],
        exception_handlers=problem_handlers(logging.getLogger("segmentgate.mock")),
    )
