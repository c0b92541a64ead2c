"""Cloudflare Python Worker entry: the edge's Starlette app behind ``asgi.fetch``.

The Worker's variables and secrets arrive as ``env`` on each request; the app
is built once per isolate from the first request's ``env``, so module memory
(keys, entitlement cache, URI session cache) is per isolate.
"""

from __future__ import annotations

import os
from typing import Any

from edge.app import create_app
from edge.settings import EdgeSettings

_app: Any = None
_SETTINGS = (
    "SEGMENTGATE_EDGE_ORIGIN_URL",
    "SEGMENTGATE_EDGE_UPSTREAM_URL",
    "SEGMENTGATE_EDGE_URI_SECRETS",
    "SEGMENTGATE_EDGE_EXTRA_HOSTS",
    "SEGMENTGATE_EDGE_METRICS_TOKEN",
)


def _app_for(env: Any) -> Any:
    global _app
    if _app is None:
        for name in _SETTINGS:
            value = getattr(env, name, None)
            if value:
                os.environ[name] = str(value)
        _app = create_app(EdgeSettings.from_env())
    return _app


# NOTE: no test runs this adapter in a Workers runtime yet, and module
# memory is per isolate, so entitlement events reach only isolates that
# poll the origin's feed.
async def on_fetch(request: Any, env: Any) -> Any:
    import asgi  # provided by the Workers runtime

    return await asgi.fetch(_app_for(env), request, env)
