"""An httpx transport over the Workers ``fetch`` API, for the edge on Workers.

httpx's default transport opens sockets, which Pyodide does not offer, so
on Workers the edge sends its requests to the origin and to an HTTP
upstream through the runtime's ``fetch``. The module imports nothing from
the edge, so the smoke test can load it into workerd on its own.

NOTE: the response body is read whole before it is returned, so a segment
is held in memory once. Reading the body's stream into an httpx byte
stream would avoid that. ``fetch`` decodes compressed bodies itself, so
``Content-Encoding`` and ``Content-Length`` are dropped from the response
headers. Timeouts are the runtime's, not httpx's.
"""

from __future__ import annotations

import httpx

# Headers that describe the encoded body, which fetch has already decoded.
DECODED_HEADERS = frozenset({"content-encoding", "content-length"})


class FetchTransport(httpx.AsyncBaseTransport):
    """Send each request with the Workers runtime's ``fetch``."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        from js import Object, fetch  # provided by the Workers runtime
        from pyodide.ffi import JsException, to_js

        body = await request.aread()
        init: dict[str, object] = {
            "method": request.method,
            "headers": [
                [name.decode("latin-1"), value.decode("latin-1")]
                for name, value in request.headers.raw
            ],
            # The edge never follows redirects: it reports them.
            "redirect": "manual",
        }
        if body:
            init["body"] = to_js(body)
        try:
            response = await fetch(str(request.url), Object.fromEntries(to_js(init)))
            content = bytes((await response.arrayBuffer()).to_py())
        except JsException as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        headers = [
            (str(name), str(value))
            for name, value in response.headers
            if str(name).lower() not in DECODED_HEADERS
        ]
        # A stream, not content=: httpx marks a response built from content
        # as already read, and the edge streams upstream bodies with aiter_raw.
        return httpx.Response(
            int(response.status),
            headers=headers,
            stream=httpx.ByteStream(content),
            request=request,
        )
