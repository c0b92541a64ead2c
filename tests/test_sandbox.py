"""Sandbox mode: a real origin seeded with fixtures and reset to them."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from origin import OriginSettings
from origin import create_app as create_origin
from origin.sandbox import VIEWER_TOKEN
from tests.contract import check_response, unverified_claims
from tests.harness import ServedApp, assert_problem, free_port

ADMIN = {"Authorization": "Bearer sandbox-admin-token"}
SANDBOX_VIEWER = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
RESET = "/v1/admin/sandbox/reset"


def served_origin(data_dir: Path, *, sandbox: bool) -> ServedApp:
    settings = OriginSettings(
        database_url=f"sqlite+aiosqlite:///{data_dir / 'origin.db'}",
        admin_token="sandbox-admin-token",
        edge_token="sandbox-edge-token",
        sandbox=sandbox,
    )
    return ServedApp(create_origin(settings), free_port(), "/healthz")


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[httpx.Client]:
    served = served_origin(tmp_path, sandbox=True).start()
    try:
        with httpx.Client(base_url=served.url, timeout=10) as client:
            yield client
    finally:
        served.stop()


def catalog_ids(client: httpx.Client) -> list[str]:
    return [item["content_id"] for item in client.get("/v1/catalog").json()["items"]]


def test_sandbox_starts_with_fixtures(sandbox: httpx.Client) -> None:
    assert catalog_ids(sandbox) == ["sample", "trailer"]
    session = sandbox.post(
        "/v1/playback-sessions", json={"content_id": "sample"}, headers=SANDBOX_VIEWER
    )
    assert session.status_code == 201
    assert session.json()["preview"] is True
    assert unverified_claims(session.json()["token"])["sub"] == "sandbox-viewer"


def test_reset_restores_fixtures(sandbox: httpx.Client) -> None:
    extra = {"title": "Extra", "entry": "master.m3u8", "policy": {"kind": "free"}}
    assert sandbox.put("/v1/admin/content/extra", json=extra, headers=ADMIN).is_success
    other = sandbox.post("/v1/viewers").json()["viewer_token"]
    purchase = sandbox.post(
        "/v1/purchases",
        json={"content_id": "sample", "payment_method": "pm_card_visa"},
        headers={**SANDBOX_VIEWER, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert purchase.status_code == 201
    secret = "whsec_" + base64.b64encode(b"s" * 32).decode()
    added = sandbox.post(
        "/v1/admin/webhook-secrets",
        json={"provider": "partner", "secret": secret},
        headers=ADMIN,
    )
    assert added.status_code == 201

    reset = sandbox.post(RESET, headers=ADMIN)
    assert reset.status_code == 200
    check_response(reset, "POST", RESET)
    assert reset.json()["withdrawn"] == ["extra"]

    assert catalog_ids(sandbox) == ["sample", "trailer"]
    assert sandbox.get("/v1/catalog/extra").status_code == 404
    purchase_id = purchase.json()["purchase_id"]
    gone = sandbox.get(f"/v1/purchases/{purchase_id}", headers=SANDBOX_VIEWER)
    assert_problem(gone, 404, "not-found")
    stale = sandbox.post(
        "/v1/playback-sessions",
        json={"content_id": "trailer"},
        headers={"Authorization": f"Bearer {other}"},
    )
    assert_problem(stale, 401, "unauthorized")
    secrets = sandbox.get("/v1/admin/webhook-secrets", headers=ADMIN).json()
    assert secrets == {"secrets": []}
    session = sandbox.post(
        "/v1/playback-sessions", json={"content_id": "sample"}, headers=SANDBOX_VIEWER
    )
    assert session.json()["preview"] is True


def test_reset_announces_changes_to_edges(sandbox: httpx.Client) -> None:
    extra = {"title": "Extra", "entry": "master.m3u8", "policy": {"kind": "free"}}
    sandbox.put("/v1/admin/content/extra", json=extra, headers=ADMIN)
    sandbox.post(RESET, headers=ADMIN)
    feed = sandbox.get(
        "/v1/events", headers={"Authorization": "Bearer sandbox-edge-token"}
    )
    events = unverified_claims(feed.text)["events"]
    last = events[-3:]
    assert [(event["type"], event["content_id"]) for event in last] == [
        ("policy.changed", "sample"),
        ("policy.changed", "trailer"),
        ("content.withdrawn", "extra"),
    ]


def test_reset_twice_gives_same_state(sandbox: httpx.Client) -> None:
    first = sandbox.post(RESET, headers=ADMIN).json()
    second = sandbox.post(RESET, headers=ADMIN).json()
    assert first == second
    assert catalog_ids(sandbox) == ["sample", "trailer"]


def test_reset_needs_admin(sandbox: httpx.Client) -> None:
    assert_problem(sandbox.post(RESET), 401, "unauthorized")
    assert_problem(sandbox.post(RESET, headers=SANDBOX_VIEWER), 403, "forbidden")


def test_reset_outside_sandbox_is_not_found(tmp_path: Path) -> None:
    served = served_origin(tmp_path, sandbox=False).start()
    try:
        response = httpx.post(f"{served.url}{RESET}", headers=ADMIN)
        assert_problem(response, 404, "not-found")
        assert "SEGMENTGATE_SANDBOX=1" in response.json()["detail"]
        assert httpx.get(f"{served.url}/v1/catalog").json() == {"items": []}
    finally:
        served.stop()
