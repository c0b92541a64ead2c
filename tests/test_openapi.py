"""docs/openapi.yaml describes every route both services serve, and no other."""

from __future__ import annotations

from pathlib import Path

import yaml
from starlette.routing import Route

from edge import EdgeSettings
from edge import create_app as create_edge
from origin import OriginSettings
from origin import create_app as create_origin
from tests.harness import MEDIA_ROOT, REPO

SPEC = yaml.safe_load((REPO / "docs" / "openapi.yaml").read_text())
# The edge's catch-all media route, written in the spec per transport.
EDGE_MEDIA = {
    "/{path:anypath}": {"/{content_id}/{file}", "/_sg/{token}/{content_id}/{file}"}
}


def routes(app) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        methods = {method.lower() for method in route.methods or ()} - {"head"}
        found.setdefault(route.path, set()).update(methods)
    return found


def test_spec_lists_every_route(tmp_path: Path) -> None:
    origin = create_origin(
        OriginSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")
    )
    edge = create_edge(
        EdgeSettings(origin_url="http://127.0.0.1:1", media_root=MEDIA_ROOT)
    )
    served: dict[str, set[str]] = {}
    for path, methods in [*routes(origin).items(), *routes(edge).items()]:
        for spec_path in EDGE_MEDIA.get(path, {path}):
            served.setdefault(spec_path, set()).update(methods)
    documented = {
        path: {method for method in item if method in ("get", "post", "put", "delete")}
        for path, item in SPEC["paths"].items()
    }
    assert documented == served
