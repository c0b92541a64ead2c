"""The storefront: a page with the catalog, a player and the viewer's purchases.

The origin serves the page at ``/`` and its files under ``/storefront/``.
The player is hls.js from the npm package pinned in this directory's
package-lock.json (``make demo`` runs ``npm ci`` here), never from a CDN.
The page talks to the origin's API like any client, and plays from the edge
named in the playback session.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from origin.state import Origin
from shared import problems
from shared.problems import Problem

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
HLS_JS = HERE / "node_modules" / "hls.js" / "dist" / "hls.min.js"
JAVASCRIPT = "text/javascript; charset=utf-8"
FILES = {
    "app.js": (STATIC / "app.js", JAVASCRIPT),
    "style.css": (STATIC / "style.css", "text/css; charset=utf-8"),
    "hls.min.js": (HLS_JS, JAVASCRIPT),
}


def _content_security_policy(edge_public_url: str) -> str:
    """Allow the page's own files, the origin's API and the edge's media.

    hls.js fetches from the edge, plays through a blob: MediaSource URL, and
    runs its transmuxer in a blob: worker. The sandbox issuer's page is
    framed from the origin itself.
    """
    parts = urlsplit(edge_public_url)
    edge = f"{parts.scheme}://{parts.netloc}"
    return "; ".join(
        [
            "default-src 'self'",
            f"connect-src 'self' {edge}",
            "media-src 'self' blob:",
            "worker-src 'self' blob:",
            "img-src 'self' data:",
            "frame-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )


async def storefront_page(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    policy = _content_security_policy(origin.settings.edge_public_url)
    return FileResponse(
        STATIC / "index.html",
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": policy},
    )


async def storefront_file(request: Request) -> Response:
    name = request.path_params["file"]
    entry = FILES.get(name)
    if entry is None:
        raise Problem(problems.NOT_FOUND, f"the storefront has no file {name[:80]!r}")
    path, media_type = entry
    if not path.is_file():
        raise Problem(
            problems.ASSET_MISSING,
            f"{name} is not installed; run `make demo`, or `npm ci` in "
            "origin/storefront/",
        )
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": "no-cache"}
    )


routes = [
    Route("/", storefront_page, methods=["GET"]),
    Route("/storefront/{file}", storefront_file, methods=["GET"]),
]
