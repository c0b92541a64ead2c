"""The spec keeps its promises to clients of the released version."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from segmentgate.specdiff import breaking_changes, check, main, version_allows_breaking
from shared.contract import RELEASED_SPEC_PATH, SPEC_PATH, load_spec

Spec = dict[str, Any]


def test_current_spec_passes_against_released() -> None:
    assert check(load_spec(RELEASED_SPEC_PATH), load_spec()) == []
    assert main([str(RELEASED_SPEC_PATH), str(SPEC_PATH)]) == 0


def test_unchanged_spec_has_no_breaking_changes() -> None:
    assert breaking_changes(load_spec(), copy.deepcopy(load_spec())) == []


def _remove_operation(spec: Spec) -> None:
    del spec["paths"]["/v1/purchases/{purchase_id}"]["get"]


def _remove_field(spec: Spec) -> None:
    del spec["components"]["schemas"]["Purchase"]["properties"]["status"]


def _narrow_type(spec: Spec) -> None:
    policy = spec["components"]["schemas"]["Policy"]["oneOf"][1]
    policy["properties"]["preview_seconds"]["type"] = "integer"


def _require_header(spec: Spec) -> None:
    operation = spec["paths"]["/v1/playback-sessions"]["post"]
    operation["parameters"] = [{"$ref": "#/components/parameters/IdempotencyKey"}]


def _require_property(spec: Spec) -> None:
    body = spec["paths"]["/v1/playback-sessions"]["post"]["requestBody"]
    body["content"]["application/json"]["schema"]["required"].append("transport")


def _remove_enum_value(spec: Spec) -> None:
    body = spec["paths"]["/v1/playback-sessions"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    schema["properties"]["transport"]["enum"].remove("path")


BREAKING: dict[str, tuple[Callable[[Spec], None], str]] = {
    "removed operation": (_remove_operation, "removed-operation"),
    "removed field": (_remove_field, "removed-field"),
    "narrowed type": (_narrow_type, "narrowed-type"),
    "new required header": (_require_header, "new-required-input"),
    "new required property": (_require_property, "new-required-input"),
    "removed enum value": (_remove_enum_value, "removed-enum-value"),
}


@pytest.mark.parametrize("kind", BREAKING)
def test_breaking_change_fails(kind: str) -> None:
    breaks, expected = BREAKING[kind]
    released = load_spec()
    changed = copy.deepcopy(released)
    breaks(changed)
    failures = check(released, changed)
    assert any(failure.startswith(expected + ":") for failure in failures), failures


@pytest.mark.parametrize("kind", BREAKING)
def test_major_version_allows_breaking_change(kind: str) -> None:
    breaks, _ = BREAKING[kind]
    released = copy.deepcopy(load_spec())
    released["info"]["version"] = "1.4.2"
    changed = copy.deepcopy(released)
    breaks(changed)
    changed["info"]["version"] = "2.0.0"
    assert breaking_changes(released, changed) != []
    assert check(released, changed) == []


def test_additions_are_not_breaking() -> None:
    released = load_spec()
    changed = copy.deepcopy(released)
    paths = changed["paths"]
    paths["/v1/extra"] = copy.deepcopy(paths["/v1/catalog"])
    paths["/v1/extra"]["get"]["operationId"] = "extra"
    body = paths["/v1/playback-sessions"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    schema["properties"]["transport"]["enum"].append("cookie")
    schema["properties"]["quality"] = {"type": "string"}
    purchase = changed["components"]["schemas"]["Purchase"]["properties"]
    purchase["receipt_url"] = {"type": "string"}
    assert breaking_changes(released, changed) == []


@pytest.mark.parametrize(
    ("old", "new", "allowed"),
    [
        ("1.4.2", "1.5.0", False),
        ("1.4.2", "1.4.3", False),
        ("1.4.2", "2.0.0", True),
        ("0.1.0", "0.2.0", True),
        ("0.1.0", "0.1.1", False),
        ("2.0.0", "1.9.0", False),
    ],
)
def test_version_rule(old: str, new: str, allowed: bool) -> None:
    assert version_allows_breaking(old, new) is allowed


def test_cli_fails_on_breaking_change(tmp_path: Any) -> None:
    changed = copy.deepcopy(load_spec())
    _remove_operation(changed)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    assert main([str(SPEC_PATH), str(path)]) == 1
