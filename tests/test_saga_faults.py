"""Fault injection: every saga step fails before, during and after its call.

"error" fails before the provider acts, "timeout" hangs before it acts,
"drop" and "late" act and then lose or delay the response. A crash stops the
origin between two steps, as a killed process would; a new origin on the
same store file and the same sandbox (the provider outlives us) then runs
its start-up recovery. Every scenario ends with the invariants checked on
both the store and the sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import origin.saga
from origin.providers import (
    IntentRequest,
    PaymentIntent,
    PaymentMethodDetails,
    Refund,
    SandboxProvider,
)
from tests.saga_harness import (
    FakeClock,
    RunningOrigin,
    SimulatedCrash,
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

KINDS = ["error", "timeout", "drop", "late"]
PURCHASE_OPERATIONS = ["create_intent", "authorize", "capture"]
# Past the saga's lease (30 s) and its longest retry delay (5 s).
RESTART_DELAY = 60.0


async def crash(request: Any) -> None:
    """Await ``request`` and expect it to die with a simulated crash.

    Unlike ``pytest.raises``, this keeps no traceback of the dead run.
    """
    try:
        await request
    except SimulatedCrash:
        return
    pytest.fail("the origin did not crash")


class CrashingProvider:
    """Wraps the sandbox and crashes the origin around one operation, once."""

    def __init__(self, sandbox: SandboxProvider, operation: str, when: str) -> None:
        self.sandbox = sandbox
        self.name = sandbox.name
        self.operation = operation
        self.when = when

    async def _around(self, operation: str, call: Any) -> Any:
        armed = operation == self.operation
        if armed and self.when == "before":
            self.operation = ""
            raise SimulatedCrash(f"killed before {operation}")
        result = await call()
        if armed and self.when == "after":
            self.operation = ""
            raise SimulatedCrash(f"killed after {operation}")
        return result

    async def create_intent(self, request: IntentRequest, key: str) -> PaymentIntent:
        return await self._around(
            "create_intent", lambda: self.sandbox.create_intent(request, key)
        )

    async def authorize(self, intent_id: str, key: str) -> PaymentIntent:
        return await self._around(
            "authorize", lambda: self.sandbox.authorize(intent_id, key)
        )

    async def capture(self, intent_id: str, key: str) -> PaymentIntent:
        return await self._around(
            "capture", lambda: self.sandbox.capture(intent_id, key)
        )

    async def void(self, intent_id: str, key: str) -> PaymentIntent:
        return await self._around("void", lambda: self.sandbox.void(intent_id, key))

    async def refund(self, intent_id: str, key: str) -> Refund:
        return await self._around("refund", lambda: self.sandbox.refund(intent_id, key))

    async def retrieve(self, intent_id: str) -> PaymentIntent:
        return await self.sandbox.retrieve(intent_id)

    async def payment_method_details(self, payment_method: str) -> PaymentMethodDetails:
        return await self.sandbox.payment_method_details(payment_method)

    async def aclose(self) -> None:
        return None


class World:
    """One store file, one clock and one sandbox, across origin restarts."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
        self.clock = FakeClock()
        self.sandbox = SandboxProvider(clock=self.clock)
        self.running = contextlib.AsyncExitStack()

    @contextlib.asynccontextmanager
    async def origin(
        self, provider: Any = None, **settings: Any
    ) -> AsyncIterator[RunningOrigin]:
        async with running_origin(
            self.url, provider or self.sandbox, self.clock, **settings
        ) as running:
            yield running

    async def restart_and_check(self) -> RunningOrigin:
        """Start a fresh origin after a crash; return it once recovery ran.

        It runs until the test ends.
        """
        self.clock.advance(RESTART_DELAY)
        running = await self.running.enter_async_context(self.origin())
        await assert_consistent(running.engine, self.sandbox)
        return running


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    world = World(tmp_path)
    async with world.running:
        yield world


async def settle(running: RunningOrigin, world: World, passes: int = 5) -> None:
    """Run recovery passes until nothing is left to do, as time goes by."""
    for _ in range(passes):
        world.clock.advance(RESTART_DELAY)
        if not await running.saga.recover():
            return


@pytest.mark.parametrize("operation", PURCHASE_OPERATIONS)
@pytest.mark.parametrize("kind", KINDS)
async def test_one_fault_per_step_is_absorbed(
    world: World, operation: str, kind: str
) -> None:
    async with world.origin() as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        world.sandbox.faults.add(operation, kind)
        response = await buy(running.client, viewer)
        assert response.status_code == 201, response.text
        assert response.json()["status"] == "granted"
        await assert_consistent(running.engine, world.sandbox)


@pytest.mark.parametrize("operation", PURCHASE_OPERATIONS)
@pytest.mark.parametrize("kind", ["error", "timeout"])
async def test_lasting_outage_is_resumed_by_recovery(
    world: World, operation: str, kind: str
) -> None:
    async with world.origin() as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        world.sandbox.faults.add(operation, kind, times=None)
        response = await buy(running.client, viewer)
        assert response.status_code == 202, response.text
        assert response.json()["status"] in ("pending", "authorized")
        world.sandbox.faults.clear()
        await settle(running, world)
        (purchase_id,) = await purchase_ids(running.engine)
        assert await status_of(running.engine, purchase_id) == "granted"
        await assert_consistent(running.engine, world.sandbox)


async def test_intent_outage_gives_up_without_charging(world: World) -> None:
    async with world.origin() as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        world.sandbox.faults.add("create_intent", "error", times=None)
        assert (await buy(running.client, viewer)).status_code == 202
        await settle(running, world)
        (purchase_id,) = await purchase_ids(running.engine)
        assert await status_of(running.engine, purchase_id) == "failed"
        await assert_consistent(running.engine, world.sandbox)


async def test_authorization_outage_voids(world: World) -> None:
    async with world.origin() as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        world.sandbox.faults.add("authorize", "error", times=None)
        assert (await buy(running.client, viewer)).status_code == 202
        await settle(running, world)
        (purchase_id,) = await purchase_ids(running.engine)
        assert await status_of(running.engine, purchase_id) == "failed"
        assert "void" in await succeeded_steps(running.engine, purchase_id)
        await assert_consistent(running.engine, world.sandbox)


@pytest.mark.parametrize("operation", PURCHASE_OPERATIONS)
@pytest.mark.parametrize("when", ["before", "after"])
async def test_crash_around_purchase_step_resumes(
    world: World, operation: str, when: str
) -> None:
    key = str(uuid.uuid4())
    async with world.origin(CrashingProvider(world.sandbox, operation, when)) as first:
        await publish(first.client)
        viewer = await new_viewer(first.client)
        await crash(buy(first.client, viewer, key=key))
    recovered = await world.restart_and_check()
    (purchase_id,) = await purchase_ids(recovered.engine)
    assert await status_of(recovered.engine, purchase_id) == "granted"
    steps = await succeeded_steps(recovered.engine, purchase_id)
    assert steps.count("capture") == 1
    assert steps.count("grant") == 1
    async with world.origin() as running:
        retry = await buy(running.client, viewer, key=key)
        assert retry.status_code == 201, retry.text
        assert retry.json()["purchase_id"] == purchase_id
        assert retry.json()["status"] == "granted"


@pytest.fixture
def grant_crashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Make the next grant transaction die after writing, before committing."""
    real = origin.saga.set_entitlement
    remaining = [1]

    async def crash_once(*args: Any, **kwargs: Any) -> Any:
        result = await real(*args, **kwargs)
        if kwargs.get("granted") and remaining[0]:
            remaining[0] -= 1
            raise SimulatedCrash("killed inside the grant transaction")
        return result

    monkeypatch.setattr(origin.saga, "set_entitlement", crash_once)
    yield remaining


async def test_crash_inside_grant_resumes(world: World, grant_crashes: Any) -> None:
    async with world.origin() as first:
        await publish(first.client)
        viewer = await new_viewer(first.client)
        await crash(buy(first.client, viewer))
        (purchase_id,) = await purchase_ids(first.engine)
        # The transaction rolled back: captured, but nothing granted.
        assert await status_of(first.engine, purchase_id) == "captured"
    recovered = await world.restart_and_check()
    assert await status_of(recovered.engine, purchase_id) == "granted"


@pytest.mark.parametrize("failures", [1, 3])
async def test_failing_grant_is_retried_then_refunded(
    world: World, monkeypatch: pytest.MonkeyPatch, failures: int
) -> None:
    real = origin.saga.set_entitlement
    remaining = [failures]

    async def failing(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("granted") and remaining[0]:
            remaining[0] -= 1
            raise RuntimeError("the store refused the write")
        return await real(*args, **kwargs)

    monkeypatch.setattr(origin.saga, "set_entitlement", failing)
    async with world.origin() as running:
        await publish(running.client)
        viewer = await new_viewer(running.client)
        assert (await buy(running.client, viewer)).status_code == 202
        await settle(running, world)
        (purchase_id,) = await purchase_ids(running.engine)
        steps = await succeeded_steps(running.engine, purchase_id)
        if failures < 3:
            assert await status_of(running.engine, purchase_id) == "granted"
            assert "refund" not in steps
        else:
            # Three failed grants (the saga's limit): the capture is refunded.
            assert await status_of(running.engine, purchase_id) == "failed"
            assert steps[-1] == "refund"
            assert "grant" not in steps
        await assert_consistent(running.engine, world.sandbox)


async def granted_purchase(running: RunningOrigin) -> tuple[dict[str, str], str]:
    await publish(running.client)
    viewer = await new_viewer(running.client)
    response = await buy(running.client, viewer)
    assert response.json()["status"] == "granted"
    return viewer, response.json()["purchase_id"]


@pytest.mark.parametrize("kind", KINDS)
async def test_refund_fault_is_absorbed(world: World, kind: str) -> None:
    async with world.origin() as running:
        viewer, purchase_id = await granted_purchase(running)
        world.sandbox.faults.add("refund", kind)
        response = await refund(running.client, viewer, purchase_id)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "refunded"
        await assert_consistent(running.engine, world.sandbox)


@pytest.mark.parametrize("kind", ["error", "timeout"])
async def test_refund_outage_is_resumed(world: World, kind: str) -> None:
    async with world.origin() as running:
        viewer, purchase_id = await granted_purchase(running)
        world.sandbox.faults.add("refund", kind, times=None)
        response = await refund(running.client, viewer, purchase_id)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "refunding"
        # The viewer keeps the entitlement until the money is back.
        assert await status_of(running.engine, purchase_id) == "refunding"
        world.sandbox.faults.clear()
        await settle(running, world)
        assert await status_of(running.engine, purchase_id) == "refunded"
        await assert_consistent(running.engine, world.sandbox)


@pytest.mark.parametrize("when", ["before", "after"])
async def test_crash_around_refund_resumes(world: World, when: str) -> None:
    crashing = CrashingProvider(world.sandbox, "refund", when)
    async with world.origin(crashing) as first:
        viewer, purchase_id = await granted_purchase(first)
        await crash(refund(first.client, viewer, purchase_id))
    recovered = await world.restart_and_check()
    assert await status_of(recovered.engine, purchase_id) == "refunded"
    steps = await succeeded_steps(recovered.engine, purchase_id)
    assert steps.count("refund") == 1
    assert steps.count("revoke") == 1


async def authorized_then_refund_requested(running: RunningOrigin, world: World) -> str:
    """Buy with the authorization answer held back, and ask for a refund then."""
    await publish(running.client)
    viewer = await new_viewer(running.client)
    gate = world.sandbox.faults.add("authorize", "block_after")
    purchase = asyncio.create_task(buy(running.client, viewer))
    await gate.reached.wait()
    (purchase_id,) = await purchase_ids(running.engine)
    answer = await refund(running.client, viewer, purchase_id)
    assert answer.status_code == 202, answer.text
    gate.open()
    await purchase
    return purchase_id


@pytest.mark.parametrize("kind", KINDS)
async def test_void_fault_is_absorbed(world: World, kind: str) -> None:
    async with world.origin(provider_calls=gated_calls("authorize")) as running:
        world.sandbox.faults.add("void", kind)
        purchase_id = await authorized_then_refund_requested(running, world)
        await settle(running, world)
        assert await status_of(running.engine, purchase_id) == "canceled"
        steps = await succeeded_steps(running.engine, purchase_id)
        assert "capture" not in steps
        assert "void" in steps
        await assert_consistent(running.engine, world.sandbox)


@pytest.mark.parametrize("when", ["before", "after"])
async def test_crash_around_void_resumes(world: World, when: str) -> None:
    crashing = CrashingProvider(world.sandbox, "void", when)
    calls = gated_calls("authorize")
    async with world.origin(crashing, provider_calls=calls) as first:
        await crash(authorized_then_refund_requested(first, world))
        (purchase_id,) = await purchase_ids(first.engine)
    recovered = await world.restart_and_check()
    assert await status_of(recovered.engine, purchase_id) == "canceled"


async def test_expired_authorization_is_voided(world: World) -> None:
    crashing = CrashingProvider(world.sandbox, "authorize", "after")
    async with world.origin(crashing) as first:
        await publish(first.client)
        viewer = await new_viewer(first.client)
        await crash(buy(first.client, viewer))
    # The origin stays down past the authorization's seven days.
    world.clock.advance(8 * 24 * 3600)
    recovered = await world.restart_and_check()
    (purchase_id,) = await purchase_ids(recovered.engine)
    assert await status_of(recovered.engine, purchase_id) == "failed"
    async with world.origin() as running:
        body = (
            await running.client.get(f"/v1/purchases/{purchase_id}", headers=viewer)
        ).json()
    outcomes = [(step["step"], step["outcome"]) for step in body["steps"]]
    assert ("capture", "succeeded") not in outcomes
    assert ("authorization", "unknown") in outcomes
    assert ("authorization", "expired") in outcomes


async def test_expiry_recorded_while_authorized(world: World) -> None:
    # The authorization is recorded, then the origin is down for eight days.
    crashing = CrashingProvider(world.sandbox, "capture", "before")
    async with world.origin(crashing) as first:
        await publish(first.client)
        viewer = await new_viewer(first.client)
        await crash(buy(first.client, viewer))
        (purchase_id,) = await purchase_ids(first.engine)
        assert await status_of(first.engine, purchase_id) == "authorized"
    world.clock.advance(8 * 24 * 3600)
    recovered = await world.restart_and_check()
    assert await status_of(recovered.engine, purchase_id) == "failed"
    async with world.origin() as running:
        body = (
            await running.client.get(f"/v1/purchases/{purchase_id}", headers=viewer)
        ).json()
    assert ("authorization", "expired") in [
        (step["step"], step["outcome"]) for step in body["steps"]
    ]
