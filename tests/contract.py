"""Check real HTTP responses against docs/openapi.yaml."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import jwt
import referencing
from referencing.jsonschema import DRAFT202012

from segmentgate.speclint import pointer, schema_validator
from shared.contract import load_schema, load_spec, resolve


def check_response(
    response: httpx.Response, method: str, path: str, spec: dict[str, Any] | None = None
) -> None:
    """Assert that ``response`` is documented for the operation ``method path``.

    The status must be listed and the media type documented for it; a JSON
    body must be valid under the documented schema.
    """
    spec = spec or load_spec()
    operation = spec["paths"][path][method.lower()]
    status = str(response.status_code)
    assert status in operation["responses"], (
        f"{method} {path}: status {status} is not documented: {response.text[:300]}"
    )
    documented = resolve(spec, operation["responses"][status])
    content = documented.get("content", {})
    media_type = response.headers.get("content-type", "").split(";")[0].strip()
    if not content:
        assert not response.content, f"{method} {path} {status}: body not documented"
        return
    assert media_type in content, (
        f"{method} {path} {status}: {media_type!r} is not one of {sorted(content)}"
    )
    if not media_type.endswith("json"):
        return
    response_ref = operation["responses"][status].get("$ref", "")
    base = (
        ("components", "responses", response_ref.rsplit("/", 1)[-1])
        if response_ref
        else ("paths", path, method.lower(), "responses", status)
    )
    validator = schema_validator(spec, pointer(*base, "content", media_type, "schema"))
    errors = [
        f"/{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(response.json())
    ]
    assert errors == [], f"{method} {path} {status}: {errors}"


def unverified_claims(token: str) -> dict[str, Any]:
    """Return a JWT's claims without checking its signature."""
    return dict(jwt.decode(token, options={"verify_signature": False}))


def event_batch_validator() -> jsonschema.Validator:
    """Return a validator of event batch claims, docs/schemas/event-batch.json."""
    event = load_schema("event")
    registry: referencing.Registry[Any] = referencing.Registry().with_resource(
        event["$id"], DRAFT202012.create_resource(event)
    )
    return jsonschema.Draft202012Validator(
        load_schema("event-batch"), registry=registry
    )
