"""Run an ASGI app for one Cloudflare Workers ``Request``.

The runtime's own ``asgi`` module in workerd 1.20240701.0 imports FastAPI,
passes headers as ``str`` where ASGI requires bytes, and keeps only the
first body chunk of a response, so the edge uses this bridge instead. The
module imports nothing outside the standard library at the top, so the
smoke test can load it into workerd on its own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote

Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [
        MutableMapping[str, Any],
        Callable[[], Awaitable[Message]],
        Callable[[Message], Awaitable[None]],
    ],
    Awaitable[None],
]
Scope = dict[str, Any]


def binding_values(env: Any) -> dict[str, str]:
    """Return the ``SEGMENTGATE_EDGE_*`` text bindings of ``env``.

    ``env`` is the runtime's binding object, read by attribute, or a mapping.
    """
    if isinstance(env, Mapping):
        names = list(env)
    else:
        names = [name for name in dir(env) if name.startswith("SEGMENTGATE_EDGE_")]
    values = {}
    for name in names:
        value = env[name] if isinstance(env, Mapping) else getattr(env, name, None)
        if name.startswith("SEGMENTGATE_EDGE_") and isinstance(value, str):
            values[name] = value
    return values


async def serve_fetch(app: ASGIApp, request: Any, env: Any) -> Any:
    """Run a Workers ``Request`` through ``app`` and return a ``Response``."""
    from js import URL, Object, Response  # provided by the Workers runtime
    from pyodide.ffi import to_js

    url = URL.new(request.url)
    path = str(url.pathname)
    headers = [
        (str(name).lower().encode("latin-1"), str(value).encode("latin-1"))
        for name, value in request.headers
    ]
    body = b""
    if request.method not in ("GET", "HEAD"):
        body = bytes((await request.arrayBuffer()).to_py())
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": str(request.method),
        "scheme": str(url.protocol).rstrip(":"),
        "path": unquote(path),
        "raw_path": path.encode("latin-1"),
        "query_string": str(url.search).lstrip("?").encode("latin-1"),
        "root_path": "",
        "headers": headers,
        "server": None,
        "client": None,
        "env": env,
    }
    status, response_headers, chunks = await _call(app, scope, body)
    content = b"".join(chunks)
    init = Object.fromEntries(to_js({"status": status, "headers": response_headers}))
    return Response.new(to_js(content) if content else None, init)


async def _call(
    app: ASGIApp, scope: Scope, body: bytes
) -> tuple[int, list[list[str]], list[bytes]]:
    received = False
    status = 500
    headers: list[list[str]] = []
    chunks: list[bytes] = []

    async def receive() -> Message:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            headers.extend(
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in message.get("headers", [])
            )
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))

    await app(scope, receive, send)
    return status, headers, chunks
