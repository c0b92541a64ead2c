"""The origin serves an API reference generated from docs/openapi.yaml."""

from __future__ import annotations

from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from origin import OriginSettings
from origin import create_app as create_origin
from shared.contract import load_spec, operations


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.sources: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.add(str(values["id"]))
        for name in ("src", "href"):
            if values.get(name) and tag != "a":
                self.sources.append(str(values[name]))
        self.scripts += tag == "script"


@pytest.fixture
async def origin(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_origin(
        OriginSettings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'o.db'}")
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://o") as client:
        yield client


async def test_docs_list_every_operation(origin: httpx.AsyncClient) -> None:
    response = await origin.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = _Collector()
    page.feed(response.text)
    spec = load_spec()
    for path, method, operation in operations(spec):
        assert operation["operationId"] in page.ids, f"{method} {path}"
    for name in spec["components"]["schemas"]:
        assert f"schema-{name}" in page.ids
    assert f"Version {spec['info']['version']}" in response.text


async def test_docs_load_nothing_else(origin: httpx.AsyncClient) -> None:
    response = await origin.get("/docs")
    page = _Collector()
    page.feed(response.text)
    assert page.scripts == 0
    assert page.sources == []
    assert "default-src 'none'" in response.headers["content-security-policy"]


async def test_docs_escape_spec_text(origin: httpx.AsyncClient) -> None:
    response = await origin.get("/docs")
    # The spec's descriptions contain <token> and `<`, which must stay text.
    assert "/_sg/&lt;token&gt;/" in response.text
    assert "<token>" not in response.text


async def test_openapi_json_is_the_spec(origin: httpx.AsyncClient) -> None:
    response = await origin.get("/openapi.json")
    assert response.status_code == 200
    body = response.json()
    assert body["info"] == load_spec()["info"]
    assert set(body["paths"]) == set(load_spec()["paths"])
