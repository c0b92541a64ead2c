"""Measure the edge's per-request work against baselines from the same run.

    python benchmarks/hot_path.py

Prints ratios, not absolute times, so results compare across machines:

* rewriting a 15-segment media playlist against splitting and joining its
  lines unchanged (the least any line-based rewriter must do);
* verifying a segment's URI token against one bare HMAC-SHA256 of the same
  input with the standard library;
* a segment request without a token through the whole edge application
  (middleware, gate, problem response, access log, metrics) with a
  malformed URI token against the
  same request to a bare Starlette route that returns 401.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import timeit
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from edge import EdgeSettings, create_app
from edge.rewriter import PlaylistRewriter
from edge.uri_tokens import UriSigner
from shared.tokens import PlaybackClaims

MEDIA_ROOT = Path(__file__).resolve().parent.parent / "media"
PLAYLIST = (MEDIA_ROOT / "sample/v360/index.m3u8").read_bytes()
SECRET = b"s" * 32
CLAIMS = PlaybackClaims("ps_bench", "sample", "vr_bench", 2_000_000_000, False, 0, 10.0)


def best(statement, number: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=7)) / number


async def _request(app: ASGIApp, path: str) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"sg=not-a-token",
        "root_path": "",
        "headers": [(b"host", b"edge.test")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    await app(scope, receive, send)
    return int(messages[0]["status"])


def best_request(app: ASGIApp, path: str, number: int) -> float:
    # CPU time of this process, so other processes on a busy machine
    # inflate the result less than they would inflate wall-clock time.
    async def run() -> float:
        started = time.process_time()
        for _ in range(number):
            await _request(app, path)
        return (time.process_time() - started) / number

    return min(asyncio.run(run()) for _ in range(7))


def request_times() -> tuple[float, float]:
    """Time a denied segment request on the edge and on a bare route."""

    async def unauthorized(request: Request) -> Response:
        return Response(b"", status_code=401)

    # The origin is not running: keep its failures and the access log quiet.
    logging.disable(logging.CRITICAL)
    bare = Starlette(routes=[Route("/{path:path}", unauthorized)])
    edge = create_app(
        EdgeSettings(
            origin_url="http://127.0.0.1:9",
            media_root=MEDIA_ROOT,
            uri_secrets=[SECRET],
        )
    )
    path = "/sample/v360/seg_007.ts"
    return best_request(edge, path, 1000), best_request(bare, path, 1000)


def measure(scale: float = 1.0) -> dict[str, float]:
    """Time each step; ``scale`` shortens the loops (1.0 is the full run)."""
    signer = UriSigner([SECRET])
    session = signer.session_part(CLAIMS)

    def authorize(uri: str, scope: str) -> str:
        return signer.mint(session, scope, "/sample/v360/" + uri)

    def rewrite() -> bytes:
        return PlaylistRewriter(authorize).rewrite(PLAYLIST)

    def copy_lines() -> bytes:
        return b"\n".join(PLAYLIST.split(b"\n"))

    path = "/sample/v360/seg_007.ts"
    token = signer.mint(session, "s14000", path)
    message = f"{token.rsplit('.', 1)[0]}\n{path}".encode()

    def verify() -> object:
        return signer.verify(token, path)

    def bare_hmac() -> bytes:
        return hmac.new(SECRET, message, hashlib.sha256).digest()

    many, few = max(1, round(20_000 * scale)), max(1, round(200 * scale))
    rewrite_time, copy_time = best(rewrite, few), best(copy_lines, many)
    verify_time, hmac_time = best(verify, many), best(bare_hmac, many)
    return {
        "rewrite_media_playlist_us": round(rewrite_time * 1e6, 1),
        "rewrite_vs_line_copy": round(rewrite_time / copy_time, 1),
        "verify_uri_token_us": round(verify_time * 1e6, 2),
        "verify_vs_bare_hmac": round(verify_time / hmac_time, 2),
    }


def main() -> None:
    figures = measure()
    print(
        f"rewrite media playlist  {figures['rewrite_media_playlist_us']:9.1f} us  "
        f"{figures['rewrite_vs_line_copy']:7.1f}x line copy"
    )
    print(
        f"verify URI token        {figures['verify_uri_token_us']:9.1f} us  "
        f"{figures['verify_vs_bare_hmac']:7.1f}x bare HMAC"
    )
    edge_time, bare_time = request_times()
    print(
        f"deny segment request    {edge_time * 1e6:9.1f} us  "
        f"{edge_time / bare_time:7.1f}x bare route"
    )


if __name__ == "__main__":
    main()
