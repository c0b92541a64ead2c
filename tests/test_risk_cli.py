"""``segmentgate risk`` against the session's running origin."""

from __future__ import annotations

import json

import pytest

from segmentgate import risk_cli
from segmentgate.cli import _parser as cli_parser
from tests.harness import PROBLEM_PREFIX, RunningStack, Viewer


def run_risk(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    status = risk_cli.run(cli_parser().parse_args(["risk", *argv]))
    return status, json.loads(capsys.readouterr().out)


def test_risk_commands_show_a_purchase(
    stack: RunningStack,
    viewer: Viewer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    purchase = viewer.purchase()
    monkeypatch.setenv("SEGMENTGATE_ORIGIN_URL", stack.stack.origin_url)
    monkeypatch.setenv("SEGMENTGATE_ADMIN_TOKEN", "test-admin-token")

    status, listed = run_risk(
        capsys, "list", "--purchase", str(purchase["purchase_id"])
    )
    assert status == 0
    assert isinstance(listed, dict)
    [assessment] = listed["assessments"]
    assert assessment["viewer_id"] == viewer.viewer_id
    assert assessment["content_id"] == "sample"
    assert assessment["card_country"] == "US"
    # The test stack runs the engine in observe mode: recorded, not enforced.
    assert assessment["enforced"] is False

    status, shown = run_risk(capsys, "show", assessment["assessment_id"])
    assert status == 0
    assert shown == assessment

    status, policy = run_risk(capsys, "policy")
    assert status == 0
    assert isinstance(policy, dict)
    assert policy["mode"] == "observe"

    status, missing = run_risk(capsys, "show", "risk_missing")
    assert status == 1
    assert isinstance(missing, dict)
    assert missing["type"] == PROBLEM_PREFIX + "not-found"


def test_risk_list_rejects_a_bad_limit(
    stack: RunningStack,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SEGMENTGATE_ORIGIN_URL", stack.stack.origin_url)
    monkeypatch.setenv("SEGMENTGATE_ADMIN_TOKEN", "test-admin-token")

    status, problem = run_risk(capsys, "list", "--limit", "501")

    assert status == 1
    assert isinstance(problem, dict)
    assert problem["type"] == PROBLEM_PREFIX + "invalid-request"
