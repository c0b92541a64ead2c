"""Simulate good and abusive buyers against the risk engine and score it.

    python -m benchmarks.fraud [--good-viewers 1500] [--premiere-buyers 800]
        [--campaigns 3] [--seed 7] [--database-url URL]

What is driven: the risk engine alone (``origin.risk.RiskEngine``) on its
real store, SQLite in a temporary file unless ``--database-url`` names
another, such as ``postgresql+asyncpg://postgres@127.0.0.1:5432/NAME``. The
HTTP handler, the payment provider and the saga are left out, so that days
of simulated traffic run in minutes. Each attempt is assessed at its
simulated time. An allowed one is written to the purchases table as
``granted``, or as ``declined`` when the synthetic card is invalid, which is
how the saga would end it. A challenged purchase is written as
``declined`` with 3-D Secure requested, which is where the saga ends it
today. Abusers are assumed to fail the authentication, and good buyers to
pass it.

Rates, as fractions from 0 to 1:

* ``good_approved_without_challenge``: good attempts that were allowed;
* ``abuse_stopped``: abusive attempts that were challenged or blocked;
* ``challenge_rate``: attempts of either kind that were challenged;

each also within the premiere spike (``spike_*``), and abuse per kind. The
buyers are described in :mod:`benchmarks.fraud_population`. The last line
of output is one JSON object with these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks.fraud_population import ABUSE_KINDS, AttemptPlan, build
from origin.risk import ALLOW, BLOCK, CHALLENGE, Attempt, RiskEngine, RiskPolicy
from origin.risk_signals import RequestContext
from origin.store import create_engine, create_tables, purchases, viewers

CONTEXT = RequestContext(b"fraud simulation key")


class SimulatedClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Simulation:
    """Assess every planned attempt in time order and keep the decisions."""

    def __init__(self, engine: AsyncEngine, policy: RiskPolicy) -> None:
        self.engine = engine
        self.clock = SimulatedClock()
        self.risk = RiskEngine(engine, policy, clock=self.clock)
        self.decisions: list[tuple[AttemptPlan, str]] = []
        # Reasons that challenged or blocked good buyers, by code.
        self.false_alarms: Counter[str] = Counter()
        self.surges = 0
        self._viewers: set[str] = set()

    async def run(self, plans: Iterable[AttemptPlan]) -> None:
        for number, plan in enumerate(plans):
            self.clock.now = plan.at
            assessment = await self.risk.assess(_attempt(plan, number))
            self.decisions.append((plan, assessment.decision))
            if not plan.abusive:
                self.false_alarms.update(reason.code for reason in assessment.reasons)
            self.surges += bool(plan.in_spike and assessment.signals["surge"])
            if assessment.decision != BLOCK:
                purchase_id = f"pur_sim_{number}"
                await self._settle(plan, purchase_id, assessment.decision, number)
                await self.risk.attach_purchase(assessment.assessment_id, purchase_id)

    async def _settle(
        self, plan: AttemptPlan, purchase_id: str, decision: str, number: int
    ) -> None:
        challenged = decision == CHALLENGE
        granted = plan.card.valid and not challenged
        async with self.engine.begin() as connection:
            if plan.viewer_id not in self._viewers:
                self._viewers.add(plan.viewer_id)
                await connection.execute(
                    viewers.insert().values(
                        viewer_id=plan.viewer_id,
                        viewer_ref=plan.viewer_id,
                        token_hash=plan.viewer_id,
                        created_at=plan.at,
                    )
                )
            await connection.execute(
                purchases.insert().values(
                    purchase_id=purchase_id,
                    viewer_id=plan.viewer_id,
                    # One content item per attempt: a viewer may buy many.
                    content_id=f"item-{number}",
                    amount="4.99",
                    currency="EUR",
                    payment_method="pm_simulated",
                    provider="simulation",
                    status="granted" if granted else "declined",
                    request_three_d_secure=challenged,
                    created_at=plan.at,
                    updated_at=plan.at,
                )
            )


def _attempt(plan: AttemptPlan, number: int) -> Attempt:
    return Attempt(
        viewer_id=plan.viewer_id,
        content_id=f"item-{number}",
        device_key=CONTEXT.keyed_hash("device", f"{plan.profile}\x00{plan.network}"),
        network_key=CONTEXT.keyed_hash("network", plan.network),
        card_key=CONTEXT.keyed_hash("card", plan.card.fingerprint),
        card_country=plan.card.country,
        request_country=plan.request_country,
    )


def score(decisions: list[tuple[AttemptPlan, str]], surges: int) -> dict[str, Any]:
    """Compute the rates of the report from the decisions."""
    spike = [(plan, decision) for plan, decision in decisions if plan.in_spike]
    report: dict[str, Any] = {
        "driven": "risk engine and its store; provider and saga simulated",
        "attempts": len(decisions),
        **_rates(decisions),
        **{f"spike_{name}": value for name, value in _rates(spike).items()},
        "spike_attempts": len(spike),
        "spike_surge_detected": _fraction(surges, len(spike)),
    }
    for kind in ABUSE_KINDS:
        mine = [decision for plan, decision in decisions if plan.kind == kind]
        stopped = sum(decision != ALLOW for decision in mine)
        report[f"stopped_{kind}"] = _fraction(stopped, len(mine))
    return report


def _rates(decisions: list[tuple[AttemptPlan, str]]) -> dict[str, float | None]:
    good = Counter(decision for plan, decision in decisions if not plan.abusive)
    bad = Counter(decision for plan, decision in decisions if plan.abusive)
    every = good + bad
    return {
        "good_approved_without_challenge": _fraction(good[ALLOW], good.total()),
        "abuse_stopped": _fraction(bad.total() - bad[ALLOW], bad.total()),
        "abuse_blocked": _fraction(bad[BLOCK], bad.total()),
        "challenge_rate": _fraction(every[CHALLENGE], every.total()),
    }


def _fraction(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


async def simulate(
    database_url: str, plans: list[AttemptPlan], policy: RiskPolicy | None = None
) -> dict[str, Any]:
    """Run the simulation on a fresh store at ``database_url``; return the report."""
    engine = create_engine(database_url)
    try:
        await create_tables(engine)
        simulation = Simulation(engine, policy or RiskPolicy())
        await simulation.run(plans)
    finally:
        await engine.dispose()
    report = score(simulation.decisions, simulation.surges)
    report["good_buyer_reasons"] = dict(simulation.false_alarms.most_common())
    return report


async def main(args: argparse.Namespace) -> dict[str, Any]:
    plans = build(args.seed, args.good_viewers, args.premiere_buyers, args.campaigns)
    if args.database_url:
        return await simulate(args.database_url, plans)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fraud.db"
        return await simulate(f"sqlite+aiosqlite:///{path}", plans)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fraud")
    parser.add_argument(
        "--good-viewers", type=int, default=1500, help="good viewers over two days"
    )
    parser.add_argument(
        "--premiere-buyers", type=int, default=800, help="good buyers at the premiere"
    )
    parser.add_argument(
        "--campaigns",
        type=int,
        default=3,
        help="campaigns of each kind of abuse before the premiere; one more runs "
        "during it",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    parser.add_argument(
        "--database-url",
        help="an empty store to run on (default: SQLite in a temporary directory)",
    )
    return parser


if __name__ == "__main__":
    arguments = _parser().parse_args()
    print(
        "driving the risk engine alone on its store; the provider and the saga "
        "are simulated",
        file=sys.stderr,
    )
    report = asyncio.run(main(arguments))
    for name, value in report.items():
        print(f"{name}: {value}", file=sys.stderr)
    print(json.dumps(report), flush=True)
