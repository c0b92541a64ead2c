"""The origin serves the storefront's page and files, hls.js included."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

import origin.storefront
from origin import OriginSettings, create_app


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = OriginSettings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}",
        edge_public_url="http://127.0.0.1:8000/",
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://127.0.0.1"
    ) as client:
        yield client


async def test_page_names_its_files(client: httpx.AsyncClient) -> None:
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    for name in ("app.js", "style.css", "hls.min.js"):
        assert f'"/storefront/{name}"' in response.text
    # No script or style from anywhere else, and media from the edge only.
    assert "https://" not in response.text
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "connect-src 'self' http://127.0.0.1:8000;" in policy
    assert "frame-ancestors 'none'" in policy


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("app.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
    ],
)
async def test_files_are_served(
    client: httpx.AsyncClient, name: str, media_type: str
) -> None:
    response = await client.get(f"/storefront/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == media_type


async def test_hls_js_comes_from_the_pinned_package(
    client: httpx.AsyncClient,
) -> None:
    if not origin.storefront.HLS_JS.is_file():
        pytest.skip("hls.js is not installed; `make tools` runs npm ci for it")
    response = await client.get("/storefront/hls.min.js")
    assert response.status_code == 200
    package = origin.storefront.HLS_JS.parent.parent / "package.json"
    assert '"version": "1.7.4"' in package.read_text()
    assert response.content == origin.storefront.HLS_JS.read_bytes()


async def test_unknown_file_is_not_found(client: httpx.AsyncClient) -> None:
    for name in ("nope.js", "..%2Forigin.db", "index.html"):
        response = await client.get(f"/storefront/{name}")
        assert response.status_code == 404, name
        assert response.headers["content-type"] == "application/problem+json"


async def test_missing_hls_js_says_how_to_install(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(
        origin.storefront.FILES,
        "hls.min.js",
        (tmp_path / "missing.js", "text/javascript; charset=utf-8"),
    )
    response = await client.get("/storefront/hls.min.js")
    assert response.status_code == 503
    body = response.json()
    assert body["type"] == "urn:segmentgate:problem:asset-missing"
    assert "make demo" in body["detail"]
