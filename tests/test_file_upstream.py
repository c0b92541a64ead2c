"""The edge's file upstream: path confinement and whole files from memory."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from edge import upstream as upstream_module
from edge.upstream import FileUpstream, MemoryFiles
from shared.http import problem_handlers
from tests.harness import assert_problem

SEGMENT = bytes(range(256)) * 800  # 200 KiB


def _app(upstream: FileUpstream) -> Starlette:
    async def media(request: Request) -> Response:
        return await upstream.media_response(request.path_params["path"], request)

    return Starlette(
        routes=[Route("/{path:path}", media, methods=["GET", "HEAD"])],
        exception_handlers=problem_handlers(logging.getLogger("test")),
    )


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "film").mkdir(parents=True)
    (root / "film" / "seg_000.ts").write_bytes(SEGMENT)
    (tmp_path / "secret.ts").write_bytes(b"outside the media root")
    (root / "film" / "escape.ts").symlink_to(tmp_path / "secret.ts")
    (root / "other").mkdir()
    (root / "other" / "seg_000.ts").write_bytes(b"other content")
    (root / "film" / "sideways.ts").symlink_to(root / "other" / "seg_000.ts")
    return root


async def _client(upstream: FileUpstream) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app(upstream))
    async with httpx.AsyncClient(transport=transport, base_url="http://e") as client:
        yield client


@pytest.fixture
async def from_disk(media_root: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(FileUpstream(media_root)):
        yield client


@pytest.fixture
def memory() -> MemoryFiles:
    return MemoryFiles(max_bytes=1024 * 1024, max_file_bytes=512 * 1024)


@pytest.fixture
async def from_memory(
    media_root: Path, memory: MemoryFiles
) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(FileUpstream(media_root, memory)):
        yield client


@pytest.mark.parametrize("name", ["escape.ts", "sideways.ts"])
async def test_symlink_out_of_content_rejected(
    from_memory: httpx.AsyncClient, name: str
) -> None:
    response = await from_memory.get(f"/film/{name}")
    assert_problem(response, 404, "not-found")


async def test_directory_is_not_media(from_memory: httpx.AsyncClient) -> None:
    response = await from_memory.get("/film/")
    assert response.status_code == 404


async def test_memory_matches_disk(
    from_memory: httpx.AsyncClient, from_disk: httpx.AsyncClient
) -> None:
    cached = [await from_memory.get("/film/seg_000.ts") for _ in range(2)]
    disk = await from_disk.get("/film/seg_000.ts")
    for response in cached:
        assert response.status_code == 200
        assert response.content == SEGMENT
        for name in ("content-type", "content-length", "etag", "last-modified",
                     "cache-control", "accept-ranges"):  # fmt: skip
            assert response.headers[name] == disk.headers[name], name


async def test_changed_file_read_again(
    from_memory: httpx.AsyncClient, media_root: Path
) -> None:
    target = media_root / "film" / "seg_000.ts"
    first = await from_memory.get("/film/seg_000.ts")
    target.write_bytes(b"replaced")
    stat_result = target.stat()
    os.utime(target, ns=(stat_result.st_atime_ns, stat_result.st_mtime_ns + 10**9))
    second = await from_memory.get("/film/seg_000.ts")
    assert first.content == SEGMENT
    assert second.content == b"replaced"
    assert second.headers["etag"] != first.headers["etag"]


async def test_range_and_head_from_disk(from_memory: httpx.AsyncClient) -> None:
    partial = await from_memory.get("/film/seg_000.ts", headers={"Range": "bytes=0-9"})
    head = await from_memory.head("/film/seg_000.ts")
    assert partial.status_code == 206
    assert partial.content == SEGMENT[:10]
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(SEGMENT))
    assert head.content == b""


async def test_large_file_not_kept(media_root: Path) -> None:
    memory = MemoryFiles(max_bytes=1024 * 1024, max_file_bytes=1024)
    target = str((media_root / "film" / "seg_000.ts").resolve())
    async for client in _client(FileUpstream(media_root, memory)):
        response = await client.get("/film/seg_000.ts")
        assert response.content == SEGMENT
    assert await memory.read(target, os.stat(target)) is None


async def test_live_playlist_read_again(media_root: Path, memory: MemoryFiles) -> None:
    upstream = FileUpstream(media_root, memory)
    playlist = media_root / "film" / "index.m3u8"
    playlist.write_bytes(b"#EXTM3U\n#EXTINF:2,\nseg_000.ts\n")
    first = b"".join([chunk async for chunk in upstream.playlist_chunks(
        "film/index.m3u8", {})])  # fmt: skip
    playlist.write_bytes(b"#EXTM3U\n#EXTINF:2,\nseg_000.ts\n#EXTINF:2,\nseg_001.ts\n")
    stat_result = playlist.stat()
    os.utime(playlist, ns=(stat_result.st_atime_ns, stat_result.st_mtime_ns + 10**9))
    second = b"".join([chunk async for chunk in upstream.playlist_chunks(
        "film/index.m3u8", {})])  # fmt: skip
    assert first.endswith(b"seg_000.ts\n")
    assert second.endswith(b"seg_001.ts\n")


async def test_repointed_symlink_checked_again_after_reuse(media_root: Path) -> None:
    clock = [1000.0]
    link = media_root / "film" / "moving.ts"
    link.symlink_to(media_root / "film" / "seg_000.ts")
    upstream = FileUpstream(media_root, clock=lambda: clock[0])
    async for client in _client(upstream):
        assert (await client.get("/film/moving.ts")).content == SEGMENT
        link.unlink()
        link.symlink_to(media_root / "other" / "seg_000.ts")

        # Within the reuse period the resolved location is the one checked.
        reused = await client.get("/film/moving.ts")
        assert reused.content == SEGMENT

        clock[0] += upstream_module.RESOLVED_PATH_SECONDS + 0.1
        assert_problem(await client.get("/film/moving.ts"), 404, "not-found")
