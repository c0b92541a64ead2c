"""Purchases whose authorization requires the viewer's authentication (3-D Secure).

The sandbox card ``pm_card_authenticationRequired`` leaves the intent
``requires_action``, and the purchase waits in that status until the viewer
approves or fails it on the sandbox issuer's page, served by the origin. Every scenario
ends with the store and the sandbox checked against each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from origin.providers import PaymentIntent, SandboxProvider
from origin.settings import OriginSettings
from tests.saga_harness import (
    ADMIN_TOKEN,
    RunningOrigin,
    assert_consistent,
    buy,
    new_viewer,
    publish,
    purchase_ids,
    refund,
    status_of,
)
from tests.test_saga_faults import (
    RESTART_DELAY,
    CrashingProvider,
    World,
    crash,
)

CARD = "pm_card_authenticationRequired"
# Past the saga's default wait for the viewer's authentication (900 s).
PAST_DEADLINE = 1000.0


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path)
    async with world.running:
        yield world


def steps_of(body: dict[str, Any]) -> list[tuple[str, str]]:
    return [(step["step"], step["outcome"]) for step in body["steps"]]


async def read(
    running: RunningOrigin, viewer: dict[str, str], purchase_id: str
) -> dict[str, Any]:
    response = await running.client.get(f"/v1/purchases/{purchase_id}", headers=viewer)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def answer(client: httpx.AsyncClient, url: str, result: str) -> httpx.Response:
    return await client.post(
        url,
        content=f"result={result}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


async def start_waiting(
    running: RunningOrigin,
) -> tuple[dict[str, str], str, str]:
    """Buy with the authentication card; return the viewer, purchase and URL."""
    await publish(running.client)
    viewer = await new_viewer(running.client)
    response = await buy(running.client, viewer, CARD)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "requires_action"
    url = body["next_action"]["url"]
    return viewer, body["purchase_id"], url


async def test_approval_captures_and_grants(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        assert url.startswith("/v1/sandbox/authentications/sa_")
        waiting = await read(running, viewer, purchase_id)
        assert waiting["next_action"]["type"] == "authenticate"
        assert waiting["next_action"]["expires_at"] is not None
        assert ("authorization", "requires_action") in steps_of(waiting)

        page = await running.client.get(url)
        assert page.status_code == 200
        assert "4.99 EUR" in page.text
        assert "frame-ancestors 'self'" in page.headers["content-security-policy"]

        done = await answer(running.client, url, "approve")
        assert done.status_code == 200, done.text
        assert "approved" in done.text
        body = await read(running, viewer, purchase_id)
        assert body["status"] == "granted"
        assert body["next_action"] is None
        assert steps_of(body)[-4:] == [
            ("authentication", "succeeded"),
            ("authorization", "succeeded"),
            ("capture", "succeeded"),
            ("grant", "succeeded"),
        ]
        await assert_consistent(running.engine, world.sandbox)


async def test_failed_authentication_declines(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        done = await answer(running.client, url, "fail")
        assert done.status_code == 200, done.text
        body = await read(running, viewer, purchase_id)
        assert body["status"] == "declined"
        (step,) = [s for s in body["steps"] if s["step"] == "authentication"]
        assert step["outcome"] == "declined"
        assert step["detail"] == "payment_intent_authentication_failure"
        assert "capture" not in [s["step"] for s in body["steps"]]
        await assert_consistent(running.engine, world.sandbox)


async def test_unanswered_authentication_is_voided(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        world.clock.advance(PAST_DEADLINE)
        assert await running.saga.recover() == [purchase_id]
        body = await read(running, viewer, purchase_id)
        assert body["status"] == "failed"
        assert ("authentication", "expired") in steps_of(body)
        assert ("void", "succeeded") in steps_of(body)
        (intent,) = world.sandbox.intents_for(purchase_id)
        assert intent["status"] == "canceled"

        late = await answer(running.client, url, "approve")
        assert late.status_code == 409
        assert late.json()["type"] == "urn:segmentgate:problem:conflict"
        assert await status_of(running.engine, purchase_id) == "failed"
        await assert_consistent(running.engine, world.sandbox)


async def test_waiting_purchase_is_polled_before_deadline(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        # Nothing is due until the first check, action_poll_seconds later.
        assert await running.saga.recover() == []
        world.clock.advance(31)
        assert await running.saga.recover() == [purchase_id]
        assert await status_of(running.engine, purchase_id) == "requires_action"
        body = await read(running, viewer, purchase_id)
        assert body["next_action"]["url"] == url


async def test_crash_while_waiting_resumes(world: World) -> None:
    crashing = CrashingProvider(world.sandbox, "authorize", "after")
    async with world.origin(crashing) as first:
        await publish(first.client)
        viewer = await new_viewer(first.client)
        await crash(buy(first.client, viewer, CARD))
        (purchase_id,) = await purchase_ids(first.engine)
        assert await status_of(first.engine, purchase_id) == "pending"
    world.clock.advance(RESTART_DELAY)
    async with world.origin() as recovered:
        # Recovery read the intent back and found it waiting for the viewer.
        body = await read(recovered, viewer, purchase_id)
        assert body["status"] == "requires_action"
        assert ("authorization", "unknown") in steps_of(body)
        assert ("authorization", "requires_action") in steps_of(body)
        done = await answer(recovered.client, body["next_action"]["url"], "approve")
        assert done.status_code == 200, done.text
        assert await status_of(recovered.engine, purchase_id) == "granted"
        await assert_consistent(recovered.engine, world.sandbox)


async def test_approval_while_origin_down(world: World) -> None:
    async with world.origin() as first:
        _, purchase_id, url = await start_waiting(first)
    # The viewer approves at the issuer while no origin runs.
    await world.sandbox.complete_authentication(url.rsplit("/", 1)[1], True)
    world.clock.advance(RESTART_DELAY)
    async with world.origin() as recovered:
        assert await status_of(recovered.engine, purchase_id) == "granted"
        await assert_consistent(recovered.engine, world.sandbox)


async def test_approval_just_before_timeout_wins(world: World) -> None:
    async with world.origin() as running:
        _, purchase_id, url = await start_waiting(running)
        world.clock.advance(PAST_DEADLINE)
        # The approval reaches the sandbox, and the recovery pass runs
        # before the issuer page's own run.
        await world.sandbox.complete_authentication(url.rsplit("/", 1)[1], True)
        await running.saga.recover()
        assert await status_of(running.engine, purchase_id) == "granted"
        await assert_consistent(running.engine, world.sandbox)


class ApprovesAfterRead:
    """The sandbox, where the viewer approves right after the saga's read.

    The saga then decides on a stale ``requires_action`` intent while the
    sandbox has already authorized the card.
    """

    def __init__(self, sandbox: SandboxProvider) -> None:
        self.sandbox = sandbox
        self.name = sandbox.name
        self.authentication_id = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sandbox, name)

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        intent = await self.sandbox.retrieve(intent_id)
        if self.authentication_id:
            await self.sandbox.complete_authentication(self.authentication_id, True)
            self.authentication_id = ""
        return intent


async def test_approval_racing_timeout_releases_hold(world: World) -> None:
    racing = ApprovesAfterRead(world.sandbox)
    async with world.origin(racing) as running:
        running.state.sandbox = world.sandbox
        viewer, purchase_id, url = await start_waiting(running)
        world.clock.advance(PAST_DEADLINE)
        racing.authentication_id = url.rsplit("/", 1)[1]
        await running.saga.recover()
        body = await read(running, viewer, purchase_id)
        assert body["status"] == "failed"
        assert ("authentication", "expired") in steps_of(body)
        # The void released the authorization that the approval created.
        (intent,) = world.sandbox.intents_for(purchase_id)
        assert intent["authentication_result"] == "approved"
        assert intent["status"] == "canceled"
        assert intent["captures"] == 0
        await assert_consistent(running.engine, world.sandbox)


async def test_duplicate_approval_captures_once(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        first, second = await asyncio.gather(
            answer(running.client, url, "approve"),
            answer(running.client, url, "approve"),
        )
        assert first.status_code == 200, first.text
        assert second.status_code == 200, second.text
        with contextlib.suppress(Exception):
            await running.saga.wait_idle()
        assert await status_of(running.engine, purchase_id) == "granted"
        contrary = await answer(running.client, url, "fail")
        assert contrary.status_code == 409
        assert contrary.json()["result"] == "approved"
        body = await read(running, viewer, purchase_id)
        assert steps_of(body).count(("capture", "succeeded")) == 1
        await assert_consistent(running.engine, world.sandbox)


async def test_refund_while_waiting_cancels(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        response = await refund(running.client, viewer, purchase_id)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "canceled"
        assert ("void", "succeeded") in steps_of(response.json())
        late = await answer(running.client, url, "approve")
        assert late.status_code == 409
        await assert_consistent(running.engine, world.sandbox)


async def test_issuer_page_rejects_bad_input(world: World) -> None:
    async with world.origin() as running:
        _, _, url = await start_waiting(running)
        missing = await running.client.get("/v1/sandbox/authentications/sa_nope")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        bad = await answer(running.client, url, "maybe")
        assert bad.status_code == 400
        assert bad.json()["type"] == "urn:segmentgate:problem:invalid-request"


async def test_issuer_page_absent_without_sandbox(world: World) -> None:
    async with world.origin(CrashingProvider(world.sandbox, "", "")) as running:
        response = await running.client.get("/v1/sandbox/authentications/sa_x")
        assert response.status_code == 404
        assert "another payment provider" in response.json()["detail"]


@pytest.mark.parametrize(
    ("amount", "currency", "shown"),
    [("500", "JPY", "500 JPY"), ("12.50", "KWD", "12.500 KWD")],
)
async def test_issuer_page_amount_in_currency_units(
    world: World, amount: str, currency: str, shown: str
) -> None:
    async with world.origin() as running:
        response = await running.client.put(
            "/v1/admin/content/film",
            json={
                "title": "Film",
                "entry": "master.m3u8",
                "policy": {
                    "kind": "purchase",
                    "price": {"amount": amount, "currency": currency},
                },
            },
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        assert response.status_code in (200, 201), response.text
        viewer = await new_viewer(running.client)
        bought = await buy(running.client, viewer, CARD)
        assert bought.status_code == 202, bought.text
        page = await running.client.get(bought.json()["next_action"]["url"])
        assert page.status_code == 200
        assert f"<strong>{shown}</strong>" in page.text


async def test_issuer_page_closed_after_cancel(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        response = await refund(running.client, viewer, purchase_id)
        assert response.json()["status"] == "canceled"
        page = await running.client.get(url)
        assert page.status_code == 200
        assert "<form" not in page.text
        assert "closed" in page.text
        assert "canceled" in page.text


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "https://shop.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_issuer_answer_rejects_cross_site_post(
    world: World, headers: dict[str, str]
) -> None:
    async with world.origin() as running:
        _, purchase_id, url = await start_waiting(running)
        forged = await running.client.post(
            url,
            content="result=approve",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                **headers,
            },
        )
        assert forged.status_code == 403, forged.text
        assert forged.json()["type"] == "urn:segmentgate:problem:forbidden"
        assert await status_of(running.engine, purchase_id) == "requires_action"

        own = await running.client.post(
            url,
            content="result=approve",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": "http://127.0.0.1",
                "Sec-Fetch-Site": "same-origin",
            },
        )
        assert own.status_code == 200, own.text
        assert await status_of(running.engine, purchase_id) == "granted"
        await assert_consistent(running.engine, world.sandbox)


async def test_issuer_answer_behind_host_rewriting_proxy(world: World) -> None:
    async with world.origin() as running:
        _, purchase_id, url = await start_waiting(running)
        # The browser's Origin names the public host, which differs from the
        # Host header that a proxy set; Sec-Fetch-Site decides.
        own = await running.client.post(
            url,
            content="result=approve",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Origin": "https://films.example",
                "Sec-Fetch-Site": "same-origin",
            },
        )
        assert own.status_code == 200, own.text
        assert await status_of(running.engine, purchase_id) == "granted"


async def test_stale_issuer_form_shows_closed_page(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, url = await start_waiting(running)
        await refund(running.client, viewer, purchase_id)
        # The form's page was loaded before the purchase was canceled.
        late = await running.client.post(
            url,
            content="result=approve",
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "Accept": "text/html,application/xhtml+xml,*/*;q=0.8",
            },
        )
        assert late.status_code == 409
        assert late.headers["content-type"].startswith("text/html")
        assert "closed" in late.text
        assert "canceled" in late.text
        assert "<form" not in late.text
        assert await status_of(running.engine, purchase_id) == "canceled"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("SEGMENTGATE_SAGA_ACTION_POLL_SECONDS", "0"),
        ("SEGMENTGATE_SAGA_ACTION_SECONDS", "0"),
        ("SEGMENTGATE_SAGA_LEASE_SECONDS", "0"),
        ("SEGMENTGATE_SAGA_ACTION_POLL_SECONDS", "nan"),
        ("SEGMENTGATE_SAGA_ACTION_SECONDS", "inf"),
    ],
)
def test_saga_timing_settings_must_be_positive(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str
) -> None:
    # A poll interval of 0 made a waiting purchase's run call itself again
    # at once, until the purchase request failed with RecursionError.
    monkeypatch.setenv(name, text)
    with pytest.raises(ValueError, match=name):
        OriginSettings.from_env()


async def test_second_purchase_names_waiting_one(world: World) -> None:
    async with world.origin() as running:
        viewer, purchase_id, _ = await start_waiting(running)
        second = await buy(running.client, viewer, "pm_card_visa")
        assert second.status_code == 409, second.text
        # The viewer can find, answer or cancel the purchase that blocks.
        assert second.json()["purchase_id"] == purchase_id

        other = await new_viewer(running.client)
        own = await buy(running.client, other, CARD)
        assert own.status_code == 202, own.text
        assert own.json()["purchase_id"] != purchase_id


async def test_issuer_page_not_found_bounds_echo(world: World) -> None:
    async with world.origin() as running:
        long_id = "sa_" + "x" * 5000
        for response in (
            await running.client.get(f"/v1/sandbox/authentications/{long_id}"),
            await answer(
                running.client, f"/v1/sandbox/authentications/{long_id}", "approve"
            ),
        ):
            assert response.status_code == 404
            assert len(response.json()["detail"]) < 200
