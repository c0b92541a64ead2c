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

* the edge's real entry, ``edge.worker.on_fetch``, which the test skips,
  with the runtime's own error, when the entry cannot be imported there;
* the entry's bridge (:mod:`edge.worker_bridge`) in front of a small ASGI
  app that fetches segments from the local media server with httpx over
  :mod:`edge.fetch_transport`, to play a few segments through the
  runtime's ``Request``, ``fetch`` and ``Response``.

Everything is skipped, saying why, when workerd is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import MEDIA_ROOT, REPO, MediaServer, free_port

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


def worker_config(bundle: Path, edge_port: int, bridge_port: int, upstream: str) -> str:
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
    (name = "SEGMENTGATE_EDGE_ORIGIN_URL", text = "http://127.0.0.1:9"),
    (name = "SEGMENTGATE_EDGE_UPSTREAM_URL", text = "{upstream}"),
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
    edge_port, bridge_port = free_port(), free_port()
    config = bundle / "config.capnp"
    config.write_text(worker_config(bundle, edge_port, bridge_port, media.url))
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


def test_worker_entry_imports_in_workerd(runtime: Runtime) -> None:
    response = httpx.get(f"{runtime.edge_url}/_edge/healthz", timeout=120)
    if response.status_code == 503 and "Error" in response.text:
        # NOTE: workerd 1.20240701.0 has no cryptography package offline,
        # which PyJWT needs for EdDSA and ES256, so the edge itself cannot
        # run there. docs/deploy/workers.md describes the consequences.
        pytest.skip(f"{RUNTIME_VERSION} cannot import the edge: {response.text}")
    assert response.status_code in (200, 503), runtime.log.read_text()[-3000:]
