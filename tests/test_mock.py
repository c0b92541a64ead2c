"""``segmentgate mock`` answers every operation of the spec with its examples."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from segmentgate.mock import MOCK_HEADER, create_mock_app
from segmentgate.serving import wait_until_healthy
from shared.contract import example_values, load_spec, operations, resolve
from tests.contract import check_response
from tests.harness import free_port

PARAMETER_VALUES = {
    "content_id": "sample",
    "file": "360p/index.m3u8",
    "purchase_id": "pur_7d1e2f3a4b5c6d7e",
}


def concrete(path: str) -> str:
    for name, value in PARAMETER_VALUES.items():
        path = path.replace("{" + name + "}", value)
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + "x1" + path[end + 1 :]
    return path


def first_success(spec: dict[str, Any], operation: dict[str, Any]) -> str:
    return min(status for status in operation["responses"] if status.startswith("2"))


@pytest.fixture
async def mock() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_mock_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://mock") as client:
        yield client


def cases() -> list[tuple[str, str]]:
    return [(method, path) for path, method, _ in operations(load_spec())]


@pytest.mark.parametrize(("method", "path"), cases())
async def test_mock_answers_operation(
    mock: httpx.AsyncClient, method: str, path: str
) -> None:
    spec = load_spec()
    operation = spec["paths"][path][method]
    status = first_success(spec, operation)
    response = await mock.request(method.upper(), concrete(path))
    assert response.status_code == int(status), response.text[:300]
    assert response.headers[MOCK_HEADER] == operation["operationId"]
    check_response(response, method.upper(), path)
    content = resolve(spec, operation["responses"][status]).get("content", {})
    media_type = response.headers.get("content-type", "").split(";")[0]
    if content:
        examples = example_values(spec, content[media_type])
        expected = next(iter(examples.values()))
        if media_type.endswith("json"):
            assert response.json() == expected
        else:
            assert response.text == expected


async def test_mock_answers_preferred_status(mock: httpx.AsyncClient) -> None:
    response = await mock.get("/v1/catalog/nothing", headers={"Prefer": "code=404"})
    assert response.status_code == 404
    assert response.json()["type"] == "urn:segmentgate:problem:not-found"
    check_response(response, "GET", "/v1/catalog/{content_id}")


async def test_mock_answers_preferred_example(mock: httpx.AsyncClient) -> None:
    response = await mock.post("/v1/purchases", headers={"Prefer": "code=202"}, json={})
    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    granted = await mock.get(
        "/v1/purchases/pur_1", headers={"Prefer": "example=granted"}
    )
    assert granted.json()["status"] == "granted"


async def test_mock_rejects_undocumented_preference(mock: httpx.AsyncClient) -> None:
    response = await mock.get("/v1/catalog", headers={"Prefer": "code=418"})
    assert response.status_code == 400
    assert "not documented" in response.json()["detail"]


async def test_mock_unknown_path_and_method(mock: httpx.AsyncClient) -> None:
    # Every path of two or more segments is a media path of the edge.
    missing = await mock.get("/nothing")
    assert missing.status_code == 404
    wrong = await mock.delete("/v1/catalog")
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "GET"


def test_mock_command_serves_examples() -> None:
    port = free_port()
    command = [sys.executable, "-m", "segmentgate", "mock", "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        asyncio.run(wait_until_healthy(f"http://127.0.0.1:{port}/healthz"))
        response = httpx.get(f"http://127.0.0.1:{port}/v1/catalog")
        assert response.status_code == 200
        assert [item["content_id"] for item in response.json()["items"]] == [
            "sample",
            "trailer",
        ]
    finally:
        process.terminate()
        process.communicate(timeout=15)
    assert process.returncode == 0
