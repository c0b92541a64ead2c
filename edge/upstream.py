"""Media sources of the edge: a directory or an HTTP origin.

Both upstreams take a checked media path (``content_id/...``), stream the
bytes without loading a segment into memory, and honour ``Range`` and
``HEAD``. Playlists are read in chunks so the rewriter can bound its buffer.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import time
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate
from pathlib import Path
from typing import Protocol

import anyio
import httpx
from cachetools import LRUCache, TTLCache
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from shared.problems import (
    NOT_FOUND,
    RANGE_NOT_SATISFIABLE,
    UPSTREAM_UNAVAILABLE,
    Problem,
)

MEDIA_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".m3u": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".m4a": "audio/mp4",
    ".aac": "audio/aac",
    ".vtt": "text/vtt",
    ".key": "application/octet-stream",
}
PLAYLIST_SUFFIXES = (".m3u8", ".m3u")
CHUNK_SIZE = 64 * 1024
# Response headers of an HTTP upstream that describe the bytes and pass on.
_PASSED_HEADERS = (
    "content-type",
    "content-length",
    "content-range",
    "accept-ranges",
    "etag",
    "last-modified",
)


def media_type_for(path: str) -> str:
    return MEDIA_TYPES.get(
        os.path.splitext(path)[1].lower(), "application/octet-stream"
    )


def is_playlist(path: str) -> bool:
    return path.lower().endswith(PLAYLIST_SUFFIXES)


# Segments, keys and init segments are immutable, but their URLs carry one
# viewer's token: only that viewer's own cache may keep them.
MEDIA_CACHE_HEADERS = {"Cache-Control": "private, max-age=86400"}
_RANGE_SPEC = re.compile(r"([0-9]{0,19})-([0-9]{0,19})")


def parse_byte_ranges(header: str) -> list[tuple[int | None, int | None]] | None:
    """Parse a ``bytes=`` Range header; return None when it is not valid.

    Each range is ``(first, last)``; ``(None, n)`` is the last ``n`` bytes.
    """
    unit, _, specs = header.partition("=")
    if unit.strip().lower() != "bytes" or not specs.strip():
        return None
    ranges: list[tuple[int | None, int | None]] = []
    for spec in specs.split(","):
        match = _RANGE_SPEC.fullmatch(spec.strip())
        if match is None or match.group(0) == "-":
            return None
        first = int(match.group(1)) if match.group(1) else None
        last = int(match.group(2)) if match.group(2) else None
        if first is not None and last is not None and first > last:
            return None
        ranges.append((first, last))
    return ranges


def _satisfiable(first: int | None, last: int | None, size: int) -> bool:
    if first is None:
        return bool(last)
    return first < size


class _WithoutHeaders(Response):
    """Send a response as if the request lacked some headers."""

    def __init__(self, inner: Response, names: set[bytes]) -> None:
        self.inner = inner
        self.names = names
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [item for item in scope["headers"] if item[0] not in self.names]
        await self.inner({**scope, "headers": headers}, receive, send)


class Upstream(Protocol):
    def playlist_chunks(
        self, path: str, directives: dict[str, str]
    ) -> AsyncIterator[bytes]: ...

    async def media_response(
        self, path: str, request: Request, *, range_bound: bool = False
    ) -> Response: ...

    async def aclose(self) -> None: ...


class MemoryFiles:
    """Whole media files kept in memory, checked against a fresh stat.

    A file is read once, in a worker thread, and served from memory until
    its size or modification time changes. ``max_bytes`` bounds the total
    (least recently used files go first) and ``max_file_bytes`` each file.
    """

    def __init__(self, max_bytes: int, max_file_bytes: int) -> None:
        self._max_file_bytes = min(max_file_bytes, max_bytes)
        self._files: LRUCache[str, tuple[tuple[int, int], bytes]] = LRUCache(
            maxsize=max(max_bytes, 1), getsizeof=lambda entry: len(entry[1]) or 1
        )

    async def read(self, target: str, stat_result: os.stat_result) -> bytes | None:
        """Return the file's bytes, or None when it is too large to keep."""
        if stat_result.st_size > self._max_file_bytes:
            return None
        version = (stat_result.st_mtime_ns, stat_result.st_size)
        entry = self._files.get(target)
        if entry is not None and entry[0] == version:
            return entry[1]
        data = await anyio.Path(target).read_bytes()
        if len(data) != stat_result.st_size:
            # The file changed while it was read: serve it from disk instead.
            return None
        self._files[target] = (version, data)
        return data


# How long a media path's resolved location is trusted before the path is
# resolved again; the file itself is stat'ed on every request.
RESOLVED_PATH_SECONDS = 1.0


def _stat_headers(stat_result: os.stat_result) -> dict[str, str]:
    # The same ETag and Last-Modified as Starlette's FileResponse (1.x), so
    # a validator stays valid whichever way the file was sent.
    tag = f"{stat_result.st_mtime}-{stat_result.st_size}".encode()
    return {
        "accept-ranges": "bytes",
        "etag": f'"{hashlib.md5(tag, usedforsecurity=False).hexdigest()}"',
        "last-modified": formatdate(stat_result.st_mtime, usegmt=True),
    }


class FileUpstream:
    """Media under a local directory, ``{root}/{content_id}/...``.

    With ``memory`` playlists and GETs of whole files that fit are read from
    memory; ranges, HEAD and larger files are sent by FileResponse from disk.
    """

    def __init__(
        self,
        root: Path,
        memory: MemoryFiles | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.root = root.resolve()
        self.memory = memory
        # Resolving a path costs an lstat per component, twice, which was a
        # third of a segment request. Like nginx's open_file_cache_valid, a
        # resolved path is reused for RESOLVED_PATH_SECONDS. A symlink that
        # changes meanwhile is followed as it was for at most that long.
        self._resolved: TTLCache[str, str] = TTLCache(
            maxsize=8192, ttl=RESOLVED_PATH_SECONDS, timer=clock
        )

    def _resolve(self, path: str) -> str:
        target = self._resolved.get(path)
        if target is not None:
            return target
        content_root = os.path.realpath(self.root / path.split("/", 1)[0])
        target = os.path.realpath(self.root / path)
        if not target.startswith(content_root + os.sep):
            raise Problem(NOT_FOUND, f"no media at /{path}")
        self._resolved[path] = target
        return target

    def _file(self, path: str) -> tuple[str, os.stat_result]:
        """Return the real path of a media file and its stat result.

        The path was checked already; resolving also catches symlinks that
        lead out of the content item's directory. The stat runs on every
        request, so a replaced file is noticed at once, and on the event
        loop, because a thread hop costs more than a stat of a local file.
        """
        target = self._resolve(path)
        try:
            stat_result = os.stat(target)
        except OSError:
            raise Problem(NOT_FOUND, f"no media at /{path}") from None
        if not stat.S_ISREG(stat_result.st_mode):
            raise Problem(NOT_FOUND, f"no media at /{path}")
        return target, stat_result

    async def playlist_chunks(
        self, path: str, directives: dict[str, str]
    ) -> AsyncIterator[bytes]:
        # A file is a finished playlist: LL-HLS delivery directives, which ask
        # a live packager to block or to send a delta, do not apply.
        target, stat_result = self._file(path)
        if self.memory is not None:
            data = await self.memory.read(target, stat_result)
            if data is not None:
                yield data
                return
        async with await anyio.open_file(target, "rb") as handle:
            while chunk := await handle.read(CHUNK_SIZE):
                yield chunk

    async def media_response(
        self, path: str, request: Request, *, range_bound: bool = False
    ) -> Response:
        """Serve a file, honouring Range.

        With ``range_bound`` the gate allowed one byte range only, so If-Range
        is dropped: a stale validator would otherwise widen the range to the
        whole file.
        """
        target, stat_result = self._file(path)
        range_header = request.headers.get("range")
        whole_get = range_header is None and request.method == "GET"
        if self.memory is not None and whole_get:
            data = await self.memory.read(target, stat_result)
            if data is not None:
                headers = {**MEDIA_CACHE_HEADERS, **_stat_headers(stat_result)}
                return Response(data, media_type=media_type_for(path), headers=headers)
        response = FileResponse(
            target,
            media_type=media_type_for(path),
            headers=MEDIA_CACHE_HEADERS,
            stat_result=stat_result,
        )
        if range_header is None:
            return response
        ranges = parse_byte_ranges(range_header)
        if ranges is None:
            # RFC 9110 section 14.2: a server ignores a Range it cannot parse.
            return _WithoutHeaders(response, {b"range", b"if-range"})
        size = stat_result.st_size
        if not any(_satisfiable(first, last, size) for first, last in ranges):
            raise Problem(
                RANGE_NOT_SATISFIABLE,
                f"no requested range is inside the {size} bytes of /{path}",
                headers={"Content-Range": f"bytes */{size}"},
            )
        return _WithoutHeaders(response, {b"if-range"}) if range_bound else response

    async def aclose(self) -> None:
        return None


class UpstreamMemory:
    """Whole responses of an HTTP upstream kept in memory for ``ttl`` seconds.

    Segments, keys and init segments do not change under one URI, so the
    bytes are not revalidated before ``ttl`` ends. ``max_bytes`` bounds the
    total and ``max_file_bytes`` each response.
    """

    def __init__(self, max_bytes: int, max_file_bytes: int, ttl: float) -> None:
        self.max_file_bytes = min(max_file_bytes, max_bytes)
        self._responses: TTLCache[str, tuple[dict[str, str], bytes]] = TTLCache(
            maxsize=max(max_bytes, 1),
            ttl=ttl,
            getsizeof=lambda entry: len(entry[1]) or 1,
        )

    def get(self, path: str) -> tuple[dict[str, str], bytes] | None:
        return self._responses.get(path)

    def put(self, path: str, headers: dict[str, str], body: bytes) -> None:
        if len(body) <= self.max_file_bytes:
            self._responses[path] = (headers, body)


# Request headers after which a response is not the whole file as it is.
_CONDITIONAL_HEADERS = ("range", "if-range", "if-none-match", "if-modified-since")


class HttpUpstream:
    """Media behind an HTTP origin, ``{base_url}/{content_id}/...``.

    With ``memory`` a GET of a whole file that fits is kept and sent from
    memory; ranges, conditional requests and HEAD always go upstream.
    """

    def __init__(
        self,
        base_url: str,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        memory: UpstreamMemory | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            follow_redirects=False,
            transport=transport,
        )
        self.memory = memory

    async def _open(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        request = self._client.build_request(
            method, "/" + path, headers=headers, params=params
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise Problem(
                UPSTREAM_UNAVAILABLE, f"media upstream failed: {exc}"
            ) from exc
        if response.status_code == 404:
            await response.aclose()
            raise Problem(NOT_FOUND, f"no media at /{path}")
        if response.status_code >= 400 and response.status_code != 416:
            await response.aclose()
            raise Problem(
                UPSTREAM_UNAVAILABLE,
                f"media upstream answered {response.status_code} for /{path}",
            )
        return response

    async def playlist_chunks(
        self, path: str, directives: dict[str, str]
    ) -> AsyncIterator[bytes]:
        response = await self._open("GET", path, {}, directives)
        try:
            async for chunk in response.aiter_raw():
                yield chunk
        finally:
            await response.aclose()

    async def media_response(
        self, path: str, request: Request, *, range_bound: bool = False
    ) -> Response:
        memory = self.memory
        whole_get = request.method == "GET" and not any(
            name in request.headers for name in _CONDITIONAL_HEADERS
        )
        if memory is not None and whole_get:
            cached = memory.get(path)
            if cached is not None:
                return Response(cached[1], headers=cached[0])
        # A range-bound grant drops If-Range, which could widen the range.
        names = ["range", "if-none-match", "if-modified-since"]
        if not range_bound:
            names.append("if-range")
        forwarded = {
            name: request.headers[name] for name in names if name in request.headers
        }
        response = await self._open(request.method, path, forwarded)
        headers = {
            name: response.headers[name]
            for name in _PASSED_HEADERS
            if name in response.headers
        }
        headers.setdefault("content-type", media_type_for(path))
        headers.update(MEDIA_CACHE_HEADERS)
        length = response.headers.get("content-length", "")
        if (
            memory is not None
            and whole_get
            and response.status_code == 200
            and length.isdigit()
            and int(length) <= memory.max_file_bytes
        ):
            body = await _read_raw(response)
            if len(body) == int(length):
                memory.put(path, headers, body)
            return Response(body, headers=headers)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers=headers,
            background=BackgroundTask(response.aclose),
        )

    async def aclose(self) -> None:
        await self._client.aclose()


async def _read_raw(response: httpx.Response) -> bytes:
    # Raw bytes, as the streaming path sends them: no content decoding.
    try:
        return b"".join([chunk async for chunk in response.aiter_raw()])
    except httpx.HTTPError as exc:
        raise Problem(UPSTREAM_UNAVAILABLE, f"media upstream failed: {exc}") from exc
    finally:
        await response.aclose()
