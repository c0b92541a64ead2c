"""Error handling that both services share: every error is problem details."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from shared import problems
from shared.problems import REASON_HEADER, Problem

__all__ = ["REASON_HEADER", "join_routes", "problem_handlers", "problem_response"]

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]

_HTTP_STATUS_PROBLEMS = {
    400: problems.INVALID_REQUEST,
    404: problems.NOT_FOUND,
    405: problems.METHOD_NOT_ALLOWED,
}


def problem_response(request: Request, problem: Problem) -> Response:
    """Render ``problem`` for ``request``, never to be cached."""
    response = problem.to_response(instance=request.scope.get("path"))
    response.headers["Cache-Control"] = "no-store"
    return response


def problem_handlers(logger: logging.Logger) -> dict[type[Exception], ExceptionHandler]:
    """Return Starlette exception handlers that respond with problem details."""

    async def handle_problem(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, Problem):
            raise exc
        return problem_response(request, exc)

    async def handle_http_exception(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, HTTPException):
            raise exc
        kind = _HTTP_STATUS_PROBLEMS.get(exc.status_code, problems.INVALID_REQUEST)
        # Keep headers such as Allow, which a 405 must carry.
        headers = dict(exc.headers or {})
        return problem_response(request, Problem(kind, exc.detail, headers=headers))

    async def handle_error(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(request, Problem(problems.INTERNAL))

    async def handle_disconnect(request: Request, exc: Exception) -> Response:
        # The client left while sending its body, so no one reads this response.
        logger.info(
            "client disconnected during %s %s", request.method, request.url.path
        )
        return Response(status_code=400)

    return {
        ClientDisconnect: handle_disconnect,
        Problem: handle_problem,
        HTTPException: handle_http_exception,
        Exception: handle_error,
    }


def join_routes(routes: Sequence[Route]) -> list[Route]:
    """Join routes that share a path into one route per path.

    Starlette sends 405 from the first route whose path matches, with only
    that route's methods in ``Allow``, so one route per path lists them all.
    """
    handlers: dict[str, dict[str, Callable[..., Any]]] = {}
    for route in routes:
        methods = (route.methods or {"GET"}) - {"HEAD"}
        by_method = handlers.setdefault(route.path, {})
        by_method.update(dict.fromkeys(methods, route.endpoint))
    return [
        Route(path, _dispatch(by_method), methods=sorted(by_method))
        if len(by_method) > 1
        else next(route for route in routes if route.path == path)
        for path, by_method in handlers.items()
    ]


def _dispatch(
    by_method: dict[str, Callable[[Request], Awaitable[Response]]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await by_method[method](request)

    return endpoint
