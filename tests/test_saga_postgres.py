"""The purchase saga on PostgreSQL: the server at 127.0.0.1:5432, user postgres.

Each test gets a database of its own, created for it and dropped after.
The tests are skipped, and say why, when the server cannot be reached.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from cryptography.fernet import Fernet

from origin.providers import SandboxProvider
from tests.postgres import temporary_database
from tests.saga_harness import (
    FakeClock,
    assert_consistent,
    buy,
    new_viewer,
    publish,
    purchase_ids,
    refund,
    running_origin,
    status_of,
)
from tests.test_saga_faults import CrashingProvider, crash

# Signing keys are encrypted at rest; outside SQLite the key must be given.
MASTER_KEY = Fernet.generate_key().decode("ascii")


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    async with temporary_database("segmentgate_test") as url:
        yield url


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox(clock: FakeClock) -> SandboxProvider:
    return SandboxProvider(clock=clock)


async def test_purchase_decline_and_refund(
    database_url: str, sandbox: SandboxProvider, clock: FakeClock
) -> None:
    async with running_origin(
        database_url, sandbox, clock, master_key=MASTER_KEY
    ) as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        declined = await buy(running.client, viewer, "pm_card_chargeDeclined")
        assert declined.json()["status"] == "declined"
        bought = await buy(running.client, viewer)
        assert bought.status_code == 201
        assert bought.json()["status"] == "granted"
        refunded = await refund(running.client, viewer, bought.json()["purchase_id"])
        assert refunded.json()["status"] == "refunded"
        await assert_consistent(running.engine, sandbox)


async def test_races_resolve_to_one_purchase(
    database_url: str, sandbox: SandboxProvider, clock: FakeClock
) -> None:
    async with running_origin(
        database_url, sandbox, clock, master_key=MASTER_KEY
    ) as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        key = str(uuid.uuid4())
        same_key = await asyncio.gather(
            *(buy(running.client, viewer, key=key) for _ in range(4))
        )
        assert {r.status_code for r in same_key} <= {201, 409}
        other = await new_viewer(running.client)
        other_keys = await asyncio.gather(
            *(buy(running.client, other) for _ in range(4))
        )
        assert sorted(r.status_code for r in other_keys).count(201) == 1
        assert len(await purchase_ids(running.engine)) == 2
        await assert_consistent(running.engine, sandbox)


async def test_crash_after_capture_resumes(
    database_url: str, sandbox: SandboxProvider, clock: FakeClock
) -> None:
    crashing = CrashingProvider(sandbox, "capture", "after")
    async with running_origin(
        database_url, crashing, clock, master_key=MASTER_KEY
    ) as first:
        await publish(first.client)
        viewer = await new_viewer(first.client)
        await crash(buy(first.client, viewer))
    clock.advance(60)
    async with running_origin(
        database_url, sandbox, clock, master_key=MASTER_KEY
    ) as recovered:
        (purchase_id,) = await purchase_ids(recovered.engine)
        assert await status_of(recovered.engine, purchase_id) == "granted"
        await assert_consistent(recovered.engine, sandbox)


async def test_authentication_waits_then_times_out(
    database_url: str, sandbox: SandboxProvider, clock: FakeClock
) -> None:
    async with running_origin(
        database_url, sandbox, clock, master_key=MASTER_KEY
    ) as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        approved = await buy(running.client, viewer, "pm_card_authenticationRequired")
        assert approved.json()["status"] == "requires_action"
        # A second purchase of the same content is rejected while one waits.
        second = await buy(running.client, viewer)
        assert second.status_code == 409
        url = approved.json()["next_action"]["url"]
        done = await running.client.post(
            url,
            content="result=approve",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert done.status_code == 200, done.text
        purchase_id = approved.json()["purchase_id"]
        assert await status_of(running.engine, purchase_id) == "granted"
        refunded = await refund(running.client, viewer, purchase_id)
        assert refunded.json()["status"] == "refunded"

        waiting = await buy(running.client, viewer, "pm_card_authenticationRequired")
        assert waiting.json()["status"] == "requires_action"
        clock.advance(1000)
        await running.saga.recover()
        timed_out = waiting.json()["purchase_id"]
        assert await status_of(running.engine, timed_out) == "failed"
        await assert_consistent(running.engine, sandbox)
