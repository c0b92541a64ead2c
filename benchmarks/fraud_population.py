"""Synthetic buyers for the fraud simulation: good ones and five kinds of abuse.

Every buyer is a list of purchase attempts with a time, a viewer, a card, a
device profile, a network and a country. Good buyers live on home networks
or behind a few carrier NATs, and pick their browser from a skewed list of
popular profiles. Some share a card within a family, some travel, some
binge a series, and some have a card declined and pay with another. A premiere brings a
burst of good buyers within minutes, half of them from a few venue networks.

Abusers:

* ``card_testing``: one viewer tries many stolen card numbers, most declined;
* ``stolen_card_burst``: one valid stolen card, used by new viewers on
  different networks and devices within half an hour;
* ``shared_card``: one card sold with several accounts, used over a day;
* ``device_farm``: many new viewers on one device profile and network, each
  with a different valid card, within an hour;
* ``country_mismatch``: stolen foreign cards, each used once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

HOUR = 3600.0
DAY = 24 * HOUR
START = 1_800_000_000.0
# The premiere starts on the third day, at 20:00 of simulated time.
PREMIERE = START + 2 * DAY + 20 * HOUR
PREMIERE_SECONDS = 15 * 60
# Abuse counted as "during the spike" happens within this hour.
SPIKE_END = PREMIERE + HOUR
COUNTRIES = ("US", "DE", "GB", "FR", "BR", "JP")
COUNTRY_WEIGHTS = (40, 20, 15, 12, 8, 5)
# Browser profiles by popularity: a Zipf-like skew, the first one in about a
# quarter of the hands.
PROFILES = tuple(f"profile-{index}" for index in range(40))
PROFILE_WEIGHTS = tuple(1 / (rank + 1) ** 1.1 for rank in range(40))
ABUSE_KINDS = (
    "card_testing",
    "stolen_card_burst",
    "shared_card",
    "device_farm",
    "country_mismatch",
)


@dataclass(frozen=True)
class Card:
    fingerprint: str
    country: str
    # A valid card is authorized; any other is declined by the issuer.
    valid: bool = True


@dataclass(frozen=True)
class AttemptPlan:
    """One purchase attempt of the simulation."""

    at: float
    kind: str
    viewer_id: str
    card: Card
    profile: str
    network: str
    request_country: str

    @property
    def abusive(self) -> bool:
        return self.kind != "good"

    @property
    def in_spike(self) -> bool:
        return PREMIERE <= self.at < SPIKE_END


class Population:
    """Draw buyers and their attempts from one seeded random generator."""

    def __init__(self, seed: int) -> None:
        # A seeded generator, so that a run can be repeated; nothing secret.
        self.random = random.Random(seed)  # noqa: S311
        self.attempts: list[AttemptPlan] = []
        self._serial = 0

    def new_id(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}-{self._serial}"

    def card(self, country: str | None = None, valid: bool = True) -> Card:
        country = country or self.country()
        return Card(self.new_id("card"), country, valid)

    def country(self) -> str:
        return self.random.choices(COUNTRIES, COUNTRY_WEIGHTS)[0]

    def profile(self) -> str:
        return self.random.choices(PROFILES, PROFILE_WEIGHTS)[0]

    def add(self, at: float, kind: str, viewer: str, card: Card, **where: str) -> None:
        self.attempts.append(
            AttemptPlan(
                at=at,
                kind=kind,
                viewer_id=viewer,
                card=card,
                profile=where.get("profile") or self.profile(),
                network=where.get("network") or self.new_id("proxy"),
                request_country=where.get("country") or card.country,
            )
        )


def good_buyers(population: Population, viewers: int) -> None:
    """Add good viewers buying over the first two days."""
    rng = population.random
    carriers = [population.new_id("carrier") for _ in range(15)]
    for _ in range(viewers):
        viewer = population.new_id("viewer")
        country = population.country()
        card = population.card(country)
        home = rng.choice(carriers) if rng.random() < 0.3 else population.new_id("home")
        where = {"profile": population.profile(), "network": home, "country": country}
        times = _purchase_times(rng)
        if rng.random() < 0.01:
            # A traveller: the request comes from another country.
            where["country"] = next(c for c in COUNTRIES if c != country)
        if rng.random() < 0.03:
            # The first card is declined; the viewer pays with another.
            population.add(
                times[0], "good", viewer, population.card(country, False), **where
            )
            times[0] += 120.0
        for at in times:
            population.add(at, "good", viewer, card, **where)
        if rng.random() < 0.05:
            # A family member with an account of their own, paying with the
            # same card from the same home, a few hours later.
            relative = population.new_id("viewer")
            at = times[-1] + rng.uniform(2 * HOUR, 6 * HOUR)
            where["profile"] = population.profile()
            population.add(at, "good", relative, card, **where)


def _purchase_times(rng: random.Random) -> list[float]:
    first = START + rng.uniform(0, 2 * DAY - 2 * HOUR)
    if rng.random() < 0.1:
        # A binge: four episodes within an hour.
        return [first + step * rng.uniform(600, 900) for step in range(4)]
    count = rng.choice((1, 1, 2, 3))
    return sorted([first, *(first + rng.uniform(HOUR, DAY) for _ in range(count - 1))])


def premiere(population: Population, buyers: int) -> None:
    """Add the premiere: good buyers within minutes, half from a few venues."""
    rng = population.random
    venues = [population.new_id("venue") for _ in range(4)]
    for _ in range(buyers):
        viewer = population.new_id("viewer")
        country = population.country()
        network = (
            rng.choice(venues) if rng.random() < 0.5 else population.new_id("home")
        )
        at = PREMIERE + rng.uniform(0, PREMIERE_SECONDS)
        where = {"network": network, "country": country}
        population.add(at, "good", viewer, population.card(country), **where)


def card_testing(population: Population, start: float, cards: int = 25) -> None:
    rng = population.random
    viewer = population.new_id("viewer")
    where = {"profile": population.profile(), "network": population.new_id("dc")}
    at = start
    for _ in range(cards):
        card = population.card(valid=rng.random() < 0.15)
        population.add(at, "card_testing", viewer, card, country=card.country, **where)
        at += rng.uniform(30, 120)


def stolen_card_burst(population: Population, start: float, viewers: int = 8) -> None:
    card = population.card()
    for _ in range(viewers):
        at = start + population.random.uniform(0, 1800)
        population.add(at, "stolen_card_burst", population.new_id("viewer"), card)


def shared_card(population: Population, start: float, viewers: int = 6) -> None:
    card = population.card()
    for index in range(viewers):
        at = start + index * population.random.uniform(2 * HOUR, 4 * HOUR)
        population.add(at, "shared_card", population.new_id("viewer"), card)


def device_farm(population: Population, start: float, viewers: int = 12) -> None:
    where = {"profile": population.profile(), "network": population.new_id("farm")}
    for _ in range(viewers):
        at = start + population.random.uniform(0, HOUR)
        card = population.card()
        viewer = population.new_id("viewer")
        population.add(at, "device_farm", viewer, card, country=card.country, **where)


def country_mismatch(population: Population, start: float, cards: int = 10) -> None:
    for _ in range(cards):
        card = population.card()
        country = next(c for c in COUNTRIES if c != card.country)
        at = start + population.random.uniform(0, HOUR)
        viewer = population.new_id("viewer")
        population.add(at, "country_mismatch", viewer, card, country=country)


def abuse(population: Population, start: float) -> None:
    """Add one campaign of each kind of abuse, starting at ``start``."""
    card_testing(population, start)
    stolen_card_burst(population, start)
    shared_card(population, start)
    device_farm(population, start)
    country_mismatch(population, start)


def build(
    seed: int, good_viewers: int, premiere_buyers: int, campaigns: int
) -> list[AttemptPlan]:
    """Return every attempt of the simulation, in time order.

    ``campaigns`` sets of abuse run over the first two days, and one more
    starts with the premiere.
    """
    population = Population(seed)
    good_buyers(population, good_viewers)
    premiere(population, premiere_buyers)
    for _ in range(campaigns):
        abuse(population, START + population.random.uniform(0, 2 * DAY - 6 * HOUR))
    abuse(population, PREMIERE)
    return sorted(population.attempts, key=lambda attempt: attempt.at)
