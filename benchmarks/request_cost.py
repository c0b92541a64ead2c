"""CPU time of one segment and one playlist request inside the edge's app.

    python -m benchmarks request_cost [--requests 3000] [--profile]

The edge's ASGI app is called directly, with no server and no socket, next
to the plain FileResponse app and the bare app (the edge's file upstream
without the gate) from benchmarks/apps.py for the same files. The figures
are each application's own cost per request, without a server's share.
The origin runs in a child
process; the viewer bought the content, so a segment request checks a URI
token and a cached entitlement, and a playlist request verifies the
session's Ed25519 JWT and rewrites the playlist. ``--profile`` prints where
the edge's time goes (cProfile, top functions by own time).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import secrets
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from cryptography.fernet import Fernet
from starlette.types import ASGIApp, Message

from benchmarks.apps import bare, plain
from benchmarks.propagation import free_port
from benchmarks.servers import ServerProcess
from benchmarks.throughput import (
    PLAYLIST,
    SEGMENT,
    buyer_tokens,
    prepare_media,
)
from edge import EdgeSettings
from edge import create_app as create_edge
from edge.gate import Credentials
from segmentgate.stack import seed_catalog
from shared.tokens import TOKEN_PARAM


def _scope(target: str) -> dict[str, Any]:
    path, _, query = target.partition("?")
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000")],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "extensions": {"http.response.pathsend": {}},
    }


async def _call(app: ASGIApp, target: str) -> int:
    status = 0

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(_scope(target), receive, send)
    return status


async def cost_per_request(app: ASGIApp, target: str, count: int) -> float:
    """Return the mean CPU seconds of one request, after a warm-up."""
    for _ in range(50):
        status = await _call(app, target)
        if status != 200:
            raise RuntimeError(f"{target[:60]} returned {status}")
    started = time.process_time()
    for _ in range(count):
        await _call(app, target)
    return (time.process_time() - started) / count


async def gate_check_cost(edge_app: Any, target: str, count: int) -> float:
    """Return the mean CPU seconds of the gate's decision alone for ``target``.

    Only ``Gate.check`` runs: the token check, the entitlement and policy
    lookups, without the path checks, the middleware or the response.
    """
    path, _, query = target.partition("?")
    credentials = Credentials(query=tuple(parse_qs(query)[TOKEN_PARAM]))
    content_id = path.split("/")[1]
    gate = edge_app.state.edge.gate
    for _ in range(50):
        await gate.check(credentials, content_id, path)
    started = time.process_time()
    for _ in range(count):
        await gate.check(credentials, content_id, path)
    return (time.process_time() - started) / count


def _profile_report(profiler: cProfile.Profile, lines: int = 25) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(lines)
    return out.getvalue()


async def _measure_with_edge(
    origin_url: str, media: Path, count: int, report: Callable[[str], None] | None
) -> dict[str, Any]:
    edge_app = create_edge(
        EdgeSettings(
            origin_url=origin_url,
            media_root=media,
            uri_secrets=[secrets.token_bytes(32)],
            origin_token=os.environ["SEGMENTGATE_EDGE_TOKEN"],
        )
    )
    os.environ["BENCH_MEDIA_ROOT"] = str(media)
    plain_app, bare_app = plain(), bare()
    async with edge_app.router.lifespan_context(edge_app):
        _, playlist_query = await asyncio.to_thread(buyer_tokens, origin_url)
        await edge_app.state.edge.sync()
        segment_target = await _segment_target(edge_app, playlist_query)
        playlist_target = f"/{PLAYLIST}?{playlist_query}"
        figures: dict[str, Any] = {}
        for kind, edge_target, plain_target in (
            ("segment", segment_target, f"/{SEGMENT}"),
            ("playlist", playlist_target, f"/{PLAYLIST}"),
        ):
            edge_cost = await cost_per_request(edge_app, edge_target, count)
            plain_cost = await cost_per_request(plain_app, plain_target, count)
            bare_cost = await cost_per_request(bare_app, plain_target, count)
            figures[f"{kind}_edge_us"] = round(edge_cost * 1e6, 1)
            figures[f"{kind}_plain_us"] = round(plain_cost * 1e6, 1)
            figures[f"{kind}_bare_us"] = round(bare_cost * 1e6, 1)
            figures[f"{kind}_edge_vs_plain"] = round(edge_cost / plain_cost, 3)
            # The gate, the middleware and the playlist rewrite, as a share
            # of the same serving path without them.
            figures[f"{kind}_gate_overhead"] = round(edge_cost / bare_cost - 1, 3)
            if kind == "segment":
                check_cost = await gate_check_cost(edge_app, edge_target, count)
                figures["segment_gate_check_us"] = round(check_cost * 1e6, 1)
            if report is not None:
                profiler = cProfile.Profile()
                profiler.enable()
                await cost_per_request(edge_app, edge_target, count)
                profiler.disable()
                report(f"--- edge {kind} request, by own time ---")
                report(_profile_report(profiler))
    return figures


async def _segment_target(edge_app: ASGIApp, playlist_query: str) -> str:
    body: list[bytes] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            body.append(message.get("body", b""))

    await edge_app(_scope(f"/{PLAYLIST}?{playlist_query}"), receive, send)
    name = SEGMENT.rsplit("/", 1)[1]
    text = b"".join(body).decode()
    line = next(x for x in text.splitlines() if x.startswith(name))
    return f"/{SEGMENT}?{line.split('?', 1)[1]}"


def measure(args: argparse.Namespace, progress: Callable[[str], None]) -> dict:
    with tempfile.TemporaryDirectory(prefix="segmentgate-bench-") as directory:
        work = Path(directory)
        media = prepare_media(work)
        port = free_port()
        edge_token = secrets.token_urlsafe(16)
        admin_token = secrets.token_urlsafe(16)
        os.environ["SEGMENTGATE_EDGE_TOKEN"] = edge_token
        origin = ServerProcess(
            "hypercorn",
            "benchmarks.apps:origin",
            port,
            {
                "SEGMENTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{work}/origin.db",
                # Synthetic buyers share one address, so the risk engine only records.
                "SEGMENTGATE_RISK_MODE": "observe",
                "SEGMENTGATE_ADMIN_TOKEN": admin_token,
                "SEGMENTGATE_EDGE_TOKEN": edge_token,
                "SEGMENTGATE_MASTER_KEY": Fernet.generate_key().decode(),
            },
            log=work / "origin.log",
        )
        try:
            origin.wait_healthy("/healthz")
            asyncio.run(seed_catalog(origin.url, admin_token))
            progress(f"calling the edge app {args.requests} times per kind")
            report = progress if args.profile else None
            figures = asyncio.run(
                _measure_with_edge(origin.url, media, args.requests, report)
            )
        finally:
            origin.stop()
    return {"requests": args.requests, **figures}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--requests", type=int, default=3000,
                        help="requests timed per kind and app")  # fmt: skip
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print a cProfile report of the edge's requests",
    )


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    result = measure(
        parser.parse_args(), lambda text: print(text, file=sys.stderr, flush=True)
    )
    print(json.dumps(result))
