"""Races and idempotency: one consistent outcome however requests interleave."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from origin.providers import SandboxProvider
from origin.reconcile import reconcile
from origin.store import entitlements, purchase_steps, purchases
from tests.saga_harness import (
    FakeClock,
    RunningOrigin,
    assert_consistent,
    buy,
    gated_calls,
    new_viewer,
    publish,
    purchase_ids,
    refund,
    running_origin,
    status_of,
    succeeded_steps,
)

PROBLEM = "urn:segmentgate:problem:"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(clock: FakeClock) -> SandboxProvider:
    return SandboxProvider(clock=clock)


@pytest.fixture
async def running(
    tmp_path: Path, sandbox: SandboxProvider, clock: FakeClock
) -> AsyncIterator[RunningOrigin]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
    calls = gated_calls("authorize", "capture")
    async with running_origin(url, sandbox, clock, provider_calls=calls) as origin:
        await publish(origin.client)
        yield origin


async def test_missing_key_is_400(running: RunningOrigin) -> None:
    viewer = await new_viewer(running.client)
    response = await running.client.post(
        "/v1/purchases",
        json={"content_id": "film", "payment_method": "pm_card_visa"},
        headers=viewer,
    )
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEM + "idempotency-key-missing"


async def test_same_key_and_body_replays(running: RunningOrigin) -> None:
    viewer = await new_viewer(running.client)
    key = str(uuid.uuid4())
    first = await buy(running.client, viewer, key=key)
    again = await buy(running.client, viewer, key=key)
    assert first.status_code == again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(await purchase_ids(running.engine)) == 1


async def test_same_key_other_body_is_422(running: RunningOrigin) -> None:
    viewer = await new_viewer(running.client)
    key = str(uuid.uuid4())
    await buy(running.client, viewer, key=key)
    other = await buy(running.client, viewer, "pm_card_amex", key=key)
    assert other.status_code == 422
    assert other.json()["type"] == PROBLEM + "idempotency-key-reused"


async def test_same_key_while_running_is_409(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    key = str(uuid.uuid4())
    gate = sandbox.faults.add("capture", "block_before")
    first = asyncio.create_task(buy(running.client, viewer, key=key))
    await gate.reached.wait()
    second = await buy(running.client, viewer, key=key)
    assert second.status_code == 409
    assert second.json()["type"] == PROBLEM + "idempotency-key-in-use"
    assert second.headers["Retry-After"] == "1"
    gate.open()
    assert (await first).json()["status"] == "granted"
    replay = await buy(running.client, viewer, key=key)
    assert replay.json()["purchase_id"] == (await first).json()["purchase_id"]


async def test_concurrent_requests_with_one_key(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    key = str(uuid.uuid4())
    responses = await asyncio.gather(
        *(buy(running.client, viewer, key=key) for _ in range(6))
    )
    codes = sorted(response.status_code for response in responses)
    assert set(codes) <= {201, 409}
    assert 201 in codes
    ids = {r.json()["purchase_id"] for r in responses if r.status_code == 201}
    assert len(ids) == 1
    assert len(await purchase_ids(running.engine)) == 1
    await assert_consistent(running.engine, sandbox)


async def test_second_purchase_of_same_content(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    responses = await asyncio.gather(*(buy(running.client, viewer) for _ in range(5)))
    granted = [r for r in responses if r.status_code == 201]
    assert len(granted) == 1
    assert granted[0].json()["status"] == "granted"
    for response in responses:
        if response.status_code != 201:
            assert response.status_code == 409
            assert response.json()["type"] == PROBLEM + "conflict"
    later = await buy(running.client, viewer)
    assert later.status_code == 409
    await assert_consistent(running.engine, sandbox)


async def test_declined_purchase_does_not_block_the_next(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    for method in (
        "pm_card_chargeDeclined",
        "pm_card_chargeDeclinedInsufficientFunds",
        "pm_card_chargeDeclinedExpiredCard",
    ):
        declined = await buy(running.client, viewer, method)
        assert declined.json()["status"] == "declined"
    assert (await buy(running.client, viewer)).json()["status"] == "granted"
    await assert_consistent(running.engine, sandbox)


async def test_refund_while_capture_in_flight(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    gate = sandbox.faults.add("capture", "block_before")
    purchase = asyncio.create_task(buy(running.client, viewer))
    await gate.reached.wait()
    (purchase_id,) = await purchase_ids(running.engine)
    requested = await refund(running.client, viewer, purchase_id)
    assert requested.status_code == 202
    assert requested.json()["refund_requested_at"] is not None
    gate.open()
    done = await purchase
    assert done.json()["status"] == "refunded"
    steps = await succeeded_steps(running.engine, purchase_id)
    assert steps == ["payment_intent", "authorization", "capture", "refund"]
    session = await running.client.post(
        "/v1/playback-sessions", json={"content_id": "film"}, headers=viewer
    )
    assert session.json()["preview"] is True
    await assert_consistent(running.engine, sandbox)


async def test_refund_before_capture_voids(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    gate = sandbox.faults.add("authorize", "block_after")
    purchase = asyncio.create_task(buy(running.client, viewer))
    await gate.reached.wait()
    (purchase_id,) = await purchase_ids(running.engine)
    assert (await refund(running.client, viewer, purchase_id)).status_code == 202
    gate.open()
    assert (await purchase).json()["status"] == "canceled"
    assert "capture" not in await succeeded_steps(running.engine, purchase_id)
    await assert_consistent(running.engine, sandbox)


async def test_refund_twice_refunds_once(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    purchase_id = (await buy(running.client, viewer)).json()["purchase_id"]
    results = await asyncio.gather(
        *(refund(running.client, viewer, purchase_id) for _ in range(4))
    )
    assert {r.status_code for r in results} <= {200, 202}
    assert await status_of(running.engine, purchase_id) == "refunded"
    again = await refund(running.client, viewer, purchase_id)
    assert again.status_code == 200
    assert again.json()["status"] == "refunded"
    await assert_consistent(running.engine, sandbox)


async def test_declined_purchase_cannot_be_refunded(running: RunningOrigin) -> None:
    viewer = await new_viewer(running.client)
    declined = await buy(running.client, viewer, "pm_card_chargeDeclined")
    response = await refund(running.client, viewer, declined.json()["purchase_id"])
    assert response.status_code == 409
    assert response.json()["type"] == PROBLEM + "conflict"


async def test_content_withdrawn_after_authorization_is_voided(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    gate = sandbox.faults.add("authorize", "block_after")
    purchase = asyncio.create_task(buy(running.client, viewer))
    await gate.reached.wait()
    free = await running.client.put(
        "/v1/admin/content/film",
        json={"title": "Film", "entry": "master.m3u8", "policy": {"kind": "free"}},
        headers={"Authorization": "Bearer test-admin-token"},
    )
    assert free.status_code == 200
    gate.open()
    body = (await purchase).json()
    assert body["status"] == "failed"
    outcomes = [(step["step"], step["outcome"]) for step in body["steps"]]
    assert ("capture", "failed") in outcomes
    assert ("void", "succeeded") in outcomes
    await assert_consistent(running.engine, sandbox)


async def test_steps_carry_times_and_outcomes(running: RunningOrigin) -> None:
    viewer = await new_viewer(running.client)
    purchase_id = (await buy(running.client, viewer)).json()["purchase_id"]
    body = (
        await running.client.get(f"/v1/purchases/{purchase_id}", headers=viewer)
    ).json()
    assert [step["step"] for step in body["steps"]] == [
        "payment_intent",
        "authorization",
        "capture",
        "grant",
    ]
    for step in body["steps"]:
        assert step["outcome"] == "succeeded"
        assert step["at"].endswith("+00:00")
        assert step["finished_at"] >= step["at"]


async def test_reconcile_records_a_capture_we_never_saw(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    gate = sandbox.faults.add("capture", "block_after")
    purchase = asyncio.create_task(buy(running.client, viewer))
    await gate.reached.wait()
    (purchase_id,) = await purchase_ids(running.engine)
    # The capture happened at the provider; the store has not recorded it.
    # Reconciliation waits for the live runner, whose lease it respects.
    report = await reconcile(
        running.engine,
        running.saga,
        running.state.provider,
        now=running.state.clock(),
    )
    assert report.skipped == [{"purchase_id": purchase_id, "reason": "running"}]
    purchase.cancel()
    gate.open()
    await running.saga.wait_idle()


async def test_reconcile_repairs_drift(
    running: RunningOrigin, sandbox: SandboxProvider
) -> None:
    viewer = await new_viewer(running.client)
    captured = (await buy(running.client, viewer)).json()["purchase_id"]
    # Drift 1: the provider refunded a granted purchase on its own.
    (intent,) = sandbox.intents_for(captured)
    await sandbox.refund(intent["id"], "dashboard-refund")
    # Drift 2: a purchase recorded as failed whose capture went through.
    other = await new_viewer(running.client)
    failed = (await buy(running.client, other, "pm_card_visa")).json()["purchase_id"]
    async with running.engine.begin() as connection:
        await connection.execute(
            purchases.update()
            .where(purchases.c.purchase_id == failed)
            .values(status="failed")
        )
        await connection.execute(
            purchase_steps.delete().where(
                purchase_steps.c.purchase_id == failed,
                purchase_steps.c.step == "grant",
            )
        )
        await connection.execute(
            entitlements.update()
            .where(entitlements.c.purchase_id == failed)
            .values(granted=False)
        )
    report = await reconcile(
        running.engine,
        running.saga,
        running.state.provider,
        now=running.state.clock(),
    )
    changed = {entry["purchase_id"]: entry for entry in report.changed}
    assert changed[captured]["status_after"] == "refunded"
    assert "refund" in changed[captured]["repair"]
    assert changed[failed]["repair"].startswith("refunded a capture")
    assert await status_of(running.engine, captured) == "refunded"
    assert "revoke" in await succeeded_steps(running.engine, captured)
    await assert_consistent(running.engine, sandbox)
    # A second run finds nothing left to repair.
    again = await reconcile(
        running.engine,
        running.saga,
        running.state.provider,
        now=running.state.clock(),
    )
    assert again.changed == []


async def test_session_replays_by_idempotency_key(running: RunningOrigin) -> None:
    viewer = await new_viewer(running.client)
    headers = {**viewer, "Idempotency-Key": str(uuid.uuid4())}
    first = await running.client.post(
        "/v1/playback-sessions", json={"content_id": "film"}, headers=headers
    )
    again = await running.client.post(
        "/v1/playback-sessions", json={"content_id": "film"}, headers=headers
    )
    assert first.status_code == 201
    assert again.json()["session_id"] == first.json()["session_id"]
    other = await running.client.post(
        "/v1/playback-sessions",
        json={"content_id": "film", "transport": "path"},
        headers=headers,
    )
    assert other.status_code == 422
    assert other.json()["type"] == PROBLEM + "idempotency-key-reused"
    fresh = await running.client.post(
        "/v1/playback-sessions", json={"content_id": "film"}, headers=viewer
    )
    assert fresh.json()["session_id"] != first.json()["session_id"]
