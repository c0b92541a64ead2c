"""The risk engine: allow, challenge or block a purchase before it is charged.

Every purchase request is scored from data that reaches the origin anyway,
and no personal data is kept: the viewer, the provider's card fingerprint and the card's
country, a device fingerprint and the client's network (both keyed hashes
of request headers, see :mod:`origin.risk_signals`) and the request's
country. Each assessment is a row of ``risk_assessments``, and those rows
are the windows that the signals count, so every origin replica on the same
store counts the same purchases.

Signals, each with a challenge and a block limit in :class:`RiskPolicy`:

* purchases per viewer, per card and per device within ``velocity_seconds``;
* distinct cards per viewer and per device, and distinct viewers per card
  and per device, within ``sharing_seconds``, and with lower limits
  (``*_viewers_recent``) within ``velocity_seconds``, where a burst of new
  viewers on one card or device stands out from a family that shares it;
* other viewers of the card on other networks (``card_viewers_elsewhere``),
  since a family shares a card at home while a sold or stolen card travels;
* declines in a row per viewer, card and device (purchases that the issuer
  declined, after which no purchase succeeded);
* the card's issuing country against the request's country.

A crowd on one network, such as a premiere watched on a campus, is no signal
by itself: the device signals count only when the device holds at least
``crowd_device_share`` of the viewers seen on its network, so a device farm
on its own network is caught while one popular phone model among many
devices on a campus is not. A farm that spreads its viewers evenly over
two or more device profiles on one network passes the device signals, and
is left to the viewer and card signals. A surge of purchases across all viewers is
detected and recorded, never a reason, so the per-viewer, per-card and
per-device signals stay decisive during a premiere.

NOTE: two replicas that assess at the same instant on PostgreSQL may each
miss the other's uncommitted row, so a burst can pass a limit by the number
of concurrent requests.

NOTE: assessments are never deleted, and the surge check counts a day of
rows (at most once a second per process); a busy store needs a retention
job.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from origin.risk_windows import count_signals, count_surge
from origin.store import risk_assessments

logger = logging.getLogger("segmentgate.origin.risk")

ALLOW = "allow"
CHALLENGE = "challenge"
BLOCK = "block"
DECISIONS = (ALLOW, CHALLENGE, BLOCK)
_RANK = {decision: rank for rank, decision in enumerate(DECISIONS)}

# enforce acts on decisions; observe records them and allows every purchase;
# off skips the engine.
MODES = ("enforce", "observe", "off")


@dataclass(frozen=True)
class Limit:
    """Counts at which a signal challenges and blocks; 0 turns a level off."""

    challenge: int
    block: int

    def __post_init__(self) -> None:
        if self.challenge < 0 or self.block < 0:
            raise ValueError(f"limits must not be negative, not {self}")
        if self.challenge and self.block and self.block < self.challenge:
            raise ValueError(
                f"the block limit must not be below the challenge one: {self}"
            )

    def decide(self, observed: int) -> str:
        if self.block and observed >= self.block:
            return BLOCK
        if self.challenge and observed >= self.challenge:
            return CHALLENGE
        return ALLOW

    def threshold(self, decision: str) -> int:
        return self.block if decision == BLOCK else self.challenge


@dataclass(frozen=True)
class RiskPolicy:
    """Thresholds of the risk engine; windows in seconds.

    Each field can be set from ``SEGMENTGATE_RISK_<FIELD>``; a :class:`Limit`
    takes ``challenge,block``, for example ``SEGMENTGATE_RISK_CARD_VIEWERS=3,5``.
    """

    mode: str = "enforce"
    velocity_seconds: float = 3600.0
    sharing_seconds: float = 86400.0
    viewer_purchases: Limit = Limit(6, 12)
    card_purchases: Limit = Limit(6, 12)
    device_purchases: Limit = Limit(8, 16)
    viewer_cards: Limit = Limit(3, 5)
    device_cards: Limit = Limit(4, 6)
    card_viewers: Limit = Limit(3, 5)
    device_viewers: Limit = Limit(4, 6)
    card_viewers_recent: Limit = Limit(2, 4)
    card_viewers_elsewhere: Limit = Limit(1, 3)
    device_viewers_recent: Limit = Limit(2, 4)
    declines: Limit = Limit(2, 3)
    # The decision when the card's country differs from the request's.
    country_mismatch: str = CHALLENGE
    # This many challenging signals together block; 0 never escalates.
    challenges_to_block: int = 2
    crowd_device_share: float = 0.6
    # A surge: at least surge_factor times the usual rate of purchases, and
    # at least surge_min_purchases, within surge_seconds.
    surge_seconds: float = 300.0
    surge_factor: float = 5.0
    surge_min_purchases: int = 50

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"risk mode must be one of {', '.join(MODES)}")
        if self.country_mismatch not in DECISIONS:
            raise ValueError(
                f"country_mismatch must be one of {', '.join(DECISIONS)}, "
                f"not {self.country_mismatch!r}"
            )
        if not 0 < self.velocity_seconds <= self.sharing_seconds:
            raise ValueError(
                "velocity_seconds must be positive and within sharing_seconds"
            )
        if self.sharing_seconds <= self.surge_seconds:
            raise ValueError("sharing_seconds must exceed surge_seconds")
        if not 0 <= self.crowd_device_share <= 1:
            raise ValueError("crowd_device_share must be a fraction from 0 to 1")

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> RiskPolicy:
        """Build the policy from ``SEGMENTGATE_RISK_*`` variables."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            name = "SEGMENTGATE_RISK_" + item.name.upper()
            text = env.get(name)
            if text is not None:
                values[item.name] = _parse(name, text, getattr(cls, item.name))
        return cls(**values)


def _parse(name: str, text: str, default: object) -> object:
    if isinstance(default, Limit):
        try:
            challenge, block = (int(part) for part in text.split(","))
        except ValueError:
            raise ValueError(f"{name} must be challenge,block, not {text!r}") from None
        return Limit(challenge, block)
    if not isinstance(default, int | float):
        return text
    try:
        return type(default)(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None


@dataclass(frozen=True)
class Attempt:
    """One purchase request as the engine receives it: ids and keyed hashes only."""

    viewer_id: str
    content_id: str
    device_key: str
    network_key: str
    card_key: str | None = None
    card_country: str | None = None
    request_country: str | None = None


@dataclass(frozen=True)
class Reason:
    """A signal that reached a limit: its code, what was seen and the limit."""

    code: str
    decision: str
    observed: int | str
    limit: int | str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Assessment:
    assessment_id: str
    decision: str
    enforced: bool
    reasons: tuple[Reason, ...] = ()
    signals: dict[str, Any] = field(default_factory=dict)

    @property
    def blocks(self) -> bool:
        """Whether the purchase must not be charged."""
        return self.enforced and self.decision == BLOCK

    @property
    def challenges(self) -> bool:
        """Whether the provider must ask the card holder to authenticate."""
        return self.enforced and self.decision == CHALLENGE


# Built once; the SET clause of the update comes from each call's values.
_INSERT = risk_assessments.insert()
_UPDATE = risk_assessments.update().where(
    risk_assessments.c.assessment_id == bindparam("match_id")
)
# How long a count of the store-wide surge signal is reused.
_SURGE_RECOUNT_SECONDS = 1.0


class RiskEngine:
    """Assess purchase attempts against the windows kept in the store."""

    def __init__(
        self,
        engine: AsyncEngine,
        policy: RiskPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self.policy = policy or RiskPolicy()
        self._clock = clock
        # When the store-wide surge was last counted, and its value.
        self._surge_counted = (float("-inf"), False)

    @property
    def enabled(self) -> bool:
        return self.policy.mode != "off"

    async def assess(self, attempt: Attempt) -> Assessment:
        """Score ``attempt``, record the assessment and return it."""
        now = self._clock()
        assessment_id = "risk_" + uuid.uuid4().hex
        enforced = self.policy.mode == "enforce"
        async with self._engine.begin() as connection:
            # The attempt is recorded first, so that the counts include it.
            await connection.execute(
                _INSERT,
                {
                    "assessment_id": assessment_id,
                    "at": now,
                    "viewer_id": attempt.viewer_id,
                    "content_id": attempt.content_id,
                    "card_key": attempt.card_key,
                    "card_country": attempt.card_country,
                    "request_country": attempt.request_country,
                    "device_key": attempt.device_key,
                    "network_key": attempt.network_key,
                    "decision": ALLOW,
                    "enforced": enforced,
                    "reasons": [],
                    "signals": {},
                },
            )
            signals = await count_signals(
                connection,
                attempt,
                self.policy,
                now,
                surge=await self._surge(connection, now),
            )
            decision, reasons = judge(attempt, signals, self.policy)
            await connection.execute(
                _UPDATE,
                {
                    "match_id": assessment_id,
                    "decision": decision,
                    "reasons": [reason.to_dict() for reason in reasons],
                    "signals": signals,
                },
            )
        if decision != ALLOW:
            logger.info(
                "risk %s for viewer %s (%s): %s",
                decision,
                attempt.viewer_id,
                assessment_id,
                ", ".join(reason.code for reason in reasons),
            )
        return Assessment(assessment_id, decision, enforced, tuple(reasons), signals)

    async def _surge(self, connection: AsyncConnection, now: float) -> bool:
        # The surge is store-wide and counts a day of rows: one count a
        # second is enough, not one per purchase.
        counted_at, surge = self._surge_counted
        if not counted_at <= now < counted_at + _SURGE_RECOUNT_SECONDS:
            surge = await count_surge(connection, self.policy, now)
            self._surge_counted = (now, surge)
        return surge

    async def attach_purchase(self, assessment_id: str, purchase_id: str) -> None:
        """Link an assessment to the purchase that it let through."""
        async with self._engine.begin() as connection:
            await link_assessment(connection, assessment_id, purchase_id)


async def link_assessment(
    connection: AsyncConnection, assessment_id: str, purchase_id: str
) -> None:
    """Link an assessment to the purchase that it let through."""
    await connection.execute(
        _UPDATE, {"match_id": assessment_id, "purchase_id": purchase_id}
    )


def judge(
    attempt: Attempt, signals: dict[str, Any], policy: RiskPolicy
) -> tuple[str, list[Reason]]:
    """Turn counted signals into a decision and the reasons for it."""
    reasons = []
    for code, limit in _limits(signals, policy):
        observed = signals[code]
        level = limit.decide(observed)
        if level != ALLOW:
            reasons.append(Reason(code, level, observed, limit.threshold(level)))
    mismatch = _country_mismatch(attempt)
    if mismatch and policy.country_mismatch != ALLOW:
        reasons.append(Reason("country_mismatch", policy.country_mismatch, mismatch))
    decision = max(
        (reason.decision for reason in reasons), key=_RANK.__getitem__, default=ALLOW
    )
    challenging = [reason for reason in reasons if reason.decision == CHALLENGE]
    escalate = policy.challenges_to_block
    if decision == CHALLENGE and escalate and len(challenging) >= escalate:
        reasons.append(Reason("several_signals", BLOCK, len(challenging), escalate))
        decision = BLOCK
    return decision, reasons


def _limits(signals: dict[str, Any], policy: RiskPolicy) -> list[tuple[str, Limit]]:
    limits = [
        ("viewer_purchases", policy.viewer_purchases),
        ("viewer_cards", policy.viewer_cards),
        ("declines_in_a_row", policy.declines),
    ]
    if "card_purchases" in signals:
        limits += [
            ("card_purchases", policy.card_purchases),
            ("card_viewers", policy.card_viewers),
            ("card_viewers_recent", policy.card_viewers_recent),
            ("card_viewers_elsewhere", policy.card_viewers_elsewhere),
        ]
    if not signals["crowd"]:
        limits += [
            ("device_purchases", policy.device_purchases),
            ("device_viewers", policy.device_viewers),
            ("device_viewers_recent", policy.device_viewers_recent),
            ("device_cards", policy.device_cards),
        ]
    return limits


def _country_mismatch(attempt: Attempt) -> str | None:
    card, request = attempt.card_country, attempt.request_country
    if card is None or request is None or card == request:
        return None
    return f"{card}/{request}"
