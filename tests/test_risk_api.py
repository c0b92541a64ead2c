"""The risk engine behind POST /v1/purchases, on an in-process origin.

The origin runs with the sandbox provider and its real store; the client
address and country come from the headers that a trusted proxy would set,
so that each test can place its viewers on networks and in countries.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from origin.providers import IntentRequest, PaymentIntent, SandboxProvider
from origin.providers.sandbox import COUNTRY_CARDS
from origin.risk import RiskPolicy
from tests.harness import PROBLEM_PREFIX
from tests.saga_harness import (
    ADMIN_TOKEN,
    CONTENT_ID,
    FakeClock,
    RunningOrigin,
    new_viewer,
    publish,
    running_origin,
)

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PHONE = {
    "User-Agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X)",
    "Accept-Language": "en-US",
}


class RecordingSandbox(SandboxProvider):
    """The sandbox, counting intents and keeping those that confirmation returned."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.created = 0
        self.confirmed: list[PaymentIntent] = []

    async def create_intent(
        self, request: IntentRequest, idempotency_key: str
    ) -> PaymentIntent:
        self.created += 1
        return await super().create_intent(request, idempotency_key)

    async def authorize(self, intent_id: str, idempotency_key: str) -> PaymentIntent:
        intent = await super().authorize(intent_id, idempotency_key)
        self.confirmed.append(intent)
        return intent


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(clock: FakeClock) -> RecordingSandbox:
    return RecordingSandbox(clock)


@pytest.fixture
async def origin(
    tmp_path: Path, sandbox: RecordingSandbox, clock: FakeClock
) -> AsyncIterator[RunningOrigin]:
    async with running_origin(
        f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}",
        sandbox,
        clock,
        risk=RiskPolicy(),
        risk_client_ip_header="CF-Connecting-IP",
    ) as running:
        await publish(running.client)
        for index in range(4):
            await publish(running.client, f"episode-{index}")
        yield running


async def attempt(
    origin: RunningOrigin,
    viewer: dict[str, str],
    payment_method: str,
    *,
    ip: str = "198.51.100.7",
    country: str | None = None,
    device: dict[str, str] | None = None,
    content_id: str = CONTENT_ID,
) -> httpx.Response:
    headers = {
        **viewer,
        **(device or PHONE),
        "CF-Connecting-IP": ip,
        "Idempotency-Key": str(uuid.uuid4()),
    }
    if country:
        headers["CF-IPCountry"] = country
    return await origin.client.post(
        "/v1/purchases",
        json={"content_id": content_id, "payment_method": payment_method},
        headers=headers,
    )


async def assessments(origin: RunningOrigin, **filters: str) -> list[dict[str, Any]]:
    response = await origin.client.get(
        "/v1/admin/risk/assessments", params=filters, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    return list(response.json()["assessments"])


def assert_blocked(response: httpx.Response) -> str:
    assert response.status_code == 403, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == PROBLEM_PREFIX + "purchase-blocked"
    assert body["assessment_id"].startswith("risk_")
    # The client learns that it was blocked, not which limit it crossed.
    assert "reasons" not in body
    return str(body["assessment_id"])


async def test_good_purchase_allowed_and_recorded(origin: RunningOrigin) -> None:
    viewer = await new_viewer(origin.client)
    response = await attempt(origin, viewer, "pm_card_us", country="US")
    assert response.status_code == 201, response.text
    purchase = response.json()
    assert purchase["status"] == "granted", purchase["steps"]

    [assessment] = await assessments(origin, purchase_id=purchase["purchase_id"])
    assert assessment["decision"] == "allow"
    assert assessment["enforced"] is True
    assert assessment["reasons"] == []
    assert assessment["card_country"] == "US"
    assert assessment["request_country"] == "US"


async def test_card_testing_blocked_without_charge(
    origin: RunningOrigin, sandbox: RecordingSandbox
) -> None:
    tester = await new_viewer(origin.client)
    declined = [
        "pm_card_chargeDeclined",
        "pm_card_chargeDeclinedInsufficientFunds",
        "pm_card_chargeDeclinedExpiredCard",
    ]
    responses = [await attempt(origin, tester, method) for method in declined]

    assert [response.json()["status"] for response in responses[:2]] == [
        "declined",
        "declined",
    ]
    # A third card after two declines in a row is two challenges: a block.
    assessment_id = assert_blocked(responses[2])
    assert_blocked(await attempt(origin, tester, "pm_card_visa"))
    assert sandbox.created == 2
    shown = await origin.client.get(
        f"/v1/admin/risk/assessments/{assessment_id}", headers=ADMIN
    )
    assert shown.status_code == 200
    codes = {reason["code"] for reason in shown.json()["reasons"]}
    assert "declines_in_a_row" in codes
    assert "viewer_cards" in codes
    assert shown.json()["purchase_id"] is None


async def test_blocked_request_replays_its_problem(origin: RunningOrigin) -> None:
    viewers = [await new_viewer(origin.client) for _ in range(5)]
    for viewer in viewers[:4]:
        response = await attempt(origin, viewer, "pm_card_gb", device={})
        assert response.status_code in (201, 403), response.text
    key = str(uuid.uuid4())
    headers = {**viewers[4], "CF-Connecting-IP": "203.0.113.9", "Idempotency-Key": key}
    body = {"content_id": CONTENT_ID, "payment_method": "pm_card_gb"}
    first = await origin.client.post("/v1/purchases", json=body, headers=headers)
    again = await origin.client.post("/v1/purchases", json=body, headers=headers)

    assert_blocked(first)
    assert again.status_code == 403
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["assessment_id"] == first.json()["assessment_id"]


async def test_shared_card_challenged_then_blocked(
    origin: RunningOrigin,
) -> None:
    responses = []
    for index in range(4):
        viewer = await new_viewer(origin.client)
        # Each viewer on a network and device of its own: only the card is shared.
        device = {"User-Agent": f"Browser/{index}"}
        responses.append(
            await attempt(
                origin, viewer, "pm_card_de", ip=f"192.0.2.{index}", device=device
            )
        )

    # 202: the challenged second purchase waits for the viewer's 3-D Secure.
    assert [response.status_code for response in responses] == [201, 202, 403, 403]
    second = responses[1].json()["purchase_id"]
    [challenged] = await assessments(origin, purchase_id=second)
    assert challenged["decision"] == "challenge"
    assert [reason["code"] for reason in challenged["reasons"]] == [
        "card_viewers_recent"
    ]
    blocked = await assessments(origin, decision="block")
    codes = {reason["code"] for reason in blocked[-1]["reasons"]}
    assert {"card_viewers", "card_viewers_recent", "several_signals"} <= codes


async def test_challenge_asks_the_issuer_for_3ds(
    origin: RunningOrigin, sandbox: RecordingSandbox
) -> None:
    viewer = await new_viewer(origin.client)
    response = await attempt(origin, viewer, "pm_card_us", country="DE")

    assert response.status_code == 202, response.text
    waiting = response.json()
    assert waiting["status"] == "requires_action"
    purchase_id = waiting["purchase_id"]
    [intent] = sandbox.intents_for(purchase_id)
    assert intent["request_three_d_secure"] is True
    assert [confirmed.status for confirmed in sandbox.confirmed] == ["requires_action"]
    [assessment] = await assessments(origin, purchase_id=purchase_id)
    assert assessment["decision"] == "challenge"
    assert assessment["reasons"] == [
        {
            "code": "country_mismatch",
            "decision": "challenge",
            "observed": "US/DE",
            "limit": None,
        }
    ]
    # The viewer passes the issuer's step, and the purchase goes through.
    answered = await origin.client.post(
        waiting["next_action"]["url"], data={"result": "approve"}
    )
    assert answered.status_code == 200, answered.text
    done = await origin.client.get(f"/v1/purchases/{purchase_id}", headers=viewer)
    assert done.json()["status"] == "granted"


async def test_premiere_crowd_is_allowed(
    origin: RunningOrigin, sandbox: RecordingSandbox
) -> None:
    cards = sorted(COUNTRY_CARDS)[:30]
    # Three phone models, each in a third of the hands.
    models = [f"Phone/{index % 3}" for index in range(30)]
    statuses = []
    for card, model in zip(cards, models, strict=True):
        viewer = await new_viewer(origin.client)
        # Every viewer is on one campus network.
        device = {**PHONE, "User-Agent": model}
        response = await attempt(origin, viewer, card, ip="203.0.113.50", device=device)
        statuses.append(response.json().get("status"))

    assert statuses == ["granted"] * 30
    assert all(intent.status == "requires_capture" for intent in sandbox.confirmed)


async def test_device_farm_is_blocked(origin: RunningOrigin) -> None:
    codes = []
    for card in sorted(COUNTRY_CARDS)[:8]:
        viewer = await new_viewer(origin.client)
        response = await attempt(origin, viewer, card, ip="198.18.0.10")
        codes.append(response.status_code)

    # Challenged purchases (202) wait for 3-D Secure; none of these is blocked.
    assert codes[0] == 201
    assert set(codes[:3]) <= {201, 202}
    assert codes[-1] == 403


async def test_binge_of_episodes_is_allowed(origin: RunningOrigin) -> None:
    viewer = await new_viewer(origin.client)
    statuses = []
    for index in range(4):
        response = await attempt(
            origin, viewer, "pm_card_visa", content_id=f"episode-{index}"
        )
        statuses.append(response.status_code)
    assert statuses == [201, 201, 201, 201]


async def test_unknown_payment_method_is_unprocessable(origin: RunningOrigin) -> None:
    viewer = await new_viewer(origin.client)
    response = await attempt(origin, viewer, "pm_card_nonexistent")
    assert response.status_code == 422
    assert response.json()["type"] == PROBLEM_PREFIX + "unprocessable"


async def test_risk_admin_needs_the_risk_scope(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running_origin(
        f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}",
        SandboxProvider(clock=clock),
        clock,
        admin_tokens="risk:risk-token,events:events-token",
    ) as running:
        client = running.client
        for token, status in [("risk-token", 200), ("events-token", 403)]:
            headers = {"Authorization": f"Bearer {token}"}
            for path in ("/v1/admin/risk/assessments", "/v1/admin/risk/policy"):
                response = await client.get(path, headers=headers)
                assert response.status_code == status, (token, path)
        policy = await client.get("/v1/admin/risk/policy", headers=ADMIN)
        assert policy.json()["mode"] == "observe"
        assert policy.json()["card_viewers"] == {"challenge": 3, "block": 5}
        for query in ({"decision": "maybe"}, {"limit": "0"}, {"limit": "x"}):
            response = await client.get(
                "/v1/admin/risk/assessments", params=query, headers=ADMIN
            )
            assert response.status_code == 400, query
            assert response.json()["type"] == PROBLEM_PREFIX + "invalid-request"
        missing = await client.get("/v1/admin/risk/assessments/risk_x", headers=ADMIN)
        assert missing.status_code == 404


async def test_purchase_without_card_details(
    origin: RunningOrigin, sandbox: RecordingSandbox
) -> None:
    sandbox.faults.add("payment_method", "error", times=None)
    viewer = await new_viewer(origin.client)

    response = await attempt(origin, viewer, "pm_card_us", country="DE")

    assert response.status_code == 201, response.text
    assert response.json()["status"] == "granted"
    [assessment] = await assessments(origin, purchase_id=response.json()["purchase_id"])
    # Without the card, neither its country nor its fingerprint counts.
    assert assessment["card_country"] is None
    assert assessment["decision"] == "allow"
    assert "card_viewers" not in assessment["signals"]
