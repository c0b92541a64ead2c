"""A small run of the fraud simulation must meet the targets of the full one.

Targets, as fractions: at least 0.98 of good buyers' attempts allowed without
a challenge, and at least 0.90 of abusive attempts challenged or blocked,
over the whole run and within the premiere spike. The simulation drives the
risk engine on a SQLite store; see ``benchmarks/fraud.py``.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.fraud import simulate
from benchmarks.fraud_population import ABUSE_KINDS, build


async def test_small_simulation_meets_the_targets(tmp_path: Path) -> None:
    plans = build(seed=11, good_viewers=200, premiere_buyers=150, campaigns=1)

    report = await simulate(f"sqlite+aiosqlite:///{tmp_path / 'fraud.db'}", plans)

    assert report["good_approved_without_challenge"] >= 0.98, report
    assert report["abuse_stopped"] >= 0.90, report
    assert report["spike_good_approved_without_challenge"] >= 0.98, report
    assert report["spike_abuse_stopped"] >= 0.90, report
    assert report["challenge_rate"] <= 0.10, report
    # Every kind of abuse is present and mostly stopped.
    for kind in ABUSE_KINDS:
        assert report[f"stopped_{kind}"] >= 0.75, (kind, report)
