"""The origin's public and admin HTTP contract, against a running origin."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest
import standardwebhooks

from tests.harness import PROBLEM_PREFIX, RunningStack, Viewer, assert_problem


@pytest.fixture
def origin(stack: RunningStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.stack.origin_url, timeout=10) as client:
        yield client


def test_catalog_lists_the_seeded_content(origin: httpx.Client) -> None:
    items = {
        item["content_id"]: item for item in origin.get("/v1/catalog").json()["items"]
    }
    assert items["sample"]["policy"] == {
        "kind": "purchase",
        "price": {"amount": "4.99", "currency": "EUR"},
        "preview_seconds": 10,
        "offline": "closed",
    }
    assert items["trailer"]["policy"]["kind"] == "free"
    assert set(items["sample"]) >= {"content_id", "title", "policy"}


def test_admin_routes_need_the_admin_token(
    origin: httpx.Client, viewer: Viewer
) -> None:
    body = {"title": "X", "entry": "master.m3u8", "policy": {"kind": "free"}}
    assert_problem(origin.put("/v1/admin/content/x", json=body), 401, "unauthorized")
    response = origin.put(
        "/v1/admin/content/x",
        json=body,
        headers={"Authorization": viewer.client.headers["Authorization"]},
    )
    assert response.status_code in (401, 403)


@pytest.mark.parametrize(
    "body",
    [
        {"title": "X", "entry": "master.m3u8", "policy": {"kind": "rent"}},
        {"title": "X", "entry": "../master.m3u8", "policy": {"kind": "free"}},
        {
            "title": "X",
            "entry": "master.m3u8",
            "policy": {
                "kind": "purchase",
                "price": {"amount": "-1", "currency": "EUR"},
            },
        },
        {
            "title": "X",
            "entry": "master.m3u8",
            "policy": {
                "kind": "purchase",
                "price": {"amount": "1.00", "currency": "euro"},
            },
        },
        # JPY has no minor unit, so no provider could charge 4.99 JPY.
        {
            "title": "X",
            "entry": "master.m3u8",
            "policy": {
                "kind": "purchase",
                "price": {"amount": "4.99", "currency": "JPY"},
            },
        },
        {"title": "", "entry": "master.m3u8", "policy": {"kind": "free"}},
        {"entry": "master.m3u8", "policy": {"kind": "free"}},
        [],
    ],
)
def test_admin_rejects_bad_content(origin: httpx.Client, body: object) -> None:
    response = origin.put(
        "/v1/admin/content/x",
        json=body,
        headers={"Authorization": "Bearer test-admin-token"},
    )
    assert response.status_code in (400, 422), response.text
    assert response.json()["type"].startswith(PROBLEM_PREFIX)


def test_malformed_json_is_400(origin: httpx.Client, viewer: Viewer) -> None:
    response = viewer.client.post(
        "/v1/playback-sessions",
        content=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 400, "invalid-request")


def test_viewer_routes_need_a_viewer_token(origin: httpx.Client) -> None:
    assert_problem(
        origin.post("/v1/playback-sessions", json={"content_id": "sample"}),
        401,
        "unauthorized",
    )
    response = origin.post(
        "/v1/playback-sessions",
        json={"content_id": "sample"},
        headers={"Authorization": "Bearer not-a-viewer"},
    )
    assert_problem(response, 401, "unauthorized")


def test_session_for_unknown_content_is_404(viewer: Viewer) -> None:
    response = viewer.client.post("/v1/playback-sessions", json={"content_id": "nope"})
    assert_problem(response, 404, "not-found")


def test_session_shape(viewer: Viewer, stack: RunningStack) -> None:
    session = viewer.session()
    assert str(session["playlist_url"]).startswith(
        f"{stack.stack.edge_url}/sample/master.m3u8?sg="
    )
    assert str(session["token"]) in str(session["playlist_url"])
    assert str(session["expires_at"]).endswith("+00:00")


def test_purchase_needs_an_idempotency_key(viewer: Viewer) -> None:
    response = viewer.client.post(
        "/v1/purchases", json={"content_id": "sample", "payment_method": "pm_card_visa"}
    )
    assert_problem(response, 400, "idempotency-key-missing")


def test_purchase_replays_by_idempotency_key(viewer: Viewer) -> None:
    key = str(uuid.uuid4())
    body = {"content_id": "sample", "payment_method": "pm_card_visa"}
    first = viewer.client.post(
        "/v1/purchases", json=body, headers={"Idempotency-Key": key}
    )
    again = viewer.client.post(
        "/v1/purchases", json=body, headers={"Idempotency-Key": key}
    )
    assert first.status_code == 201
    assert again.status_code == 201
    assert again.json()["purchase_id"] == first.json()["purchase_id"]

    other = viewer.client.post(
        "/v1/purchases",
        json={**body, "payment_method": "pm_card_chargeDeclined"},
        headers={"Idempotency-Key": key},
    )
    assert_problem(other, 422, "idempotency-key-reused")
    # A new key for content already owned is a conflict, not a second charge.
    assert_problem(
        viewer.client.post(
            "/v1/purchases", json=body, headers={"Idempotency-Key": "k2"}
        ),
        409,
        "conflict",
    )


def test_granted_purchase_lists_its_steps(viewer: Viewer) -> None:
    purchase = viewer.purchase()
    assert purchase["status"] == "granted"
    response = viewer.client.get(f"/v1/purchases/{purchase['purchase_id']}")
    assert response.status_code == 200
    steps = [step["step"] for step in response.json()["steps"]]
    assert steps[:4] == ["payment_intent", "authorization", "capture", "grant"]
    assert viewer.session()["preview"] is False


def test_declined_payment_grants_nothing(viewer: Viewer) -> None:
    purchase = viewer.purchase(payment_method="pm_card_chargeDeclined")
    assert purchase["status"] == "declined"
    assert viewer.session()["preview"] is True
    # A declined purchase does not block a later one.
    assert viewer.purchase()["status"] == "granted"


def test_unknown_payment_method_is_declined_or_refused(viewer: Viewer) -> None:
    response = viewer.client.post(
        "/v1/purchases",
        json={"content_id": "sample", "payment_method": "pm_nonsense"},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code in (201, 422), response.text
    if response.status_code == 201:
        assert response.json()["status"] in ("declined", "failed")
    assert viewer.session()["preview"] is True


def test_free_content_cannot_be_bought(viewer: Viewer) -> None:
    response = viewer.client.post(
        "/v1/purchases",
        json={"content_id": "trailer", "payment_method": "pm_card_visa"},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert_problem(response, 409, "conflict")


def test_refund_revokes_the_entitlement(viewer: Viewer) -> None:
    purchase = viewer.purchase()
    refunded = viewer.refund(str(purchase["purchase_id"]))
    assert refunded["status"] == "refunded"
    assert viewer.session()["preview"] is True
    steps = [step["step"] for step in refunded["steps"]]  # type: ignore[union-attr]
    assert "refund" in steps
    assert "revoke" in steps


def test_other_viewers_purchases_are_not_found(
    viewer: Viewer, stack: RunningStack
) -> None:
    purchase = viewer.purchase()
    stranger = Viewer(stack.stack.origin_url)
    try:
        response = stranger.client.get(f"/v1/purchases/{purchase['purchase_id']}")
        assert_problem(response, 404, "not-found")
        response = stranger.client.post(
            f"/v1/purchases/{purchase['purchase_id']}/refund"
        )
        assert_problem(response, 404, "not-found")
    finally:
        stranger.close()


def test_jwks_publishes_public_keys_only(origin: httpx.Client) -> None:
    keys = origin.get("/.well-known/jwks.json").json()["keys"]
    assert keys
    assert all(key["kid"] and key["use"] == "sig" for key in keys)
    assert all("d" not in key for key in keys)


def test_unknown_route_and_method_are_problems(origin: httpx.Client) -> None:
    assert_problem(origin.get("/v1/nothing"), 404, "not-found")
    assert_problem(origin.delete("/v1/catalog"), 405, "method-not-allowed")


@pytest.mark.parametrize(
    ("body", "slug"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "invalid-request"),
        (b'{"content_id": ' + b"9" * 60_000 + b"}", "invalid-request"),
        (b'{"content_id": "sample", "content_id": "trailer"}', "invalid-request"),
        (b"\xff\xfe{}", "invalid-request"),
    ],
)
def test_hostile_json_is_400(viewer: Viewer, body: bytes, slug: str) -> None:
    response = viewer.client.post(
        "/v1/playback-sessions",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 400, slug)


# Valid JSON whose strings no store keeps: a lone UTF-16 surrogate cannot be
# encoded as UTF-8, and PostgreSQL's text type has no NUL character.
@pytest.mark.parametrize("escape", ["\\ud800", "\\u0000"])
def test_unstorable_strings_are_400(viewer: Viewer, escape: str) -> None:
    body = '{"content_id": "sample", "payment_method": "pm_card_' + escape + '"}'
    # The replay with the same Idempotency-Key is rejected the same way.
    for _ in range(2):
        response = viewer.client.post(
            "/v1/purchases",
            content=body.encode(),
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": f"unstorable-{escape}",
            },
        )
        assert_problem(response, 400, "invalid-request")


def test_unstorable_title_is_400(origin: httpx.Client) -> None:
    response = origin.put(
        "/v1/admin/content/x",
        content=b'{"title": "X\\udfff", "entry": "master.m3u8", '
        b'"policy": {"kind": "free"}}',
        headers={
            "Authorization": "Bearer test-admin-token",
            "Content-Type": "application/json",
        },
    )
    assert_problem(response, 400, "invalid-request")


def test_other_media_types_are_415(viewer: Viewer) -> None:
    response = viewer.client.post(
        "/v1/playback-sessions",
        content=b"content_id=sample",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 415, "unsupported-media-type")


def test_large_declared_body_is_413_before_reading(viewer: Viewer) -> None:
    def endless():
        yield b"{"
        while True:
            yield b" " * 65536

    response = viewer.client.post(
        "/v1/playback-sessions",
        content=endless(),
        headers={"Content-Type": "application/json"},
    )
    assert_problem(response, 413, "payload-too-large")


@pytest.mark.parametrize("amount", ["4.999", "\u0664.99", "1e3", "0.00"])
def test_prices_are_strict(origin: httpx.Client, amount: str) -> None:
    body = {
        "title": "X",
        "entry": "master.m3u8",
        "policy": {"kind": "purchase", "price": {"amount": amount, "currency": "EUR"}},
    }
    response = origin.put(
        "/v1/admin/content/x",
        json=body,
        headers={"Authorization": "Bearer test-admin-token"},
    )
    assert_problem(response, 400, "invalid-request")


def test_event_feed_needs_the_edge_token(
    origin: httpx.Client, stack: RunningStack
) -> None:
    assert_problem(origin.get("/v1/events"), 401, "unauthorized")
    bearer = {"Authorization": f"Bearer {stack.stack.edge_token}"}
    response = origin.get("/v1/events", headers=bearer)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/jwt")


def test_trailing_slash_is_404_not_a_redirect(origin: httpx.Client) -> None:
    response = origin.get("/v1/catalog/", headers={"Host": "elsewhere.example"})
    assert_problem(response, 404, "not-found")
    assert "location" not in response.headers


def test_metrics_report_outbox_lag(origin: httpx.Client) -> None:
    assert_problem(origin.get("/metrics"), 401, "unauthorized")
    response = origin.get(
        "/metrics", headers={"Authorization": "Bearer test-admin-token"}
    )
    assert response.status_code == 200
    text = response.text
    assert "segmentgate_outbox_last_seq " in text
    assert 'segmentgate_outbox_lag_events{target="http://127.0.0.1:' in text
    assert "segmentgate_webhook_dead_letters 0.0" in text


def test_webhook_secrets_are_managed_and_used(origin: httpx.Client) -> None:
    admin = {"Authorization": "Bearer test-admin-token"}
    secret = "whsec_" + base64.b64encode(b"k" * 32).decode()
    body = b'{"type": "payment_intent.succeeded", "data": {"object": {}}}'

    def deliver() -> httpx.Response:
        signature = standardwebhooks.Webhook(secret).sign(
            "msg_1", datetime.now(UTC), body.decode()
        )
        headers = {
            "webhook-id": "msg_1",
            "webhook-timestamp": str(int(time.time())),
            "webhook-signature": signature,
            "Content-Type": "application/json",
        }
        return origin.post("/v1/webhooks/sandbox", content=body, headers=headers)

    assert_problem(deliver(), 404, "not-found")
    added = origin.post(
        "/v1/admin/webhook-secrets",
        json={"provider": "sandbox", "secret": secret},
        headers=admin,
    )
    assert added.status_code == 201, added.text
    assert added.json()["hint"].endswith(secret[-4:])
    listed = origin.get("/v1/admin/webhook-secrets", headers=admin).json()["secrets"]
    assert secret not in str(listed)
    # The signature now verifies; what follows is about the event itself.
    assert deliver().status_code not in (400, 404)
    secret_id = added.json()["secret_id"]
    removed = origin.delete(f"/v1/admin/webhook-secrets/{secret_id}", headers=admin)
    assert removed.status_code == 204
    assert_problem(deliver(), 404, "not-found")
