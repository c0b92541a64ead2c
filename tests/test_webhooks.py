"""Inbound webhooks: signatures from the official libraries, replays, ordering.

Deliveries are signed with the ``stripe`` and ``standardwebhooks`` packages,
except Standard Webhooks' ``v1a`` (Ed25519), which that package does not
sign, so the test signs it with ``cryptography`` over the same content. The
origin runs in process on a sandbox that plays Stripe (its provider name is
``stripe``), so Stripe events map onto the sandbox's payment intents.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks
import stripe
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from origin.providers import SandboxProvider
from origin.store import webhook_deliveries, webhook_events
from origin.webhook_events import parse_event
from segmentgate import events_cli
from segmentgate.cli import _parser as cli_parser
from tests.saga_harness import (
    ADMIN_TOKEN,
    FakeClock,
    RunningOrigin,
    buy,
    new_viewer,
    publish,
    purchase_ids,
    running_origin,
    status_of,
    succeeded_steps,
)

STRIPE_SECRET = "whsec_stripe_current"
STRIPE_OLD_SECRET = "whsec_stripe_previous"
STANDARD_SECRET = "whsec_" + base64.b64encode(b"s" * 32).decode()
ED25519_KEY = Ed25519PrivateKey.generate()
ED25519_PUBLIC = (
    "whpk_"
    + base64.b64encode(
        ED25519_KEY.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    ).decode()
)
SECRETS = (
    f"stripe:{STRIPE_OLD_SECRET},stripe:{STRIPE_SECRET},"
    f"sandbox:{STANDARD_SECRET},sandbox:{ED25519_PUBLIC}"
)
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PROBLEM = "urn:segmentgate:problem:"
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"


class World:
    def __init__(self, database_url: str, **settings: Any) -> None:
        self.database_url = database_url
        self.settings = settings
        self.clock = FakeClock(float(int(datetime.now(UTC).timestamp())))
        self.sandbox = SandboxProvider(clock=self.clock)
        self.sandbox.name = "stripe"  # type: ignore[misc]

    @contextlib.asynccontextmanager
    async def origin(self, **settings: Any) -> AsyncIterator[RunningOrigin]:
        options = {
            "webhook_secrets": SECRETS,
            "webhook_retry_base": 1.0,
            **self.settings,
            **settings,
        }
        async with running_origin(
            self.database_url, self.sandbox, self.clock, **options
        ) as running:
            await publish(running.client)
            yield running


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}")


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_world(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[World]:
    """A world on SQLite, and one on the PostgreSQL server at 127.0.0.1:5432
    in a database of its own (skipped, saying why, when unreachable)."""
    if request.param == "sqlite":
        yield World(f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}")
        return
    name = f"segmentgate_webhooks_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(f"{PG_SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
    except (OSError, OperationalError, DBAPIError) as exc:
        await admin.dispose()
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 is unreachable: {exc}")
    try:
        yield World(
            f"{PG_SERVER}/{name}", master_key=Fernet.generate_key().decode("ascii")
        )
    finally:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


def stripe_event(event_type: str, item: dict[str, Any]) -> bytes:
    event = {
        "id": "evt_" + uuid.uuid4().hex,
        "object": "event",
        "type": event_type,
        "data": {"object": item},
    }
    return json.dumps(event).encode()


def intent_object(intent_id: str, status: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "status": status,
        "amount": 499,
        "currency": "eur",
        "amount_received": 499 if status == "succeeded" else 0,
        "latest_charge": "ch_1",
        **fields,
    }


def refunded_charge(intent_id: str) -> dict[str, Any]:
    return {
        "id": "ch_1",
        "object": "charge",
        "payment_intent": intent_id,
        "amount": 499,
        "amount_captured": 499,
        "amount_refunded": 499,
        "currency": "eur",
        "refunded": True,
    }


def stripe_headers(
    body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), secret, timestamp=timestamp
    )
    return {"Stripe-Signature": header, "Content-Type": "application/json"}


async def post_stripe(
    running: RunningOrigin, body: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await running.client.post(
        "/v1/webhooks/stripe",
        content=body,
        headers=headers if headers is not None else stripe_headers(body),
    )


def standard_headers(
    body: bytes, timestamp: int, message_id: str | None = None
) -> dict[str, str]:
    message_id = message_id or "msg_" + uuid.uuid4().hex
    signature = standardwebhooks.Webhook(STANDARD_SECRET).sign(
        message_id, datetime.fromtimestamp(timestamp, UTC), body
    )
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


async def authorized_purchase(running: RunningOrigin, world: World) -> tuple[str, str]:
    """Buy with a capture outage, leaving the purchase authorized."""
    world.sandbox.faults.add("capture", "error", times=None)
    response = await buy(running.client, await new_viewer(running.client))
    assert response.status_code in (201, 202), response.text
    [purchase_id] = await purchase_ids(running.engine)
    assert await status_of(running.engine, purchase_id) == "authorized"
    [intent] = world.sandbox.intents_for(purchase_id)
    return purchase_id, intent["id"]


async def stored_event(running: RunningOrigin, event_id: str) -> Any:
    async with running.engine.connect() as connection:
        return (
            await connection.execute(
                select(webhook_events).where(webhook_events.c.event_id == event_id)
            )
        ).one()


# Signatures ---------------------------------------------------------------


async def test_stripe_signature_accepted(world: World) -> None:
    async with world.origin() as running:
        body = stripe_event("customer.created", {"id": "cus_1"})
        response = await post_stripe(running, body)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ignored"
    assert response.headers["Segmentgate-Correlation-Id"].startswith("whd_")


async def test_stripe_old_secret_and_extra_signatures(world: World) -> None:
    async with world.origin() as running:
        body = stripe_event("customer.created", {"id": "cus_1"})
        old = stripe_headers(body, STRIPE_OLD_SECRET)
        accepted = await post_stripe(running, body, old)
        body = stripe_event("customer.created", {"id": "cus_2"})
        headers = stripe_headers(body)
        # A header may carry several v1 signatures; any match suffices.
        headers["Stripe-Signature"] = headers["Stripe-Signature"].replace(
            ",v1=", ",v1=" + "0" * 64 + ",v1="
        )
        several = await post_stripe(running, body, headers)
    assert accepted.status_code == 200, accepted.text
    assert several.status_code == 200, several.text


@pytest.mark.parametrize(
    ("case", "problem"),
    [
        ("tampered", "webhook-signature-invalid"),
        ("wrong-secret", "webhook-signature-invalid"),
        ("stale", "webhook-timestamp-out-of-tolerance"),
        ("future", "webhook-timestamp-out-of-tolerance"),
        ("unsigned", "webhook-signature-missing"),
    ],
)
async def test_stripe_rejects(world: World, case: str, problem: str) -> None:
    body = stripe_event("customer.created", {"id": "cus_1"})
    now = int(world.clock())
    headers = {
        "tampered": stripe_headers(body),
        "wrong-secret": stripe_headers(body, "whsec_someone_else"),
        "stale": stripe_headers(body, timestamp=now - 301),
        "future": stripe_headers(body, timestamp=now + 301),
        "unsigned": {"Content-Type": "application/json"},
    }[case]
    if case == "tampered":
        body = body.replace(b"cus_1", b"cus_2")
    async with world.origin() as running:
        response = await post_stripe(running, body, headers)
        async with running.engine.connect() as connection:
            stored = (await connection.execute(select(webhook_deliveries))).all()
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"] == PROBLEM + problem
    assert stored == []


async def test_tolerance_edges_accepted(world: World) -> None:
    now = int(world.clock())
    async with world.origin() as running:
        for timestamp in (now - 299, now + 299):
            body = stripe_event("customer.created", {"id": "cus_1"})
            response = await post_stripe(
                running, body, stripe_headers(body, timestamp=timestamp)
            )
            assert response.status_code == 200, response.text


async def test_standard_webhooks_hmac_and_ed25519(world: World) -> None:
    now = int(world.clock())
    body = json.dumps({"type": "customer.created", "data": {"id": "c"}}).encode()
    async with world.origin() as running:
        hmac_signed = await running.client.post(
            "/v1/webhooks/sandbox", content=body, headers=standard_headers(body, now)
        )
        message_id = "msg_ed25519"
        signed = f"{message_id}.{now}.".encode() + body
        ed25519 = base64.b64encode(ED25519_KEY.sign(signed)).decode()
        headers = {
            "webhook-id": message_id,
            "webhook-timestamp": str(now),
            "webhook-signature": f"v1,{base64.b64encode(b'x' * 32).decode()} "
            f"v1a,{ed25519}",
        }
        ed_signed = await running.client.post(
            "/v1/webhooks/sandbox", content=body, headers=headers
        )
        tampered = await running.client.post(
            "/v1/webhooks/sandbox", content=body + b" ", headers=headers
        )
    assert hmac_signed.status_code == 200, hmac_signed.text
    assert ed_signed.status_code == 200, ed_signed.text
    assert ed_signed.json()["event_id"] == message_id
    assert tampered.json()["type"] == PROBLEM + "webhook-signature-invalid"


@pytest.mark.parametrize("offset", [-301, 301])
async def test_standard_webhooks_rejects_time(world: World, offset: int) -> None:
    body = b'{"type": "customer.created", "data": {}}'
    headers = standard_headers(body, int(world.clock()) + offset)
    async with world.origin() as running:
        response = await running.client.post(
            "/v1/webhooks/sandbox", content=body, headers=headers
        )
    assert response.status_code == 400
    assert response.json()["type"] == PROBLEM + "webhook-timestamp-out-of-tolerance"


async def test_unknown_provider_and_bad_body(world: World) -> None:
    async with world.origin() as running:
        unknown = await running.client.post("/v1/webhooks/paypal", content=b"{}")
        body = b"not json"
        invalid = await post_stripe(running, body)
        body = b'{"id": "evt_1", "type": "payment_intent.succeeded", "data": {}}'
        shapeless = await post_stripe(running, body)
    assert unknown.status_code == 404
    assert unknown.json()["type"] == PROBLEM + "not-found"
    assert invalid.status_code == 422
    assert invalid.json()["type"] == PROBLEM + "unprocessable"
    assert shapeless.status_code == 422


async def test_delivery_stored_with_redacted_headers(world: World) -> None:
    async with world.origin() as running:
        body = stripe_event("customer.created", {"id": "cus_1"})
        headers = {**stripe_headers(body), "Authorization": "Bearer hidden"}
        response = await post_stripe(running, body, headers)
        async with running.engine.connect() as connection:
            row = (await connection.execute(select(webhook_deliveries))).one()
    assert row.correlation_id == response.headers["Segmentgate-Correlation-Id"]
    assert row.payload == body.decode()
    assert row.headers["stripe-signature"] == "[redacted]"
    assert row.headers["authorization"] == "[redacted]"
    assert "hidden" not in json.dumps(row.headers)


# Processing ---------------------------------------------------------------


async def test_capture_event_captures_and_grants(any_world: World) -> None:
    async with any_world.origin() as running:
        purchase_id, intent_id = await authorized_purchase(running, any_world)
        body = stripe_event(
            "payment_intent.succeeded", intent_object(intent_id, "succeeded")
        )
        first = await post_stripe(running, body)
        again = await post_stripe(running, body)
        status = await status_of(running.engine, purchase_id)
        steps = await succeeded_steps(running.engine, purchase_id)
    assert first.json()["status"] == "processed"
    assert again.json()["status"] == "duplicate"
    assert status == "granted"
    assert steps.count("capture") == 1
    assert steps.count("grant") == 1


async def test_concurrent_duplicates_apply_once(any_world: World) -> None:
    async with any_world.origin() as running:
        purchase_id, intent_id = await authorized_purchase(running, any_world)
        body = stripe_event(
            "payment_intent.succeeded", intent_object(intent_id, "succeeded")
        )
        responses = await asyncio.gather(
            *(post_stripe(running, body) for _ in range(4))
        )
        steps = await succeeded_steps(running.engine, purchase_id)
        async with running.engine.connect() as connection:
            deliveries = (await connection.execute(select(webhook_deliveries))).all()
    statuses = sorted(response.json()["status"] for response in responses)
    assert statuses == ["duplicate", "duplicate", "duplicate", "processed"]
    assert steps.count("capture") == 1
    assert len(deliveries) == 4
    assert sum(not delivery.duplicate for delivery in deliveries) == 1


async def test_refund_before_capture_ends_refunded(any_world: World) -> None:
    async with any_world.origin() as running:
        purchase_id, intent_id = await authorized_purchase(running, any_world)
        refund_body = stripe_event("charge.refunded", refunded_charge(intent_id))
        refunded = await post_stripe(running, refund_body)
        late_capture = stripe_event(
            "payment_intent.succeeded", intent_object(intent_id, "succeeded")
        )
        late = await post_stripe(running, late_capture)
        status = await status_of(running.engine, purchase_id)
        steps = await succeeded_steps(running.engine, purchase_id)
    assert refunded.json()["status"] == "processed"
    assert late.json()["status"] == "processed"
    assert status == "refunded"
    assert "grant" not in steps


async def test_older_status_never_overwrites(any_world: World) -> None:
    async with any_world.origin() as running:
        purchase_id, intent_id = await authorized_purchase(running, any_world)
        captured = stripe_event(
            "payment_intent.succeeded", intent_object(intent_id, "succeeded")
        )
        await post_stripe(running, captured)
        older = stripe_event(
            "payment_intent.amount_capturable_updated",
            intent_object(intent_id, "requires_capture"),
        )
        response = await post_stripe(running, older)
        status = await status_of(running.engine, purchase_id)
    assert response.json()["status"] == "processed"
    assert status == "granted"


async def test_canceled_event_fails_authorized(world: World) -> None:
    async with world.origin() as running:
        purchase_id, intent_id = await authorized_purchase(running, world)
        body = stripe_event(
            "payment_intent.canceled",
            intent_object(intent_id, "canceled", cancellation_reason="automatic"),
        )
        response = await post_stripe(running, body)
        status = await status_of(running.engine, purchase_id)
    assert response.json()["status"] == "processed"
    assert status == "failed"


async def test_event_before_commit_is_retried(any_world: World) -> None:
    async with any_world.origin() as running:
        gate = any_world.sandbox.faults.add("create_intent", "block_after")
        viewer = await new_viewer(running.client)
        purchase = asyncio.create_task(buy(running.client, viewer))
        await gate.reached.wait()
        [purchase_id] = await purchase_ids(running.engine)
        [intent] = any_world.sandbox.intents_for(purchase_id)
        body = stripe_event(
            "payment_intent.amount_capturable_updated",
            intent_object(intent["id"], "requires_capture"),
        )
        early = await post_stripe(running, body)
        event_id = json.loads(body)["id"]
        pending = await stored_event(running, event_id)
        gate.open()
        await purchase
        any_world.clock.advance(2.0)
        await running.app.state.webhooks.process_due()
        done = await stored_event(running, event_id)
        status = await status_of(running.engine, purchase_id)
    assert early.json()["status"] == "pending"
    assert "no purchase has payment intent" in pending.last_error
    assert done.status == "processed"
    assert status == "granted"


async def test_failures_reach_dead_letters_and_replay(any_world: World) -> None:
    async with any_world.origin(webhook_max_attempts=2) as running:
        body = stripe_event(
            "payment_intent.succeeded", intent_object("pi_unknown", "succeeded")
        )
        first = await post_stripe(running, body)
        correlation_id = first.json()["correlation_id"]
        early = await running.app.state.webhooks.process_due()
        any_world.clock.advance(1.0)
        await running.app.state.webhooks.process_due()
        listed = await running.client.get("/v1/admin/dlq", headers=ADMIN)
        shown = await running.client.get(
            f"/v1/admin/dlq/{correlation_id}", headers=ADMIN
        )
        replayed = await running.client.post(
            f"/v1/admin/dlq/{correlation_id}/replay", headers=ADMIN
        )
        again = await running.client.post(
            f"/v1/admin/dlq/{correlation_id}/replay", headers=ADMIN
        )
        missing = await running.client.get("/v1/admin/dlq/whd_none", headers=ADMIN)
        unauthorized = await running.client.get("/v1/admin/dlq")
    assert first.json()["status"] == "pending"
    assert early == 0
    [dead] = listed.json()["dead_letters"]
    assert dead["correlation_id"] == correlation_id
    assert dead["attempts"] == 2
    assert "pi_unknown" in dead["last_error"]
    assert shown.json()["payload"] == body.decode()
    assert shown.json()["headers"]["stripe-signature"] == "[redacted]"
    assert replayed.status_code == 200, replayed.text
    assert replayed.json()["status"] == "pending"
    assert again.status_code == 409
    assert missing.status_code == 404
    assert unauthorized.status_code == 401


# Event parsing and the command line ---------------------------------------


@pytest.mark.parametrize(
    ("event_type", "item", "status", "refunded"),
    [
        (
            "payment_intent.succeeded",
            intent_object("pi_1", "succeeded"),
            "succeeded",
            0,
        ),
        (
            "payment_intent.amount_capturable_updated",
            intent_object("pi_1", "requires_capture"),
            "requires_capture",
            0,
        ),
        (
            "payment_intent.canceled",
            intent_object("pi_1", "canceled", cancellation_reason="automatic"),
            "canceled",
            0,
        ),
        (
            "payment_intent.payment_failed",
            intent_object(
                "pi_1",
                "requires_payment_method",
                last_payment_error={"decline_code": "insufficient_funds"},
            ),
            "requires_payment_method",
            0,
        ),
        ("charge.refunded", refunded_charge("pi_1"), "succeeded", 499),
    ],
)
def test_stripe_events_map_to_intents(
    event_type: str, item: dict[str, Any], status: str, refunded: int
) -> None:
    event = parse_event(stripe_event(event_type, item), None)
    assert event.event_type == event_type
    assert event.intent is not None
    assert event.intent.id == "pi_1"
    assert event.intent.status == status
    assert event.intent.amount_refunded == refunded


def test_failed_payment_keeps_decline_code() -> None:
    item = intent_object(
        "pi_1",
        "requires_payment_method",
        last_payment_error={"decline_code": "insufficient_funds"},
    )
    event = parse_event(stripe_event("payment_intent.payment_failed", item), None)
    assert event.intent is not None
    assert event.intent.decline_code == "insufficient_funds"


def test_dlq_commands_call_admin_api(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str]] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path))
        assert request.headers["Authorization"] == "Bearer cli-token"
        return httpx.Response(200, json={"ok": True})

    monkeypatch.setenv("SEGMENTGATE_ADMIN_TOKEN", "cli-token")
    transport = httpx.MockTransport(handle)
    for argv in (
        ["dlq", "list"],
        ["dlq", "show", "whd_1"],
        ["dlq", "replay", "whd_1"],
        ["outbox", "status"],
        ["outbox", "resend", "--from", "2", "--to", "9"],
    ):
        assert events_cli.run(cli_parser().parse_args(argv), transport) == 0
    assert seen == [
        ("GET", "/v1/admin/dlq"),
        ("GET", "/v1/admin/dlq/whd_1"),
        ("POST", "/v1/admin/dlq/whd_1/replay"),
        ("GET", "/v1/admin/outbox"),
        ("POST", "/v1/admin/outbox/resend"),
    ]


async def waiting_purchase(running: RunningOrigin, world: World) -> tuple[str, str]:
    """Buy with the 3-D Secure card, leaving the purchase requires_action."""
    response = await buy(
        running.client,
        await new_viewer(running.client),
        "pm_card_authenticationRequired",
    )
    assert response.status_code == 202, response.text
    [purchase_id] = await purchase_ids(running.engine)
    assert await status_of(running.engine, purchase_id) == "requires_action"
    [intent] = world.sandbox.intents_for(purchase_id)
    return purchase_id, intent["authentication_id"]


async def test_capturable_event_ends_authentication(world: World) -> None:
    async with world.origin() as running:
        purchase_id, authentication_id = await waiting_purchase(running, world)
        # The issuer records the viewer's approval, and only the webhook
        # reports it to the origin.
        intent = await world.sandbox.complete_authentication(authentication_id, True)
        body = stripe_event(
            "payment_intent.amount_capturable_updated",
            intent_object(intent.id, "requires_capture"),
        )
        response = await post_stripe(running, body)
        status = await status_of(running.engine, purchase_id)
        steps = await succeeded_steps(running.engine, purchase_id)
    assert response.json()["status"] == "processed"
    assert status == "granted"
    assert steps[-4:] == ["authentication", "authorization", "capture", "grant"]


async def test_failed_authentication_event_declines(world: World) -> None:
    async with world.origin() as running:
        purchase_id, authentication_id = await waiting_purchase(running, world)
        intent = await world.sandbox.complete_authentication(authentication_id, False)
        body = stripe_event(
            "payment_intent.payment_failed",
            intent_object(
                intent.id,
                "requires_payment_method",
                last_payment_error={"code": "payment_intent_authentication_failure"},
            ),
        )
        response = await post_stripe(running, body)
        status = await status_of(running.engine, purchase_id)
    assert response.json()["status"] == "processed"
    assert status == "declined"
