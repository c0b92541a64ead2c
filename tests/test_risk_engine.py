"""The risk engine on its store: windows, replicas, declines, surges, settings.

Replica tests run on SQLite and on the PostgreSQL server at 127.0.0.1:5432
(user postgres), in a database created for the test and dropped after; the
PostgreSQL case is skipped, saying why, when the server cannot be reached.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from origin.risk import (
    ALLOW,
    BLOCK,
    CHALLENGE,
    Attempt,
    Limit,
    RiskEngine,
    RiskPolicy,
)
from origin.risk_signals import network_prefix
from origin.store import create_engine, create_tables, purchases, viewers
from tests.postgres import temporary_database
from tests.saga_harness import FakeClock


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}"
        return
    async with temporary_database("segmentgate_test") as url:
        yield url


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'risk.db'}")
    await create_tables(engine)
    yield engine
    await engine.dispose()


def attempt(viewer: str, card: str | None = "card-1", **where: str) -> Attempt:
    return Attempt(
        viewer_id=viewer,
        content_id="film",
        device_key=where.get("device", f"device-of-{viewer}"),
        network_key=where.get("network", f"network-of-{viewer}"),
        card_key=card,
        card_country=where.get("card_country"),
        request_country=where.get("request_country"),
    )


async def settle(
    engine: AsyncEngine,
    risk: RiskEngine,
    assessment_id: str,
    viewer: str,
    status: str,
    *,
    three_d_secure: bool = False,
) -> None:
    """Record the purchase that an allowed attempt became, as the saga would."""
    purchase_id = "pur_" + uuid.uuid4().hex
    async with engine.begin() as connection:
        exists = await connection.execute(
            viewers.select().where(viewers.c.viewer_id == viewer)
        )
        if exists.first() is None:
            await connection.execute(
                viewers.insert().values(
                    viewer_id=viewer, viewer_ref=viewer, token_hash=viewer, created_at=0
                )
            )
        await connection.execute(
            purchases.insert().values(
                purchase_id=purchase_id,
                viewer_id=viewer,
                content_id=purchase_id,
                amount="4.99",
                currency="EUR",
                payment_method="pm_card_visa",
                provider="sandbox",
                status=status,
                request_three_d_secure=three_d_secure,
                created_at=0,
                updated_at=0,
            )
        )
    await risk.attach_purchase(assessment_id, purchase_id)


async def test_replicas_share_their_windows(database_url: str) -> None:
    clock = FakeClock()
    engines = [create_engine(database_url) for _ in range(2)]
    try:
        await create_tables(engines[0])
        replicas = [RiskEngine(engine, clock=clock) for engine in engines]
        decisions = []
        for index in range(4):
            # Alternate replicas; every viewer on the same network.
            replica = replicas[index % 2]
            assessment = await replica.assess(attempt(f"v{index}", network="campus"))
            decisions.append(assessment.decision)
            clock.advance(60)
    finally:
        for engine in engines:
            await engine.dispose()

    # The second viewer of the card is challenged. The third makes three
    # viewers within the hour and within the day, two challenges: a block.
    assert decisions == [ALLOW, CHALLENGE, BLOCK, BLOCK]


async def test_windows_expire(store: AsyncEngine) -> None:
    clock = FakeClock()
    risk = RiskEngine(store, clock=clock)
    await risk.assess(attempt("v0", network="home"))
    clock.advance(2 * 86400)

    later = await risk.assess(attempt("v1", network="home"))

    assert later.signals["card_viewers"] == 1
    assert later.decision == ALLOW


async def test_declines_skip_challenged_purchases(store: AsyncEngine) -> None:
    clock = FakeClock()
    # Only the declines count here: one viewer on one device trying cards.
    policy = RiskPolicy(viewer_cards=Limit(0, 0), device_cards=Limit(0, 0))
    risk = RiskEngine(store, policy, clock=clock)
    outcomes = [("declined", False), ("declined", True), ("declined", False)]
    for index, (status, three_d_secure) in enumerate(outcomes):
        assessment = await risk.assess(attempt("tester", card=f"card-{index}"))
        await settle(
            store,
            risk,
            assessment.assessment_id,
            "tester",
            status,
            three_d_secure=three_d_secure,
        )
        clock.advance(60)

    last = await risk.assess(attempt("tester", card="card-9"))

    # Two declines count; the challenged purchase in between neither counts
    # nor ends the run.
    assert last.signals["declines_in_a_row"] == 2
    assert [reason.code for reason in last.reasons] == ["declines_in_a_row"]
    assert last.decision == CHALLENGE


async def test_success_ends_a_run_of_declines(store: AsyncEngine) -> None:
    clock = FakeClock()
    risk = RiskEngine(store, clock=clock)
    for status in ("declined", "declined", "granted"):
        assessment = await risk.assess(attempt("buyer", card="card-1"))
        await settle(store, risk, assessment.assessment_id, "buyer", status)
        clock.advance(600)

    last = await risk.assess(attempt("buyer", card="card-1"))

    assert last.signals["declines_in_a_row"] == 0
    assert last.decision == ALLOW


async def test_surge_is_recorded_but_no_reason(store: AsyncEngine) -> None:
    clock = FakeClock()
    risk = RiskEngine(store, RiskPolicy(surge_min_purchases=30), clock=clock)
    assessments = []
    for index in range(40):
        viewer = f"fan-{index}"
        fan = attempt(viewer, card=f"card-{index}", network=f"home-{index}")
        assessments.append(await risk.assess(fan))
        clock.advance(5)

    assert assessments[0].signals["surge"] is False
    assert assessments[-1].signals["surge"] is True
    assert {assessment.decision for assessment in assessments} == {ALLOW}


async def test_crowd_excuses_a_popular_device(store: AsyncEngine) -> None:
    clock = FakeClock()
    risk = RiskEngine(store, clock=clock)
    decisions = []
    for index in range(12):
        # A third of the campus uses the same phone model.
        device = "popular-phone" if index % 3 == 0 else f"device-{index}"
        viewer = f"student-{index}"
        student = attempt(viewer, card=f"card-{index}", network="campus", device=device)
        decisions.append((await risk.assess(student)).decision)

    assert decisions == [ALLOW] * 12


async def test_farm_device_is_blocked(store: AsyncEngine) -> None:
    clock = FakeClock()
    risk = RiskEngine(store, clock=clock)
    decisions = []
    for index in range(5):
        bot = attempt(f"bot-{index}", card=f"card-{index}", network="dc", device="d")
        decisions.append((await risk.assess(bot)).decision)

    assert decisions[:2] == [ALLOW, CHALLENGE]
    assert decisions[-1] == BLOCK


async def test_observe_mode_records_without_enforcing(store: AsyncEngine) -> None:
    risk = RiskEngine(store, RiskPolicy(mode="observe"), clock=FakeClock())
    for index in range(5):
        last = await risk.assess(attempt(f"v{index}", network="shared"))

    assert last.decision == BLOCK
    assert last.enforced is False
    assert last.blocks is False
    assert last.challenges is False


async def test_country_mismatch_challenges(store: AsyncEngine) -> None:
    risk = RiskEngine(store, clock=FakeClock())
    abroad = attempt("v", card_country="US", request_country="DE")
    at_home = attempt("w", card="card-2", card_country="DE", request_country="DE")

    mismatch = await risk.assess(abroad)
    same = await risk.assess(at_home)

    assert mismatch.decision == CHALLENGE
    assert mismatch.reasons[0].observed == "US/DE"
    assert same.decision == ALLOW


def test_policy_from_environment() -> None:
    policy = RiskPolicy.from_env(
        {
            "SEGMENTGATE_RISK_MODE": "observe",
            "SEGMENTGATE_RISK_CARD_VIEWERS": "4,8",
            "SEGMENTGATE_RISK_VELOCITY_SECONDS": "600",
            "SEGMENTGATE_RISK_CHALLENGES_TO_BLOCK": "0",
        }
    )

    assert policy.mode == "observe"
    assert policy.card_viewers == Limit(4, 8)
    assert policy.velocity_seconds == 600.0
    assert policy.challenges_to_block == 0
    assert policy.declines == RiskPolicy().declines


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SEGMENTGATE_RISK_MODE", "strict", "risk mode must be one of"),
        ("SEGMENTGATE_RISK_CARD_VIEWERS", "4", "must be challenge,block"),
        ("SEGMENTGATE_RISK_SURGE_FACTOR", "many", "must be a number"),
        ("SEGMENTGATE_RISK_COUNTRY_MISMATCH", "maybe", "country_mismatch must be"),
        ("SEGMENTGATE_RISK_DECLINES", "3,2", "must not be below the challenge"),
        ("SEGMENTGATE_RISK_DECLINES", "-1,2", "must not be negative"),
        ("SEGMENTGATE_RISK_CROWD_DEVICE_SHARE", "1.5", "fraction from 0 to 1"),
        ("SEGMENTGATE_RISK_VELOCITY_SECONDS", "0", "must be positive"),
    ],
)
def test_policy_rejects_bad_settings(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RiskPolicy.from_env({name: value})


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("not an address", "unknown"),
        ("", "unknown"),
    ],
)
def test_network_prefix(address: str, network: str) -> None:
    assert network_prefix(address) == network
