"""An in-process origin on a store file for saga tests, and consistency checks.

The origin runs its real lifespan (tables, keys, the recovery pass) and is
reached through httpx's ASGI transport, so nothing leaves the process. A
"crash" abandons an origin and builds a new one on the same store file and
the same sandbox, which stands for the provider that outlives us.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette

from origin import OriginSettings, create_app
from origin.invariants import check_invariants
from origin.providers import CallPolicy, PaymentProvider, SandboxProvider
from origin.providers.base import OPERATIONS, REQUIRES_CAPTURE
from origin.risk import RiskPolicy
from origin.saga import PurchaseSaga, SagaPolicy
from origin.state import Origin
from origin.store import purchase_steps, purchases

ADMIN_TOKEN = "test-admin-token"
CONTENT_ID = "film"
PRICE = {"amount": "4.99", "currency": "EUR"}

# Provider calls that fail fast: a hung call times out after 50 ms, and
# retries wait a few milliseconds. The breakers stay out of the way.
FAST_CALLS = CallPolicy(
    timeouts=dict.fromkeys(OPERATIONS, 0.05),
    attempts=3,
    wait_initial=0.001,
    wait_max=0.002,
    wait_jitter=0.0,
    failure_threshold=1000,
    reset_seconds=0.0,
)


def gated_calls(*operations: str) -> CallPolicy:
    """FAST_CALLS, except that ``operations`` wait 30 s, long enough for a
    test to hold them at a gate and act meanwhile."""
    timeouts = {**FAST_CALLS.timeouts, **dict.fromkeys(operations, 30.0)}
    return dataclasses.replace(FAST_CALLS, timeouts=timeouts)


# Saga tests buy with one test card from one address again and again, which
# the risk engine would rightly block; it still assesses every purchase.
OBSERVE_RISK = RiskPolicy(mode="observe")

# Saga retries due at once once the clock moves; three tries before giving up.
FAST_SAGA = SagaPolicy(
    lease_seconds=30.0, retry_base=1.0, retry_max=5.0, max_attempts=3
)


class SimulatedCrash(BaseException):
    """Stops a run where it stands, as a killed process would.

    It derives from BaseException so that no ``except Exception`` in the
    origin handles it, and nothing is cleaned up or released.
    """


class FakeClock:
    """Epoch seconds that move only when a test advances them."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RunningOrigin:
    def __init__(self, app: Starlette, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    @property
    def state(self) -> Origin:
        return self.app.state.origin  # type: ignore[no-any-return]

    @property
    def saga(self) -> PurchaseSaga:
        return self.state.saga

    @property
    def engine(self) -> AsyncEngine:
        return self.state.engine


@contextlib.asynccontextmanager
async def running_origin(
    database_url: str,
    provider: PaymentProvider,
    clock: FakeClock,
    **settings: Any,
) -> AsyncIterator[RunningOrigin]:
    """Run an origin until the block ends; it waits for its start-up recovery."""
    options: dict[str, Any] = {
        "provider_calls": FAST_CALLS,
        "saga": FAST_SAGA,
        "recovery_interval": 0.0,
        "risk": OBSERVE_RISK,
        **settings,
    }
    app = create_app(
        OriginSettings(database_url=database_url, admin_token=ADMIN_TOKEN, **options),
        provider,
        clock=clock,
    )
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1"
        ) as client:
            running = RunningOrigin(app, client)
            await running.state.recovery.wait_first_pass()
            yield running


async def publish(client: httpx.AsyncClient, content_id: str = CONTENT_ID) -> None:
    response = await client.put(
        f"/v1/admin/content/{content_id}",
        json={
            "title": "Film",
            "entry": "master.m3u8",
            "policy": {"kind": "purchase", "price": PRICE, "preview_seconds": 10},
        },
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code in (200, 201), response.text


async def new_viewer(client: httpx.AsyncClient) -> dict[str, str]:
    """Create a viewer; return the headers that authenticate it."""
    response = await client.post("/v1/viewers")
    assert response.status_code == 201, response.text
    return {"Authorization": f"Bearer {response.json()['viewer_token']}"}


async def buy(
    client: httpx.AsyncClient,
    viewer: dict[str, str],
    payment_method: str = "pm_card_visa",
    *,
    key: str | None = None,
    content_id: str = CONTENT_ID,
) -> httpx.Response:
    return await client.post(
        "/v1/purchases",
        json={"content_id": content_id, "payment_method": payment_method},
        headers={**viewer, "Idempotency-Key": key or str(uuid.uuid4())},
    )


async def refund(
    client: httpx.AsyncClient, viewer: dict[str, str], purchase_id: str
) -> httpx.Response:
    return await client.post(
        f"/v1/purchases/{purchase_id}/refund",
        headers={**viewer, "Idempotency-Key": str(uuid.uuid4())},
    )


async def purchase_ids(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(purchases.c.purchase_id).order_by(purchases.c.created_at)
        )
        return [row.purchase_id for row in rows]


async def status_of(engine: AsyncEngine, purchase_id: str) -> str:
    async with engine.connect() as connection:
        return str(
            (
                await connection.execute(
                    select(purchases.c.status).where(
                        purchases.c.purchase_id == purchase_id
                    )
                )
            ).scalar_one()
        )


async def succeeded_steps(engine: AsyncEngine, purchase_id: str) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            select(purchase_steps.c.step)
            .where(
                purchase_steps.c.purchase_id == purchase_id,
                purchase_steps.c.outcome == "succeeded",
            )
            .order_by(purchase_steps.c.step_id)
        )
        return [row.step for row in rows]


async def assert_consistent(engine: AsyncEngine, sandbox: SandboxProvider) -> None:
    """Check the store's invariants, and that the sandbox agrees with the store."""
    async with engine.connect() as connection:
        problems = await check_invariants(connection)
    assert problems == []
    for purchase_id in await purchase_ids(engine):
        steps = await succeeded_steps(engine, purchase_id)
        intents = sandbox.intents_for(purchase_id)
        captures = sum(intent["captures"] for intent in intents)
        refunds = sum(intent["refunds"] for intent in intents)
        assert captures <= 1, f"{purchase_id} captured {captures} times"
        assert refunds <= 1, f"{purchase_id} refunded {refunds} times"
        assert captures == steps.count("capture"), (purchase_id, steps, intents)
        assert refunds == steps.count("refund"), (purchase_id, steps, intents)
        held = [intent for intent in intents if intent["status"] == REQUIRES_CAPTURE]
        assert held == [], f"{purchase_id} left an authorization held: {held}"
