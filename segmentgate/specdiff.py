"""Find breaking changes between the released spec and the current one.

Run ``python -m segmentgate.specdiff [RELEASED] [CURRENT]`` (defaults:
docs/api/released.yaml and docs/openapi.yaml). It lists every breaking
change and exits 1 unless ``info.version`` allows them all.

Breaking, for a client built against the released spec:

* ``removed-operation``: a path or method is gone;
* ``removed-field``: a response property is gone or no longer required,
  or a response media type is gone;
* ``narrowed-type``: a request value accepts less than before: a type
  dropped, a bound tightened, a pattern or an enum added;
* ``widened-response-type``: a response value may have a type that it
  could not have before, such as null;
* ``new-required-input``: a required parameter, body or body property;
* ``removed-enum-value``: a request enum lost a value.

Responses may gain enum values, because clients must accept values they
do not know; the description of ProblemType in the spec states that rule.

A new major version allows breaking changes; below 1.0.0 a new minor
version does, as semantic versioning allows for initial development.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.contract import (
    RELEASED_SPEC_PATH,
    SPEC_PATH,
    load_spec,
    operations,
    resolve,
)

Spec = dict[str, Any]
Schema = dict[str, Any]
# Bounds that a request schema may only loosen: (keyword, looser direction).
_LOWER_BOUNDS = (
    "minimum",
    "exclusiveMinimum",
    "minLength",
    "minItems",
    "minProperties",
)
_UPPER_BOUNDS = (
    "maximum",
    "exclusiveMaximum",
    "maxLength",
    "maxItems",
    "maxProperties",
)


@dataclass(frozen=True)
class Change:
    """One breaking change: its kind, where it is and what changed."""

    kind: str
    where: str
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.where}: {self.detail}"


def breaking_changes(old: Spec, new: Spec) -> list[Change]:
    """Return the breaking changes from ``old`` to ``new``."""
    new_operations = {(path, method): op for path, method, op in operations(new)}
    changes: list[Change] = []
    for path, method, old_operation in operations(old):
        where = f"{method.upper()} {path}"
        new_operation = new_operations.get((path, method))
        if new_operation is None:
            changes.append(Change("removed-operation", where, "the operation is gone"))
            continue
        differ = _SchemaDiff(old, new)
        changes += _parameters(differ, where, old_operation, new_operation)
        changes += _request_body(differ, where, old_operation, new_operation)
        changes += _responses(differ, where, old_operation, new_operation)
        changes += differ.changes
    return changes


def version_allows_breaking(old_version: str, new_version: str) -> bool:
    """Return whether going from ``old_version`` to ``new_version`` may break."""
    old_major, old_minor = _major_minor(old_version)
    new_major, new_minor = _major_minor(new_version)
    if new_major != old_major:
        return new_major > old_major
    return new_major == 0 and new_minor > old_minor


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        raise ValueError(f"info.version {version!r} is not MAJOR.MINOR.PATCH") from None


def check(old: Spec, new: Spec) -> list[str]:
    """Return the breaking changes that ``new``'s version does not allow."""
    changes = breaking_changes(old, new)
    if version_allows_breaking(old["info"]["version"], new["info"]["version"]):
        return []
    return [str(change) for change in changes]


def _parameters(
    differ: _SchemaDiff, where: str, old: dict[str, Any], new: dict[str, Any]
) -> Iterator[Change]:
    def by_key(spec: Spec, operation: dict[str, Any]) -> dict[tuple[str, str], Any]:
        found = {}
        for parameter in operation.get("parameters", []):
            parameter = resolve(spec, parameter)
            found[(parameter["in"], parameter["name"].lower())] = parameter
        return found

    old_parameters = by_key(differ.old, old)
    for key, parameter in by_key(differ.new, new).items():
        label = f"{where} {key[0]} parameter {parameter['name']}"
        previous = old_parameters.get(key)
        if parameter.get("required") and not (previous or {}).get("required"):
            yield Change("new-required-input", label, "the parameter is now required")
        if previous is not None:
            differ.request(
                label, previous.get("schema", {}), parameter.get("schema", {})
            )


def _request_body(
    differ: _SchemaDiff, where: str, old: dict[str, Any], new: dict[str, Any]
) -> Iterator[Change]:
    old_body = resolve(differ.old, old.get("requestBody", {}))
    new_body = resolve(differ.new, new.get("requestBody", {}))
    if new_body.get("required") and not old_body.get("required"):
        yield Change("new-required-input", f"{where} body", "a body is now required")
    old_content = old_body.get("content", {})
    for media_type, media in new_body.get("content", {}).items():
        if media_type in old_content:
            label = f"{where} body {media_type}"
            differ.request(
                label,
                old_content[media_type].get("schema", {}),
                media.get("schema", {}),
            )


def _responses(
    differ: _SchemaDiff, where: str, old: dict[str, Any], new: dict[str, Any]
) -> Iterator[Change]:
    new_responses = new.get("responses", {})
    for status, old_response in old.get("responses", {}).items():
        if not status.startswith("2"):
            continue
        new_response = resolve(differ.new, new_responses.get(status, {}))
        new_content = new_response.get("content", {})
        for media_type, media in (
            resolve(differ.old, old_response).get("content", {}).items()
        ):
            label = f"{where} response {status} {media_type}"
            if media_type not in new_content:
                yield Change("removed-field", label, "the response media type is gone")
                continue
            differ.response(
                label,
                media.get("schema", {}),
                new_content[media_type].get("schema", {}),
            )


class _SchemaDiff:
    """Compare schemas of two specs, collecting breaking changes."""

    def __init__(self, old: Spec, new: Spec) -> None:
        self.old = old
        self.new = new
        self.changes: list[Change] = []
        self._seen: set[tuple[int, int, bool]] = set()

    def request(self, where: str, old: Schema, new: Schema) -> None:
        self._compare(where, old, new, request=True)

    def response(self, where: str, old: Schema, new: Schema) -> None:
        self._compare(where, old, new, request=False)

    def _add(self, kind: str, where: str, detail: str) -> None:
        self.changes.append(Change(kind, where, detail))

    def _compare(self, where: str, old: Schema, new: Schema, *, request: bool) -> None:
        old, new = resolve(self.old, old), resolve(self.new, new)
        key = (id(old), id(new), request)
        if key in self._seen or not isinstance(old, dict) or not isinstance(new, dict):
            return
        self._seen.add(key)
        self._types(where, old, new, request)
        if request:
            self._enum(where, old, new)
            self._bounds(where, old, new)
        self._properties(where, old, new, request)
        if "items" in old and "items" in new:
            self._compare(f"{where}[]", old["items"], new["items"], request=request)
        for keyword in ("oneOf", "anyOf", "allOf"):
            pairs = zip(old.get(keyword, []), new.get(keyword, []), strict=False)
            for index, (old_part, new_part) in enumerate(pairs):
                label = f"{where} {keyword}[{index}]"
                self._compare(label, old_part, new_part, request=request)
            if (
                request
                and keyword != "allOf"
                and len(new.get(keyword, [])) < len(old.get(keyword, []))
            ):
                self._add("narrowed-type", where, f"{keyword} lost an alternative")

    def _types(self, where: str, old: Schema, new: Schema, request: bool) -> None:
        old_types, new_types = _types(old), _types(new)
        if request and new_types is not None and not (old_types or set()) <= new_types:
            lost = sorted((old_types or {"any"}) - new_types)
            self._add("narrowed-type", where, f"no longer accepts {', '.join(lost)}")
        if (
            not request
            and old_types is not None
            and not (new_types or {"any"}) <= old_types
        ):
            gained = sorted((new_types or {"any"}) - old_types)
            detail = f"may now return {', '.join(gained)}"
            self._add("widened-response-type", where, detail)

    def _enum(self, where: str, old: Schema, new: Schema) -> None:
        old_values, new_values = _enum(old), _enum(new)
        if new_values is None:
            return
        if old_values is None:
            self._add("narrowed-type", where, "is now limited to an enum")
            return
        for value in sorted(old_values - new_values):
            self._add("removed-enum-value", where, f"no longer accepts {value!r}")

    def _bounds(self, where: str, old: Schema, new: Schema) -> None:
        for keyword in _LOWER_BOUNDS + _UPPER_BOUNDS:
            if keyword not in new:
                continue
            before = old.get(keyword)
            tighter = before is None or (
                new[keyword] > before
                if keyword in _LOWER_BOUNDS
                else new[keyword] < before
            )
            if tighter:
                self._add("narrowed-type", where, f"{keyword} is now {new[keyword]}")
        if "pattern" in new and new["pattern"] != old.get("pattern"):
            self._add("narrowed-type", where, f"must now match {new['pattern']}")

    def _properties(self, where: str, old: Schema, new: Schema, request: bool) -> None:
        old_properties = old.get("properties", {})
        new_properties = new.get("properties", {})
        old_required, new_required = (
            set(old.get("required", [])),
            set(new.get("required", [])),
        )
        if request:
            for name in sorted(new_required - old_required):
                self._add(
                    "new-required-input",
                    f"{where}.{name}",
                    "the property is now required",
                )
        else:
            for name in sorted(set(old_properties) - set(new_properties)):
                self._add("removed-field", f"{where}.{name}", "the property is gone")
            for name in sorted(old_required - new_required):
                if name in new_properties:
                    self._add(
                        "removed-field",
                        f"{where}.{name}",
                        "the property is now optional",
                    )
        for name in sorted(set(old_properties) & set(new_properties)):
            label = f"{where}.{name}"
            self._compare(
                label, old_properties[name], new_properties[name], request=request
            )


def _types(schema: Schema) -> set[str] | None:
    declared = schema.get("type")
    if declared is None:
        return None
    types = {declared} if isinstance(declared, str) else set(declared)
    if "number" in types:
        types.add("integer")
    return types


def _enum(schema: Schema) -> set[Any] | None:
    if "enum" in schema:
        return set(map(str, schema["enum"]))
    if "const" in schema:
        return {str(schema["const"])}
    return None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    old_path = Path(args[0]) if args else RELEASED_SPEC_PATH
    new_path = Path(args[1]) if len(args) > 1 else SPEC_PATH
    old, new = load_spec(old_path), load_spec(new_path)
    changes = breaking_changes(old, new)
    allowed = version_allows_breaking(old["info"]["version"], new["info"]["version"])
    for change in changes:
        print(change)
    versions = f"{old['info']['version']} -> {new['info']['version']}"
    if changes and not allowed:
        print(f"{len(changes)} breaking changes, but {versions} is no major version")
        return 1
    print(
        f"{len(changes)} breaking changes; {versions} allows them"
        if changes
        else "no breaking changes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
