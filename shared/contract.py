"""The API contract: docs/openapi.yaml and the event schemas beside it.

Both services and the tools read the spec from the source tree.
NOTE: docs/ is not part of the installed packages, so these paths work in a
checkout or an editable install (as the Makefile installs), not from a wheel.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

DOCS = Path(__file__).resolve().parent.parent / "docs"
SPEC_PATH = DOCS / "openapi.yaml"
RELEASED_SPEC_PATH = DOCS / "api" / "released.yaml"
SCHEMAS = DOCS / "schemas"
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@functools.cache
def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    """Return the parsed OpenAPI document at ``path``, read once."""
    return dict(yaml.safe_load(path.read_text(encoding="utf-8")))


def load_schema(name: str) -> dict[str, Any]:
    """Return the JSON Schema ``docs/schemas/<name>.json``."""
    return dict(json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8")))


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Yield ``(path, method, operation)`` for every operation of ``spec``."""
    for path, item in spec.get("paths", {}).items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """Follow a local ``$ref`` (``#/...``) chain from ``node``."""
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local references are supported, got {ref!r}")
        node = spec
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def example_values(spec: dict[str, Any], media: dict[str, Any]) -> dict[str, Any]:
    """Return a media type's examples by name; ``example`` is named ``default``."""
    values = {}
    if "example" in media:
        values["default"] = media["example"]
    for name, example in media.get("examples", {}).items():
        values[name] = resolve(spec, example).get("value")
    return values
