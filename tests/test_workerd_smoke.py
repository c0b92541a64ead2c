"""The Worker entry in a real Workers runtime: workerd 1.20240701.0.

The npm package ``@cloudflare/workerd-linux-64@1.20240701.0`` (installed by
``make tools`` into tests/workerd) carries Pyodide 0.26 with Python 3.12
built in, and starts without network access, unlike current releases
that download Pyodide at start. It ships no third-party Python package
offline (its ``pythonRequirement`` modules are downloaded, so the test
never uses them): the test embeds our modules and the pure-Python
dependencies from this virtual environment into the Worker instead.

One workerd process serves two Workers on 127.0.0.1, and its outbound
requests may reach loopback addresses only:

* the edge's real entry, ``edge.worker.on_fetch``, in front of a real
  origin and the local media server: a viewer previews, buys and plays
  segments, and forged playback tokens are rejected by the signature
  check that runs there, the runtime's WebCrypto (:mod:`edge.webcrypto`);
* the entry's bridge (:mod:`edge.worker_bridge`) in front of a small ASGI
  app that fetches segments from the local media server with httpx over
  :mod:`edge.fetch_transport`, to play a few segments through the
  runtime's ``Request``, ``fetch`` and ``Response``.

Everything is skipped, saying why, when workerd is not installed.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from shared.keys import SigningKey
from tests.harness import (
    MEDIA_ROOT,
    REPO,
    MediaServer,
    RunningStack,
    Viewer,
    assert_problem,
    free_port,
    running_stack,
)
from tests.test_gate_attacks import (
    b64,
    claims_payload,
    origin_jwk,
    sign_as_origin,
    unsigned_token,
)
from tests.test_worker_app import segment_urls

WORKERD = REPO / "tests/workerd/node_modules/@cloudflare/workerd-linux-64/bin/workerd"
RUNTIME_VERSION = "workerd 2024-07-01"
# Pure-Python distributions that the edge imports, by their import names.
DEPENDENCIES = (
    "starlette",
    "anyio",
    "idna",
    "httpx",
    "httpcore",
    "h11",
    "certifi",
    "jwt",
    "cachetools",
    "itsdangerous",
    "typing_extensions",
    "prometheus_client",
    "opentelemetry",
    "yaml",
)
# The first start of Pyodide in workerd takes about 20 s on a 2-core machine.
START_LIMIT = 180.0

# The Worker's main module: the edge's entry, or a response carrying the
# import error, so that a failing test shows why the entry did not load.
ENTRY = """
try:
    from edge.worker import on_fetch
except ImportError as exc:
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

    async def on_fetch(request, env):
        from js import Response

        return Response.new(IMPORT_ERROR, status=503)
"""

# A stand-in for the edge behind the bridge: it streams whatever the media
# server has at the same path, with httpx over the runtime's fetch.
BRIDGED = """
import sys

import httpx

from fetch_transport import FetchTransport
from worker_bridge import binding_values, serve_fetch

client = httpx.AsyncClient(transport=FetchTransport())


async def media(scope, receive, send):
    await receive()
    upstream = scope["env"].UPSTREAM_URL + scope["path"]
    response = await client.get(upstream)
    headers = [
        (b"content-type", response.headers.get("content-type", "").encode()),
        (b"x-python-version", sys.version.split()[0].encode()),
        (b"x-query", scope["query_string"]),
        (b"x-bindings", ",".join(sorted(binding_values(scope["env"]))).encode()),
    ]
    await send({"type": "http.response.start", "status": response.status_code,
                "headers": headers})
    body = response.content
    half = len(body) // 2
    await send({"type": "http.response.body", "body": body[:half],
                "more_body": True})
    await send({"type": "http.response.body", "body": body[half:]})


async def on_fetch(request, env):
    return await serve_fetch(media, request, env)
"""


def module_files(name: str) -> list[tuple[str, Path]]:
    """Return (module name in the Worker, file) for each .py of ``name``."""
    spec = importlib.util.find_spec(name)
    assert spec is not None, name
    if not spec.submodule_search_locations:
        assert spec.origin is not None, name
        return [(f"{name}.py", Path(spec.origin))]
    # A namespace package (opentelemetry) may span several folders.
    return [
        (f"{name}/{path.relative_to(root).as_posix()}", path)
        for root in map(Path, spec.submodule_search_locations)
        for path in sorted(root.rglob("*.py"))
    ]


def worker_config(
    bundle: Path,
    edge_port: int,
    bridge_port: int,
    upstream: str,
    edge_bindings: dict[str, str],
) -> str:
    edge_modules = [("main.py", bundle / "entry.py")]
    for package in ("edge", "shared", *DEPENDENCIES):
        edge_modules += module_files(package)
    bridge_modules = [
        ("main.py", bundle / "bridged.py"),
        ("worker_bridge.py", REPO / "edge/worker_bridge.py"),
        ("fetch_transport.py", REPO / "edge/fetch_transport.py"),
    ]
    for package in DEPENDENCIES:
        bridge_modules += module_files(package)

    def modules(entries: list[tuple[str, Path]], folder: str) -> str:
        # workerd embeds files by paths relative to the configuration file.
        lines = []
        for name, path in entries:
            copy = bundle / folder / name
            if copy != path:
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
            embedded = copy.relative_to(bundle).as_posix()
            lines.append(f'    (name = "{name}", pythonModule = embed "{embedded}")')
        return ",\n".join(lines)

    edge_texts = ",\n".join(
        f'    (name = "{name}", text = "{value}")'
        for name, value in edge_bindings.items()
    )

    return f'''using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "edge", worker = .edgeWorker),
    (name = "bridge", worker = .bridgeWorker),
    (name = "loopback", network = (allow = ["local"])),
  ],
  sockets = [
    (name = "edge", address = "127.0.0.1:{edge_port}", http = (), service = "edge"),
    (name = "bridge", address = "127.0.0.1:{bridge_port}", http = (),
     service = "bridge"),
  ],
);
const edgeWorker :Workerd.Worker = (
  modules = [
{modules(edge_modules, "edge")}
  ],
  bindings = [
{edge_texts}
  ],
  globalOutbound = "loopback",
  compatibilityDate = "2024-07-01",
  compatibilityFlags = ["python_workers"],
);
const bridgeWorker :Workerd.Worker = (
  modules = [
{modules(bridge_modules, "bridge")}
  ],
  bindings = [
    (name = "UPSTREAM_URL", text = "{upstream}"),
    (name = "SEGMENTGATE_EDGE_GRACE_SECONDS", text = "60"),
    (name = "SEGMENTGATE_EDGE_ORIGIN_TOKEN", text = "secret"),
  ],
  globalOutbound = "loopback",
  compatibilityDate = "2024-07-01",
  compatibilityFlags = ["python_workers"],
);
'''


@dataclass
class Runtime:
    edge_url: str
    bridge_url: str
    media: MediaServer
    stack: RunningStack
    version: str
    log: Path


def wait_until_listening(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_LIMIT
    while True:
        try:
            httpx.get(url, timeout=120)
            return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            pytest.skip(f"workerd exited at start: {log.read_text()[-1500:]}")
        if time.monotonic() > deadline:
            pytest.skip(f"workerd did not listen within {START_LIMIT:.0f} s")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runtime]:
    if not WORKERD.is_file():
        pytest.skip("workerd is not installed: run `make tools` (needs npm)")
    version = subprocess.run(
        [str(WORKERD), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if version != RUNTIME_VERSION:
        pytest.skip(f"expected {RUNTIME_VERSION}, found {version or 'no version'}")
    bundle = tmp_path_factory.mktemp("workerd")
    (bundle / "entry.py").write_text(ENTRY)
    (bundle / "bridged.py").write_text(BRIDGED)
    media = MediaServer(MEDIA_ROOT).start()
    with running_stack(tmp_path_factory.mktemp("stack")) as stack:
        config = bundle / "config.capnp"
        edge_port, bridge_port = free_port(), free_port()
        secret = base64.urlsafe_b64encode(stack.stack.uri_secret).decode()
        edge_bindings = {
            "SEGMENTGATE_EDGE_ORIGIN_URL": stack.stack.origin_url,
            "SEGMENTGATE_EDGE_UPSTREAM_URL": media.url,
            "SEGMENTGATE_EDGE_URI_SECRETS": secret.rstrip("="),
            "SEGMENTGATE_EDGE_ORIGIN_TOKEN": stack.stack.edge_token,
            "SEGMENTGATE_EDGE_WORKER_SYNC_SECONDS": "0.2",
        }
        config.write_text(
            worker_config(bundle, edge_port, bridge_port, media.url, edge_bindings)
        )
        log = bundle / "workerd.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [str(WORKERD), "serve", str(config), "--experimental"],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={"PATH": os.environ.get("PATH", ""), "HOME": str(bundle)},
            )
        try:
            wait_until_listening(f"http://127.0.0.1:{bridge_port}/", process, log)
            media.requests.clear()
            yield Runtime(
                f"http://127.0.0.1:{edge_port}",
                f"http://127.0.0.1:{bridge_port}",
                media,
                stack,
                version,
                log,
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            media.stop()


def test_bridge_plays_segments_in_workerd(runtime: Runtime) -> None:
    names = ["trailer/master.m3u8", *(f"trailer/seg_{i:03d}.ts" for i in range(3))]
    present = [name for name in names if (MEDIA_ROOT / name).is_file()]
    assert len(present) >= 3, f"bundled media changed: {present}"
    responses = [
        httpx.get(f"{runtime.bridge_url}/{name}?sg=a%2Fb", timeout=60)
        for name in present
    ]
    missing = httpx.get(f"{runtime.bridge_url}/trailer/missing.ts", timeout=60)

    assert runtime.version == RUNTIME_VERSION
    for name, response in zip(present, responses, strict=True):
        assert response.status_code == 200, (name, response.text[:300])
        assert response.content == (MEDIA_ROOT / name).read_bytes(), name
        assert response.headers["x-python-version"].startswith("3.12.")
        assert response.headers["x-query"] == "sg=a%2Fb"
        # The runtime's binding object is read by attribute, text only.
        assert response.headers["x-bindings"] == (
            "SEGMENTGATE_EDGE_GRACE_SECONDS,SEGMENTGATE_EDGE_ORIGIN_TOKEN"
        )
    assert missing.status_code == 404
    assert [path.split("?")[0] for path in runtime.media.requests] == [
        f"/{name}" for name in present
    ] + ["/trailer/missing.ts"]


def to_edge(url: str, runtime: Runtime) -> str:
    """Send a URL that the origin wrote for its own edge to the Worker instead."""
    edge = httpx.URL(runtime.edge_url)
    return str(httpx.URL(url).copy_with(host=edge.host, port=edge.port))


def test_worker_entry_plays_segments_in_workerd(runtime: Runtime) -> None:
    viewer = Viewer(runtime.stack.stack.origin_url)
    client = httpx.Client(timeout=60)
    try:
        session = viewer.session("sample")
        segments = segment_urls(client, to_edge(str(session["playlist_url"]), runtime))
        preview = client.get(segments[0])
        before_purchase = client.get(segments[-1])
        assert viewer.purchase()["status"] == "granted"
        # No push reaches the Worker: a request reads the origin's feed first.
        deadline = time.monotonic() + 30
        while (late := client.get(segments[-1])).status_code != 200:
            assert time.monotonic() < deadline, late.text
            time.sleep(0.2)
        played = [client.get(url) for url in segments[:3]]
        health = client.get(f"{runtime.edge_url}/_edge/healthz")
    finally:
        viewer.close()
        client.close()

    log = runtime.log.read_text()[-3000:]
    assert preview.status_code == 200, (preview.text[:300], log)
    assert_problem(before_purchase, 402, "preview-ended")
    for response in [preview, late, *played]:
        path = response.url.path.lstrip("/")
        assert response.content == (MEDIA_ROOT / path).read_bytes(), path
    assert health.status_code == 200, health.text
    assert health.json()["status"] == "ok"
    # The feed's signed event batches were verified there too.
    assert health.json()["last_event_seq"] >= 1


def test_worker_entry_rejects_forged_tokens(runtime: Runtime) -> None:
    stack = runtime.stack
    jwk = origin_jwk(stack)
    kid = jwk["kid"]
    public_bytes = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    without_iat = claims_payload()
    del without_iat["iat"]
    genuine = sign_as_origin(stack, claims_payload())
    header, payload, signature = genuine.split(".")
    flipped = "A" if signature[0] != "A" else "B"
    other_claims = b64(json.dumps(claims_payload(sub="vr_other")).encode())
    es256_header = b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": kid}).encode())
    other = SigningKey.generate()
    forged = {
        "tampered signature": f"{header}.{payload}.{flipped}{signature[1:]}",
        "tampered claims": f"{header}.{other_claims}.{signature}",
        # The empty signature ends the token in ".", outside a JWT's shape for
        # the edge, which still must not serve it.
        "alg none": unsigned_token(
            {"alg": "none", "typ": "JWT", "kid": kid}, claims_payload()
        )
        + "x",
        "other algorithm": f"{es256_header}.{payload}.{signature}",
        "wrong key": jwt.encode(
            claims_payload(), other.private_key, "EdDSA", headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(
            claims_payload(), other.private_key, "EdDSA", headers={"kid": other.kid}
        ),
        "HMAC with the public key": jwt.encode(
            claims_payload(), public_bytes, "HS256", headers={"kid": kid}
        ),
        "other audience": sign_as_origin(stack, claims_payload(aud="someone-else")),
        "missing iat": sign_as_origin(stack, without_iat),
        "expired": sign_as_origin(stack, claims_payload(exp=int(time.time()) - 60)),
    }
    playlist = f"{runtime.edge_url}/sample/master.m3u8"
    runtime.media.requests.clear()

    good = httpx.get(playlist, params={"sg": genuine}, timeout=60)
    rejected = {
        name: httpx.get(playlist, params={"sg": token}, timeout=60)
        for name, token in forged.items()
    }

    assert good.status_code == 200, good.text[:300]
    assert good.text.startswith("#EXTM3U")
    expected = {name: (403, "token-invalid") for name in forged}
    expected["expired"] = (401, "token-expired")
    for name, response in rejected.items():
        status, slug = expected[name]
        assert response.status_code == status, (name, response.text[:300])
        assert_problem(response, status, slug)
    # Only the genuine token reached the upstream.
    assert runtime.media.requests == ["/sample/master.m3u8"]
