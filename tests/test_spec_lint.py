"""docs/openapi.yaml passes the spec lint, and each kind of mistake fails it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from segmentgate.speclint import lint
from shared.contract import load_spec

Spec = dict[str, Any]


def test_spec_passes_lint() -> None:
    assert lint(load_spec()) == []


def _drop_description(spec: Spec) -> None:
    del spec["paths"]["/v1/catalog"]["get"]["responses"]["200"]["description"]


def _drop_operation_id(spec: Spec) -> None:
    del spec["paths"]["/healthz"]["get"]["operationId"]


def _reuse_operation_id(spec: Spec) -> None:
    spec["paths"]["/healthz"]["get"]["operationId"] = "listCatalog"


def _drop_example(spec: Spec) -> None:
    media = spec["paths"]["/v1/catalog"]["get"]["responses"]["200"]["content"]
    del media["application/json"]["example"]


def _break_example(spec: Spec) -> None:
    spec["components"]["examples"]["SampleItem"]["value"]["policy"]["kind"] = "rent"


def _plain_error(spec: Spec) -> None:
    spec["paths"]["/healthz"]["get"]["responses"]["500"] = {
        "description": "Broken",
        "content": {"application/json": {"schema": {"type": "object"}}},
    }


def _forget_problem_type(spec: Spec) -> None:
    spec["components"]["schemas"]["ProblemType"]["enum"].remove(
        "urn:segmentgate:problem:preview-ended"
    )


def _unknown_scope(spec: Spec) -> None:
    spec["paths"]["/v1/admin/keys"]["get"]["security"] = [{"admin": ["everything"]}]


def _undefined_scheme(spec: Spec) -> None:
    spec["paths"]["/v1/catalog"]["get"]["security"] = [{"apiKey": []}]


def _deprecated_without_sunset(spec: Spec) -> None:
    spec["paths"]["/v1/catalog"]["get"]["deprecated"] = True


def _no_success(spec: Spec) -> None:
    del spec["paths"]["/healthz"]["get"]["responses"]["200"]
    spec["paths"]["/healthz"]["get"]["responses"]["503"] = {
        "$ref": "#/components/responses/Problem"
    }


BROKEN: dict[str, tuple[Callable[[Spec], None], str]] = {
    "invalid OpenAPI": (_drop_description, "not a valid OpenAPI 3.1 document"),
    "missing operationId": (_drop_operation_id, "GET /healthz: has no operationId"),
    "duplicate operationId": (_reuse_operation_id, "is not unique"),
    "missing example": (_drop_example, "GET /v1/catalog: response 200 has no example"),
    "invalid example": (_break_example, "example 'sample' is invalid at /policy"),
    "error without problem": (_plain_error, "response 500 must be"),
    "problem type missing": (_forget_problem_type, "preview-ended is missing"),
    "unknown admin scope": (_unknown_scope, "admin security must name one scope"),
    "undefined scheme": (_undefined_scheme, "security scheme 'apiKey' is not defined"),
    "deprecated, no sunset": (_deprecated_without_sunset, "no x-sunset date"),
    "no success response": (_no_success, "GET /healthz: has no 2xx response"),
}


@pytest.mark.parametrize("kind", BROKEN)
def test_lint_rejects_broken_spec(kind: str) -> None:
    breaks, expected = BROKEN[kind]
    spec = copy.deepcopy(load_spec())
    breaks(spec)
    findings = lint(spec)
    assert any(expected in finding for finding in findings), findings
