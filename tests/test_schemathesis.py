"""schemathesis drives every operation of docs/openapi.yaml against both apps.

Each operation gets examples from the spec, then generated requests that
the spec allows (positive) and that it forbids (negative). Every response
must have a documented status, media type, headers and body, and a request
the spec allows must not be rejected.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from schemathesis import GenerationMode
from schemathesis.config._checks import (
    NegativeDataRejectionConfig,
    PositiveDataAcceptanceConfig,
)
from schemathesis.core.failures import FailureGroup

from shared.contract import load_spec
from tests.harness import REPO, RunningStack, running_stack

SCHEMA = schemathesis.openapi.from_path(REPO / "docs" / "openapi.yaml")
# Two modes times this many examples for each of the ~30 operations keeps
# the run near a minute on two cores.
# Unknown query parameters are ignored, as HTTP servers commonly do, so
# adding them is no negative case. Generation is deterministic, so that a
# change fails CI for what it changed; set SEGMENTGATE_FUZZ_RANDOM=1 to
# explore new inputs on every run.
SCHEMA.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
    max_examples=25,
    allow_extra_parameters=False,
    deterministic=os.environ.get("SEGMENTGATE_FUZZ_RANDOM") != "1",
)
# Valid requests may still meet state: an id that does not exist (404),
# content withdrawn by an earlier case (410), an Idempotency-Key that an
# earlier case used with another body (422), a purchase in the wrong state
# (409).
SCHEMA.config.checks.positive_data_acceptance = PositiveDataAcceptanceConfig(
    expected_statuses=["2xx", "401", "403", "404", "409", "410", "422"]
)
# The edge checks the content's policy before the request's other fields,
# so an invalid request for withdrawn content gets 410.
SCHEMA.config.checks.negative_data_rejection = NegativeDataRejectionConfig(
    expected_statuses=[
        *("400", "401", "402", "403", "404", "405"),
        *("410", "413", "415", "416", "422"),
    ]
)


@pytest.fixture(scope="module")
def fuzzed_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(
        tmp_path_factory.mktemp("fuzz"),
        edge_options={"metrics_token": EDGE_METRICS_TOKEN},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def viewer_token(fuzzed_stack: RunningStack) -> str:
    response = httpx.post(f"{fuzzed_stack.stack.origin_url}/v1/viewers")
    return str(response.json()["viewer_token"])


EDGE_METRICS_TOKEN = "test-edge-metrics-token"


def _credentials(case: Any, stack: Any, viewer_token: str) -> dict[str, str]:
    """Return the Authorization header that the operation's security requires."""
    security = case.operation.definition.raw.get("security", [])
    schemes = {name for requirement in security for name in requirement}
    tokens = {
        "admin": stack.admin_token,
        "viewer": viewer_token,
        "edgeToken": stack.edge_token,
        "edgeMetrics": EDGE_METRICS_TOKEN,
    }
    for scheme, token in tokens.items():
        if scheme in schemes:
            return {"Authorization": f"Bearer {token}"}
    return {}


def _excluded_checks(case: Any) -> list[Any]:
    path = case.operation.path
    if path == "/v1/events":
        # NOTE: schemathesis 4.32 parses application/jwt bodies as JSON, but
        # a compact JWT is not JSON. test_contract_responses.py checks the
        # batch's claims against docs/schemas/event-batch.json instead.
        return [schemathesis.checks.response_schema_conformance]
    if path == "/v1/webhooks/{provider}":
        # A generated delivery cannot carry a valid signature, so a request
        # the spec allows is still rejected as unauthentic.
        return [schemathesis.checks.positive_data_acceptance]
    if path == "/v1/admin/outbox/resend":
        # The range must be ordered and hold at most 100 000 events, rules
        # across two fields that JSON Schema cannot state.
        return [schemathesis.checks.positive_data_acceptance]
    return []


@SCHEMA.parametrize()
def test_operation_conforms(
    case: Any, fuzzed_stack: RunningStack, viewer_token: str
) -> None:
    stack = fuzzed_stack.stack
    on_edge = bool(case.operation.definition.raw.get("servers"))
    case.call_and_validate(
        base_url=stack.edge_url if on_edge else stack.origin_url,
        headers=_credentials(case, stack, viewer_token),
        excluded_checks=_excluded_checks(case),
    )


def test_drift_from_spec_fails(fuzzed_stack: RunningStack) -> None:
    # The spec promises a field that the origin does not send.
    spec = copy.deepcopy(load_spec())
    item = spec["components"]["schemas"]["CatalogItem"]
    item["required"] = [*item["required"], "rating"]
    operation = schemathesis.openapi.from_dict(spec)["/v1/catalog"]["GET"]
    with pytest.raises(FailureGroup, match="rating"):
        operation.Case().call_and_validate(base_url=fuzzed_stack.stack.origin_url)


def test_undocumented_status_fails(fuzzed_stack: RunningStack) -> None:
    # The origin returns 404 for unknown content, which this spec omits.
    spec = copy.deepcopy(load_spec())
    del spec["paths"]["/v1/catalog/{content_id}"]["get"]["responses"]["404"]
    operation = schemathesis.openapi.from_dict(spec)["/v1/catalog/{content_id}"]
    case = operation["GET"].Case(path_parameters={"content_id": "nothing"})
    with pytest.raises(FailureGroup, match="Undocumented status code"):
        case.call_and_validate(base_url=fuzzed_stack.stack.origin_url)
