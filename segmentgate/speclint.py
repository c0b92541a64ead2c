"""Lint docs/openapi.yaml beyond what OpenAPI 3.1 itself requires.

Run ``python -m segmentgate.speclint [SPEC]``; it prints one line per
finding and exits 1 if there is any. The rules keep the spec usable as a
contract: every operation can be mocked from its examples, every error is
the one problem object, and the spec lists every problem type of the code.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import referencing
from openapi_spec_validator import validate as validate_openapi
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from referencing.jsonschema import DRAFT202012

from origin.auth import ADMIN_SCOPES
from shared import problems
from shared.contract import SPEC_PATH, example_values, load_spec, operations, resolve

SPEC_URI = "urn:segmentgate:openapi"
PROBLEM_REF = "#/components/schemas/Problem"
PROBLEM_MEDIA_TYPE = "application/problem+json"


def pointer(*parts: str) -> str:
    """Return the JSON pointer of ``parts`` within the spec, as a URI."""
    escaped = (part.replace("~", "~0").replace("/", "~1") for part in parts)
    return f"{SPEC_URI}#/" + "/".join(escaped)


def schema_validator(spec: dict[str, Any], uri: str) -> jsonschema.Validator:
    """Return a validator for the schema at ``uri``, with its $refs resolved."""
    resource = DRAFT202012.create_resource(spec)
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        SPEC_URI, resource
    )
    return jsonschema.Draft202012Validator(
        {"$ref": uri},
        registry=registry,
        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER,
    )


def lint(spec: dict[str, Any]) -> list[str]:
    """Return every finding in ``spec``, one message each; empty when clean."""
    try:
        validate_openapi(spec)
    except OpenAPIValidationError as exc:
        return [f"not a valid OpenAPI 3.1 document: {exc.message}"]
    findings = [*_problem_types(spec), *_operation_ids(spec)]
    for path, method, operation in operations(spec):
        label = f"{method.upper()} {path}"
        findings += [
            f"{label}: {message}"
            for message in _operation(spec, path, method, operation)
        ]
    return findings


def _operation_ids(spec: dict[str, Any]) -> Iterator[str]:
    # openapi-spec-validator rejects duplicate ids; a missing one is allowed.
    for path, method, operation in operations(spec):
        if not operation.get("operationId"):
            yield f"{method.upper()} {path}: has no operationId"


def _problem_types(spec: dict[str, Any]) -> Iterator[str]:
    in_code = {
        value.uri
        for value in vars(problems).values()
        if isinstance(value, problems.ProblemType)
    }
    schema = spec.get("components", {}).get("schemas", {}).get("ProblemType", {})
    in_spec = set(schema.get("enum", []))
    for uri in sorted(in_code - in_spec):
        yield f"problem type {uri} is missing from components.schemas.ProblemType"
    for uri in sorted(in_spec - in_code):
        yield f"problem type {uri} is in the spec but not in shared/problems.py"


def _operation(
    spec: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> Iterator[str]:
    yield from _security(spec, operation)
    yield from _deprecation(operation)
    responses = operation.get("responses", {})
    if not any(status.startswith("2") for status in responses):
        yield "has no 2xx response"
    for status, response in responses.items():
        base = ("paths", path, method, "responses", status)
        yield from _response(spec, base, status, response)
    body = operation.get("requestBody")
    if body is not None:
        for media_type, media in resolve(spec, body).get("content", {}).items():
            base = ("paths", path, method, "requestBody", "content", media_type)
            yield from _examples(spec, base, media, f"request body {media_type}")


def _response(
    spec: dict[str, Any], base: tuple[str, ...], status: str, response: Any
) -> Iterator[str]:
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[-1]
        base = ("components", "responses", name)
    content = resolve(spec, response).get("content", {})
    if status[0] in "45":
        schema = content.get(PROBLEM_MEDIA_TYPE, {}).get("schema", {})
        if schema.get("$ref") != PROBLEM_REF or len(content) != 1:
            yield f"response {status} must be the Problem schema as problem+json"
        return
    if content and not any(_has_example(media) for media in content.values()):
        yield f"response {status} has no example"
    for media_type, media in content.items():
        media_base = (*base, "content", media_type)
        yield from _examples(spec, media_base, media, f"response {status} {media_type}")


def _has_example(media: dict[str, Any]) -> bool:
    return "example" in media or bool(media.get("examples"))


def _examples(
    spec: dict[str, Any], base: tuple[str, ...], media: dict[str, Any], where: str
) -> Iterator[str]:
    if "schema" not in media:
        return
    validator = schema_validator(spec, pointer(*base, "schema"))
    for name, example in example_values(spec, media).items():
        for error in validator.iter_errors(example):
            location = "/".join(str(part) for part in error.absolute_path)
            yield f"{where} example {name!r} is invalid at /{location}: {error.message}"


def _security(spec: dict[str, Any], operation: dict[str, Any]) -> Iterator[str]:
    schemes = spec.get("components", {}).get("securitySchemes", {})
    for requirement in operation.get("security", spec.get("security", [])):
        for name, scopes in requirement.items():
            if name not in schemes:
                yield f"security scheme {name!r} is not defined"
            elif name == "admin" and (
                len(scopes) != 1 or scopes[0] not in ADMIN_SCOPES
            ):
                yield f"admin security must name one scope of {', '.join(ADMIN_SCOPES)}"


def _deprecation(operation: dict[str, Any]) -> Iterator[str]:
    dates = {key: operation.get(key) for key in ("x-deprecated-at", "x-sunset")}
    if not operation.get("deprecated"):
        for key in sorted(key for key, value in dates.items() if value is not None):
            yield f"has {key} but is not deprecated"
        return
    for key, value in dates.items():
        if value is None:
            yield f"is deprecated but has no {key} date"
            continue
        try:
            datetime.date.fromisoformat(str(value))
        except ValueError:
            yield f"{key} {value!r} is not a date such as 2027-06-30"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else SPEC_PATH
    findings = lint(load_spec(path))
    for finding in findings:
        print(finding)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
