"""Deprecated operations send Deprecation and Sunset headers, driven by the spec.

The released spec deprecates no operation, so these tests deprecate one
in a copy of the spec and serve it with the same middleware both
services use.
"""

from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from edge import EdgeSettings
from edge import create_app as create_edge
from edge.middleware import EdgeMiddleware
from origin import OriginSettings
from origin import create_app as create_origin
from segmentgate.speclint import lint
from shared import deprecation
from shared.contract import load_spec
from shared.deprecation import DeprecationMiddleware, deprecated_operations
from tests.harness import MEDIA_ROOT


def deprecating_spec() -> dict[str, Any]:
    spec = copy.deepcopy(load_spec())
    operation = spec["paths"]["/v1/purchases/{purchase_id}"]["get"]
    operation.update(
        {"deprecated": True, "x-deprecated-at": "2026-12-01", "x-sunset": "2027-06-30"}
    )
    return spec


async def endpoint(request: Request) -> Response:
    return JSONResponse({"path": request.url.path})


def serve(spec: dict[str, Any]) -> httpx.AsyncClient:
    app = Starlette(
        routes=[
            Route("/v1/purchases/{purchase_id}", endpoint, methods=["GET"]),
            Route("/v1/purchases/{purchase_id}/refund", endpoint, methods=["POST"]),
        ],
        middleware=[
            Middleware(
                DeprecationMiddleware,
                deprecated=deprecated_operations(spec, edge=False),
            )
        ],
    )
    transport = httpx.ASGITransport(app=app)
    return httpx.AsyncClient(transport=transport, base_url="http://origin")


async def test_deprecated_operation_sends_headers() -> None:
    async with serve(deprecating_spec()) as client:
        response = await client.get("/v1/purchases/pur_1")
    assert response.status_code == 200
    assert response.headers["deprecation"] == "@1796083200"
    assert response.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"


async def test_other_operations_send_no_headers() -> None:
    async with serve(deprecating_spec()) as client:
        responses = [
            await client.post("/v1/purchases/pur_1/refund"),
            await client.get("/v1/purchases/pur_1/other"),
        ]
    for response in responses:
        assert "deprecation" not in response.headers
        assert "sunset" not in response.headers


def test_deprecated_spec_passes_lint() -> None:
    assert lint(deprecating_spec()) == []


def test_edge_operations_are_separate() -> None:
    spec = deprecating_spec()
    assert deprecated_operations(spec, edge=True) == []
    assert len(deprecated_operations(spec, edge=False)) == 1


def test_services_deprecate_nothing_today(tmp_path: Any) -> None:
    origin = create_origin(
        OriginSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")
    )
    edge = create_edge(
        EdgeSettings(origin_url="http://127.0.0.1:1", media_root=MEDIA_ROOT)
    )
    # The edge runs DeprecationMiddleware inside its EdgeMiddleware.
    for app, layer in ((origin, DeprecationMiddleware), (edge, EdgeMiddleware)):
        middleware = [m for m in app.user_middleware if m.cls is layer]
        assert len(middleware) == 1
        assert middleware[0].kwargs["deprecated"] == []


def test_missing_spec_deprecates_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> dict[str, Any]:
        raise FileNotFoundError("docs/openapi.yaml")

    monkeypatch.setattr(deprecation, "load_spec", missing)
    assert deprecation.spec_deprecations(edge=True) == []
