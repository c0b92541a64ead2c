"""`python -m benchmarks --quick` runs every part and prints its JSON line.

Quick mode shrinks each part to a second or so of load: this proves the
scripts run against the real servers, not how fast anything is, so nothing
here asserts a time or a rate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.__main__ import PARTS
from tests.harness import REPO


def test_quick_run_covers_every_part(tmp_path: Path) -> None:
    plots = tmp_path / "plots"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--plots", str(plots)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    skipped = figures["skipped"]
    for name in PARTS:
        assert (name in figures) != (name in skipped), name
    # Only the throughput part needs tools outside Python (nginx, wrk).
    assert set(skipped) <= {"throughput"}
    assert figures["quick"] is True

    surge = figures["surge"]["by_rate"]["5"]
    assert surge["granted"] == surge["buyers"]
    assert surge["errors"] == {}
    assert surge["unlock_ms_p99"] is not None
    assert (plots / "surge.png").stat().st_size > 0
    assert figures["request_cost"]["segment_edge_vs_plain"] > 0
    assert figures["purchases"]["sqlite"]["granted"] > 0
    assert figures["hot_path"]["verify_uri_token_us"] > 0

    if "throughput" in figures:
        throughput = figures["throughput"]
        errors = {key: value for key, value in throughput.items() if "errors" in key}
        assert errors == {}
        assert "gate_overhead.segment.hypercorn" in throughput["ratios"]
        assert "auth_request_vs_nginx_secure_link" in throughput["ratios"]
        assert (plots / "throughput.png").stat().st_size > 0
    else:
        assert "run `make bench`" in skipped["throughput"]
