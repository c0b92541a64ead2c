"""The edge's HTTP upstream keeps whole segments in memory for a while.

The upstream is a real static HTTP server on 127.0.0.1 that records every
request, so the tests see which requests the memory answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge.upstream import HttpUpstream, UpstreamMemory
from shared.http import problem_handlers
from tests.harness import MEDIA_ROOT, MediaServer

SEGMENT = "/sample/v180/seg_003.ts"


@pytest.fixture(scope="module")
def media_server() -> Iterator[MediaServer]:
    server = MediaServer().start()
    yield server
    server.stop()


async def _client(upstream: HttpUpstream) -> AsyncIterator[httpx.AsyncClient]:
    async def media(request: Request) -> Response:
        return await upstream.media_response(request.path_params["path"], request)

    app = Starlette(
        routes=[Route("/{path:path}", media, methods=["GET", "HEAD"])],
        exception_handlers=problem_handlers(logging.getLogger("test")),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        yield client
    await upstream.aclose()


@pytest.fixture
async def client(media_server: MediaServer) -> AsyncIterator[httpx.AsyncClient]:
    media_server.requests.clear()
    memory = UpstreamMemory(1024 * 1024, 512 * 1024, ttl=600)
    async for client in _client(HttpUpstream(media_server.url, memory=memory)):
        yield client


async def test_second_get_from_memory(
    client: httpx.AsyncClient, media_server: MediaServer
) -> None:
    first = await client.get(SEGMENT)
    second = await client.get(SEGMENT)
    expected = (MEDIA_ROOT / SEGMENT.lstrip("/")).read_bytes()
    assert first.status_code == 200
    assert second.status_code == 200
    assert first.content == expected
    assert second.content == expected
    assert second.headers == first.headers
    assert second.headers["cache-control"] == "private, max-age=86400"
    assert media_server.requests == [SEGMENT]


async def test_ranges_and_head_go_upstream(
    client: httpx.AsyncClient, media_server: MediaServer
) -> None:
    await client.get(SEGMENT)
    partial = await client.get(SEGMENT, headers={"Range": "bytes=0-187"})
    head = await client.head(SEGMENT)
    conditional = await client.get(SEGMENT, headers={"If-None-Match": '"x"'})
    assert partial.status_code == 206
    assert len(partial.content) == 188
    assert head.status_code == 200
    assert conditional.status_code == 200
    assert media_server.requests == [SEGMENT] * 4


async def test_memory_expires(media_server: MediaServer) -> None:
    media_server.requests.clear()
    memory = UpstreamMemory(1024 * 1024, 512 * 1024, ttl=0.2)
    async for client in _client(HttpUpstream(media_server.url, memory=memory)):
        await client.get(SEGMENT)
        await asyncio.sleep(0.4)
        again = await client.get(SEGMENT)
    assert again.status_code == 200
    assert media_server.requests == [SEGMENT, SEGMENT]


async def test_without_memory_every_get_goes_upstream(
    media_server: MediaServer,
) -> None:
    media_server.requests.clear()
    async for client in _client(HttpUpstream(media_server.url)):
        for _ in range(2):
            assert (await client.get(SEGMENT)).status_code == 200
    assert media_server.requests == [SEGMENT, SEGMENT]
