"""Real responses of both services match docs/openapi.yaml and the event schemas.

A full viewer and admin journey runs against a real origin and edge, and
every response, success or problem, is checked against the operation it
belongs to. The event feed's signed batch is verified with the origin's
JWK set and its claims checked against docs/schemas/event-batch.json.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import pytest

from shared.events import EVENTS_AUDIENCE
from shared.tokens import ISSUER
from tests.contract import check_response, event_batch_validator, unverified_claims
from tests.harness import RunningStack, running_stack


@pytest.fixture(scope="module")
def checked_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    # Its own stack: this journey rotates and revokes keys.
    with running_stack(tmp_path_factory.mktemp("contract")) as running:
        yield running


@pytest.fixture(scope="module")
def origin(checked_stack: RunningStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=checked_stack.stack.origin_url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def admin(checked_stack: RunningStack, origin: httpx.Client) -> dict[str, str]:
    return {"Authorization": f"Bearer {checked_stack.stack.admin_token}"}


def test_viewer_journey_matches_spec(origin: httpx.Client) -> None:
    check_response(origin.get("/v1/catalog"), "GET", "/v1/catalog")
    check_response(origin.get("/v1/catalog/sample"), "GET", "/v1/catalog/{content_id}")
    missing = origin.get("/v1/catalog/nothing")
    assert missing.status_code == 404
    check_response(missing, "GET", "/v1/catalog/{content_id}")

    created = origin.post("/v1/viewers")
    check_response(created, "POST", "/v1/viewers")
    viewer = {"Authorization": f"Bearer {created.json()['viewer_token']}"}

    sessions = "/v1/playback-sessions"
    session = origin.post(sessions, json={"content_id": "sample"}, headers=viewer)
    assert session.status_code == 201
    check_response(session, "POST", sessions)
    for response in (
        origin.post(sessions, json={"content_id": "sample"}),
        origin.post(sessions, json={"content_id": 5}, headers=viewer),
        origin.post(
            sessions, content=b"x", headers={**viewer, "Content-Type": "text/plain"}
        ),
        origin.post(sessions, json={"content_id": "nothing"}, headers=viewer),
    ):
        assert response.status_code in (400, 401, 404, 415)
        check_response(response, "POST", sessions)

    key = {"Idempotency-Key": str(uuid.uuid4())}
    body = {"content_id": "sample", "payment_method": "pm_card_visa"}
    purchase = origin.post("/v1/purchases", json=body, headers={**viewer, **key})
    assert purchase.status_code == 201
    check_response(purchase, "POST", "/v1/purchases")
    purchase_id = purchase.json()["purchase_id"]
    read = origin.get(f"/v1/purchases/{purchase_id}", headers=viewer)
    check_response(read, "GET", "/v1/purchases/{purchase_id}")
    again = origin.post("/v1/purchases", json=body, headers=viewer)
    assert again.status_code == 400
    check_response(again, "POST", "/v1/purchases")

    refund_path = f"/v1/purchases/{purchase_id}/refund"
    refunded = origin.post(refund_path, headers=viewer)
    assert refunded.status_code in (200, 202)
    check_response(refunded, "POST", "/v1/purchases/{purchase_id}/refund")
    declined = origin.post(
        "/v1/purchases",
        json={"content_id": "sample", "payment_method": "pm_card_chargeDeclined"},
        headers={**viewer, "Idempotency-Key": str(uuid.uuid4())},
    )
    check_response(declined, "POST", "/v1/purchases")
    conflict = origin.post(
        f"/v1/purchases/{declined.json()['purchase_id']}/refund", headers=viewer
    )
    assert conflict.status_code == 409
    check_response(conflict, "POST", "/v1/purchases/{purchase_id}/refund")


def test_admin_responses_match_spec(
    origin: httpx.Client, admin: dict[str, str]
) -> None:
    put = origin.put(
        "/v1/admin/content/extra",
        json={"title": "Extra", "entry": "master.m3u8", "policy": {"kind": "free"}},
        headers=admin,
    )
    assert put.status_code == 201
    check_response(put, "PUT", "/v1/admin/content/{content_id}")
    withdrawn = origin.delete("/v1/admin/content/extra", headers=admin)
    check_response(withdrawn, "DELETE", "/v1/admin/content/{content_id}")
    gone = origin.get("/v1/catalog/extra")
    assert gone.status_code == 410
    check_response(gone, "GET", "/v1/catalog/{content_id}")

    for path in (
        "/v1/admin/keys",
        "/v1/admin/audit",
        "/v1/admin/dlq",
        "/v1/admin/outbox",
        "/v1/admin/webhook-secrets",
        "/metrics",
    ):
        check_response(origin.get(path, headers=admin), "GET", path)
        unauthenticated = origin.get(path)
        assert unauthenticated.status_code == 401
        check_response(unauthenticated, "GET", path)
    missing = origin.get("/v1/admin/dlq/whd_none", headers=admin)
    assert missing.status_code == 404
    check_response(missing, "GET", "/v1/admin/dlq/{correlation_id}")

    secret = "whsec_" + base64.b64encode(b"c" * 32).decode()
    added = origin.post(
        "/v1/admin/webhook-secrets",
        json={"provider": "partner", "secret": secret},
        headers=admin,
    )
    assert added.status_code == 201
    check_response(added, "POST", "/v1/admin/webhook-secrets")
    removed = origin.delete(
        f"/v1/admin/webhook-secrets/{added.json()['secret_id']}", headers=admin
    )
    check_response(removed, "DELETE", "/v1/admin/webhook-secrets/{secret_id}")
    resent = origin.post(
        "/v1/admin/outbox/resend", json={"from_seq": 1, "to_seq": 1}, headers=admin
    )
    check_response(resent, "POST", "/v1/admin/outbox/resend")
    not_allowed = origin.delete("/v1/catalog")
    assert not_allowed.status_code == 405
    assert set(not_allowed.headers["allow"].split(", ")) == {"GET", "HEAD"}


def test_event_feed_matches_event_schemas(
    checked_stack: RunningStack, origin: httpx.Client, admin: dict[str, str]
) -> None:
    rotated = origin.post(
        "/v1/admin/keys/rotate",
        headers={**admin, "Idempotency-Key": str(uuid.uuid4())},
    )
    check_response(rotated, "POST", "/v1/admin/keys/rotate")
    revoked = origin.post(
        f"/v1/admin/keys/{rotated.json()['kid']}/revoke", headers=admin
    )
    check_response(revoked, "POST", "/v1/admin/keys/{kid}/revoke")

    jwks = origin.get("/.well-known/jwks.json")
    check_response(jwks, "GET", "/.well-known/jwks.json")
    edge = {"Authorization": f"Bearer {checked_stack.stack.edge_token}"}
    feed = origin.get("/v1/events", params={"after": 0}, headers=edge)
    check_response(feed, "GET", "/v1/events")
    header = jwt.get_unverified_header(feed.text)
    key = next(key for key in jwks.json()["keys"] if key["kid"] == header["kid"])
    claims = jwt.decode(
        feed.text,
        jwt.PyJWK(key).key,
        algorithms=[key["alg"]],
        audience=EVENTS_AUDIENCE,
        issuer=ISSUER,
    )
    errors = [error.message for error in event_batch_validator().iter_errors(claims)]
    assert errors == []
    types = {event["type"] for event in claims["events"]}
    assert types >= {
        "policy.changed",
        "content.withdrawn",
        "entitlement.granted",
        "entitlement.revoked",
        "key.rotated",
        "key.revoked",
    }

    granted = next(e for e in claims["events"] if e["type"] == "entitlement.granted")
    path = f"/v1/edge/entitlements/{granted['viewer_ref']}/{granted['content_id']}"
    lookup = origin.get(path, headers=edge)
    check_response(lookup, "GET", "/v1/edge/entitlements/{viewer_ref}/{content_id}")
    forbidden = origin.get(path, headers={"Authorization": "Bearer wrong"})
    assert forbidden.status_code == 403
    check_response(forbidden, "GET", "/v1/edge/entitlements/{viewer_ref}/{content_id}")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"type": "entitlement.paused"}, "is not one of"),
        ({"viewer_ref": ""}, "should be non-empty"),
        ({"version": 0}, "less than the minimum"),
        ({"content_id": "../etc"}, "does not match"),
        ({"extra": 1}, "Additional properties"),
    ],
)
def test_event_schema_rejects_malformed(change: dict[str, Any], expected: str) -> None:
    event = {
        "seq": 1,
        "id": "evt-1",
        "type": "entitlement.granted",
        "viewer_ref": "vref",
        "content_id": "sample",
        "version": 1,
        "occurred_at": 1796378400.0,
        "kid": "",
        **change,
    }
    claims = {
        "iss": ISSUER,
        "aud": EVENTS_AUDIENCE,
        "iat": 1,
        "exp": 2,
        "events": [event],
        "last_seq": 1,
    }
    messages = [error.message for error in event_batch_validator().iter_errors(claims)]
    messages += [
        sub.message
        for error in event_batch_validator().iter_errors(claims)
        for sub in error.context or ()
    ]
    assert any(expected in message for message in messages), messages


def test_edge_responses_match_spec(checked_stack: RunningStack) -> None:
    with httpx.Client(base_url=checked_stack.stack.edge_url, timeout=10) as edge:
        check_response(edge.get("/_edge/healthz"), "GET", "/_edge/healthz")
        for response in (
            edge.get("/sample/master.m3u8"),
            edge.get("/sample/master.m3u8", params={"sg": "not-a-token"}),
            edge.get("/sample/a//b.ts", params={"sg": "x"}),
        ):
            assert response.status_code in (400, 401, 403)
            check_response(response, "GET", "/{content_id}/{file}")
        wrong_method = edge.get("/_edge/events")
        assert wrong_method.status_code == 405
        assert wrong_method.headers["allow"] == "POST"
        forged = edge.post(
            "/_edge/events",
            content=b"eyJhbGciOiJFZERTQSJ9.e30.c2ln",
            headers={"Content-Type": "application/jwt"},
        )
        assert forged.status_code == 403
        check_response(forged, "POST", "/_edge/events")
        origin = checked_stack.stack.origin_url
        token = httpx.post(f"{origin}/v1/viewers").json()["viewer_token"]
        session = httpx.post(
            f"{origin}/v1/playback-sessions",
            json={"content_id": "trailer"},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        assert unverified_claims(session["token"])["cid"] == "trailer"
        playlist = edge.get(session["playlist_url"])
        assert playlist.status_code == 200
        check_response(playlist, "GET", "/{content_id}/{file}")
        rendition = edge.get(str(playlist.url.join(playlist.text.splitlines()[-1])))
        check_response(rendition, "GET", "/{content_id}/{file}")
        uris = [line for line in rendition.text.splitlines() if ".ts" in line]
        segment_url = str(rendition.url.join(uris[0]))
        segment = edge.get(segment_url)
        assert segment.status_code == 200
        assert segment.headers["content-type"] == "video/mp2t"
        check_response(segment, "GET", "/{content_id}/{file}")
        part = edge.get(segment_url, headers={"Range": "bytes=0-99"})
        assert part.status_code == 206
        check_response(part, "GET", "/{content_id}/{file}")
        beyond = edge.get(segment_url, headers={"Range": "bytes=999999999-"})
        assert beyond.status_code == 416
        check_response(beyond, "GET", "/{content_id}/{file}")
