"""API reference pages generated from docs/openapi.yaml and served by the origin.

``GET /docs`` is one self-contained HTML page (no scripts, no assets from
elsewhere) and ``GET /openapi.json`` the spec itself, so the reference
always matches the spec the services are tested against.
"""

from __future__ import annotations

import functools
import json
from html import escape
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from shared.contract import load_spec, operations, resolve

_STYLE = """
body { font: 15px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 60rem;
       padding: 1rem 2rem; color: #1d1d1f; }
h1 { margin-bottom: 0 } h2 { border-bottom: 1px solid #ddd; margin-top: 2.5rem }
section { border-top: 1px solid #eee; padding: .5rem 0 1rem }
.method { display: inline-block; min-width: 4.5rem; font-weight: 600 }
.deprecated { color: #a40000 } .text { white-space: pre-wrap }
table { border-collapse: collapse; margin: .5rem 0 } td, th { border: 1px solid #ddd;
  padding: .2rem .5rem; text-align: left; vertical-align: top }
pre { background: #f5f5f7; padding: .5rem; overflow-x: auto; font-size: 13px }
"""
# The page has no scripts and loads nothing: inline styles only.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"


@functools.cache
def render_html(spec_json: str) -> str:
    """Render the spec (as JSON text, so the result can be cached) as HTML."""
    spec = json.loads(spec_json)
    info = spec["info"]
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{escape(info['title'])} {escape(info['version'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(info['title'])}</h1><p>Version {escape(info['version'])}",
        " · <a href=/openapi.json>openapi.json</a></p>",
        f"<p class=text>{escape(info.get('description', ''))}</p>",
        _contents(spec),
    ]
    for tag in _tags(spec):
        parts.append(f"<h2 id=tag-{escape(tag)}>{escape(tag)}</h2>")
        for path, method, operation in operations(spec):
            if (operation.get("tags") or ["other"])[0] == tag:
                parts.append(_operation(spec, path, method, operation))
    parts.append("<h2 id=schemas>Schemas</h2>")
    for name, schema in spec.get("components", {}).get("schemas", {}).items():
        parts.append(f"<section id=schema-{escape(name)}><h3>{escape(name)}</h3>")
        parts.append(f"{_json(schema)}</section>")
    parts.append("</body></html>")
    return "".join(parts)


def _tags(spec: dict[str, Any]) -> list[str]:
    declared = [tag["name"] for tag in spec.get("tags", [])]
    used = {(op.get("tags") or ["other"])[0] for _, _, op in operations(spec)}
    return [tag for tag in declared if tag in used] + sorted(used - set(declared))


def _contents(spec: dict[str, Any]) -> str:
    items = []
    for path, method, operation in operations(spec):
        anchor = escape(operation.get("operationId", f"{method}-{path}"))
        items.append(
            f"<li><a href=#{anchor}>{method.upper()} {escape(path)}</a> "
            f"{escape(operation.get('summary', ''))}</li>"
        )
    return f"<ul>{''.join(items)}</ul>"


def _operation(
    spec: dict[str, Any], path: str, method: str, operation: dict[str, Any]
) -> str:
    anchor = escape(operation.get("operationId", f"{method}-{path}"))
    parts = [
        f"<section id={anchor}><h3><span class=method>{method.upper()}</span>",
        f"<code>{escape(path)}</code></h3>",
        f"<p>{escape(operation.get('summary', ''))}</p>",
    ]
    if operation.get("deprecated"):
        parts.append(
            f"<p class=deprecated>Deprecated; removed after "
            f"{escape(str(operation.get('x-sunset')))}.</p>"
        )
    if "description" in operation:
        parts.append(f"<p class=text>{escape(operation['description'])}</p>")
    parts.append(_security(operation))
    parts.append(_parameters(spec, operation))
    body = resolve(spec, operation.get("requestBody", {}))
    for media_type, media in body.get("content", {}).items():
        parts.append(f"<p>Request body <code>{escape(media_type)}</code>")
        parts.append(f"{' (required)' if body.get('required') else ''}</p>")
        parts.append(_json(media.get("schema", {})))
        parts.append(_example(spec, media))
    parts.append(_responses(spec, operation))
    parts.append("</section>")
    return "".join(parts)


def _security(operation: dict[str, Any]) -> str:
    requirements = operation.get("security")
    if not requirements:
        return ""
    alternatives = [
        " and ".join(
            f"{name}" + (f" (scope {', '.join(scopes)})" if scopes else "")
            for name, scopes in requirement.items()
        )
        for requirement in requirements
    ]
    return f"<p>Authentication: {escape(' or '.join(alternatives))}</p>"


def _parameters(spec: dict[str, Any], operation: dict[str, Any]) -> str:
    rows = []
    for parameter in operation.get("parameters", []):
        parameter = resolve(spec, parameter)
        schema = resolve(spec, parameter.get("schema", {}))
        rows.append(
            f"<tr><td><code>{escape(parameter['name'])}</code></td>"
            f"<td>{escape(parameter['in'])}</td>"
            f"<td>{'yes' if parameter.get('required') else 'no'}</td>"
            f"<td><code>{escape(json.dumps(schema))}</code></td>"
            f"<td class=text>{escape(parameter.get('description', ''))}</td></tr>"
        )
    if not rows:
        return ""
    header = "<tr><th>Parameter<th>In<th>Required<th>Schema<th>Description</tr>"
    return f"<table>{header}{''.join(rows)}</table>"


def _responses(spec: dict[str, Any], operation: dict[str, Any]) -> str:
    rows = []
    examples = []
    for status, response in operation.get("responses", {}).items():
        response = resolve(spec, response)
        media_types = ", ".join(response.get("content", {}))
        rows.append(
            f"<tr><td>{escape(status)}</td><td>{escape(response['description'])}</td>"
            f"<td><code>{escape(media_types)}</code></td></tr>"
        )
        if status.startswith("2"):
            for media in response.get("content", {}).values():
                examples.append(_example(spec, media))
    header = "<tr><th>Status<th>Description<th>Media types</tr>"
    return f"<table>{header}{''.join(rows)}</table>{''.join(examples)}"


def _example(spec: dict[str, Any], media: dict[str, Any]) -> str:
    if "example" in media:
        return _json(media["example"])
    for example in media.get("examples", {}).values():
        return _json(resolve(spec, example).get("value"))
    return ""


def _json(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, indent=2)
    return f"<pre>{escape(text)}</pre>"


async def docs(request: Request) -> Response:
    html = render_html(json.dumps(load_spec(), default=str))
    return HTMLResponse(
        html,
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "max-age=300"},
    )


async def openapi_json(request: Request) -> Response:
    return JSONResponse(
        json.loads(json.dumps(load_spec(), default=str)),
        headers={"Cache-Control": "max-age=300"},
    )


routes = [
    Route("/docs", docs, methods=["GET"]),
    Route("/openapi.json", openapi_json, methods=["GET"]),
]
