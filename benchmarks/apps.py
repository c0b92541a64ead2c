"""ASGI app factories that the benchmarks start under each server.

Every factory reads its settings from the environment, as the servers'
command lines cannot pass arguments: the edge and the origin use their own
``SEGMENTGATE_*`` variables, the plain file server ``BENCH_MEDIA_ROOT``.
"""

from __future__ import annotations

import os
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Route

from edge import EdgeSettings
from edge import create_app as create_edge
from origin import OriginSettings
from origin import create_app as create_origin


def edge() -> Starlette:
    return create_edge(EdgeSettings.from_env())


def origin() -> Starlette:
    return create_origin(OriginSettings.from_env())


def plain() -> Starlette:
    """Serve ``BENCH_MEDIA_ROOT`` with Starlette's FileResponse and no checks."""
    root = Path(os.environ["BENCH_MEDIA_ROOT"]).resolve()

    async def serve(request: Request) -> Response:
        target = (root / request.path_params["path"]).resolve()
        if not target.is_relative_to(root) or not target.is_file():
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(target)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/_health", health), Route("/{path:path}", serve)])


def bare() -> Starlette:
    """Serve ``BENCH_MEDIA_ROOT`` as the edge does, minus the gate.

    The edge's own file upstream with its default memory cache, and none of
    the edge's checks or middleware: the baseline for the gate's overhead.
    """
    # Imported here so the other factories also run against older edges.
    from edge.upstream import FileUpstream, MemoryFiles

    upstream = FileUpstream(
        Path(os.environ["BENCH_MEDIA_ROOT"]),
        MemoryFiles(
            EdgeSettings.memory_cache_bytes, EdgeSettings.memory_cache_file_bytes
        ),
    )

    async def serve(request: Request) -> Response:
        return await upstream.media_response(request.path_params["path"], request)

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    return Starlette(routes=[Route("/_health", health), Route("/{path:path}", serve)])
