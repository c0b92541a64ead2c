"""Segment and playlist throughput of each edge deployment beside nginx.

    python -m benchmarks throughput [--seconds 5] [--rounds 3]

Every server under test runs pinned to core 0 and wrk, the load generator,
to core 1 (taskset), on loopback. One run measures, in interleaved rounds:

* nginx serving the files plainly and with ``secure_link``;
* nginx with auth_request, asking an edge (deploy/nginx-auth-request.conf);
* a plain Starlette ``FileResponse`` app with no checks ("plain"), the
  edge's file upstream with no gate and no middleware ("bare", the baseline
  of the gate's overhead), the edge with its file upstream, and the edge
  proxying from nginx over HTTP, each under hypercorn, uvicorn and granian.

Segments are 200 KB; the token is a URI token from a rewritten playlist of
a viewer who bought the content, so each request verifies an HMAC and reads
a cached entitlement. Playlists are opened with the session's Ed25519 JWT
and rewritten. Beside each rate, the CPU time that an app server's
processes used per request is read from ``/proc`` (Linux). Figures are
the median over rounds; ratios compare figures from the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from cryptography.fernet import Fernet

from benchmarks.nginx import (
    Nginx,
    auth_request_server,
    nginx_binary,
    secure_link_query,
    secure_link_server,
    static_server,
)
from benchmarks.propagation import free_port
from benchmarks.servers import SERVERS, ServerProcess, cpu_seconds, server_available
from segmentgate.stack import seed_catalog

REPO = Path(__file__).resolve().parent.parent
SEGMENT_BYTES = 200 * 1024
# Starts at 20 s, past the sample's 10 s preview: only a buyer may read it.
SEGMENT = "sample/v180/seg_010.ts"
PLAYLIST = "sample/v180/index.m3u8"
ADMIN_TOKEN = secrets.token_urlsafe(16)
SERVER_CPU, LOAD_CPU = 0, 1


@dataclass
class Target:
    """One URL to load, and the deployment and kind it stands for."""

    deployment: str
    kind: str
    url: str


@dataclass
class WrkResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    # CPU seconds that the server's processes used during the run, when the
    # deployment is one app server (not nginx).
    server_cpu: float | None = None


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _milliseconds(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_wrk(output: str) -> WrkResult:
    """Read requests/s, latency percentiles and errors from ``wrk --latency``."""
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", output)
    if rate is None:
        raise ValueError(f"wrk printed no rate:\n{output}")
    percentiles = dict(re.findall(r"\b(50|99)%\s+([0-9.]+(?:us|ms|s))\b", output))
    if len(percentiles) != 2:
        raise ValueError(f"wrk printed no latency distribution:\n{output}")
    errors = re.search(r"Non-2xx or 3xx responses:\s+([0-9]+)", output)
    socket_errors = re.search(
        r"Socket errors: connect ([0-9]+), read ([0-9]+), write ([0-9]+), "
        r"timeout ([0-9]+)",
        output,
    )
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(value) for value in socket_errors.groups())
    total = re.search(r"([0-9]+) requests in ", output)
    return WrkResult(
        float(rate.group(1)),
        _milliseconds(percentiles["50"]),
        _milliseconds(percentiles["99"]),
        failed,
        int(total.group(1)) if total else 0,
    )


def run_wrk(url: str, seconds: float, connections: int) -> WrkResult:
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
               "--latency", url]  # fmt: skip
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(LOAD_CPU), *command]
    result = subprocess.run(  # noqa: S603 - fixed arguments
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    return parse_wrk(result.stdout)


def missing_tools() -> list[str]:
    """Return the tools this part needs that are not installed."""
    missing = [tool for tool in ("wrk",) if shutil.which(tool) is None]
    if nginx_binary() is None:
        missing.append("nginx")
    return missing


def prepare_media(directory: Path) -> Path:
    """Copy the sample and grow one segment to 200 KB of real TS packets."""
    root = directory / "media"
    shutil.copytree(REPO / "media" / "sample", root / "sample")
    packets = (REPO / "media" / SEGMENT).read_bytes()
    repeated = packets * (SEGMENT_BYTES // len(packets) + 1)
    (root / SEGMENT).write_bytes(repeated[:SEGMENT_BYTES])
    return root


class Deployments:
    """Every server process of one run, started and stopped together."""

    def __init__(self, work: Path, servers: list[str], auth_server: str) -> None:
        self.work = work
        self.media = prepare_media(work)
        self.servers = servers
        self.auth_server = auth_server
        self.processes: list[ServerProcess] = []
        self.by_name: dict[str, ServerProcess] = {}
        self.nginx: Nginx | None = None
        self.ports: dict[str, int] = {}
        self.uri_secret = secrets.token_urlsafe(32)
        self.edge_token = secrets.token_urlsafe(16)
        self.secure_link_secret = secrets.token_urlsafe(16)

    def _port(self, name: str) -> int:
        self.ports[name] = free_port()
        return self.ports[name]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def start(self) -> None:
        for name in ("origin", "nginx-static", "nginx-secure-link",
                     "nginx-auth-request"):  # fmt: skip
            self._port(name)
        edges = [f"edge-file-{s}" for s in self.servers]
        edges += [f"edge-http-{s}" for s in self.servers]
        baselines = [f"{kind}-{s}" for kind in ("plain", "bare") for s in self.servers]
        for name in edges + baselines:
            self._port(name)
        self._start_origin(edges)
        auth_edge = self.url(f"edge-file-{self.auth_server}")
        self.nginx = Nginx(
            [
                static_server(self.ports["nginx-static"], self.media),
                secure_link_server(
                    self.ports["nginx-secure-link"],
                    self.media,
                    self.secure_link_secret,
                ),
                auth_request_server(
                    self.ports["nginx-auth-request"],
                    self.media,
                    urlsplit(auth_edge).netloc,
                ),
            ],
            cpu=SERVER_CPU,
        )
        self.nginx.wait_for(self.ports["nginx-static"])
        for server in self.servers:
            self._start_edge(f"edge-file-{server}", server, upstream=None)
            self._start_edge(
                f"edge-http-{server}", server, upstream=self.url("nginx-static")
            )
            for kind in ("plain", "bare"):
                self._start(
                    f"{kind}-{server}",
                    server,
                    f"benchmarks.apps:{kind}",
                    {"BENCH_MEDIA_ROOT": str(self.media)},
                    "/_health",
                )

    def _start(
        self, name: str, server: str, factory: str, env: dict[str, str], health: str
    ) -> None:
        cpu = LOAD_CPU if name == "origin" else SERVER_CPU
        process = ServerProcess(
            server, factory, self.ports[name], env, cpu=cpu,
            log=self.work / f"{name}.log",
        )  # fmt: skip
        self.processes.append(process)
        self.by_name[name] = process
        process.wait_healthy(health)

    def _start_origin(self, edges: list[str]) -> None:
        env = {
            "SEGMENTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{self.work}/origin.db",
            # Synthetic buyers share one address, so the risk engine only records.
            "SEGMENTGATE_RISK_MODE": "observe",
            "SEGMENTGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "SEGMENTGATE_EDGE_TOKEN": self.edge_token,
            "SEGMENTGATE_MASTER_KEY": Fernet.generate_key().decode(),
            "SEGMENTGATE_EDGE_PUBLIC_URL": self.url(edges[0]),
            "SEGMENTGATE_EDGE_URLS": ",".join(self.url(name) for name in edges),
        }
        self._start("origin", "hypercorn", "benchmarks.apps:origin", env, "/healthz")
        asyncio.run(seed_catalog(self.url("origin"), ADMIN_TOKEN))

    def _start_edge(self, name: str, server: str, upstream: str | None) -> None:
        env = {
            "SEGMENTGATE_EDGE_ORIGIN_URL": self.url("origin"),
            "SEGMENTGATE_EDGE_URI_SECRETS": self.uri_secret,
            "SEGMENTGATE_EDGE_ORIGIN_TOKEN": self.edge_token,
            "SEGMENTGATE_EDGE_EXTRA_HOSTS": "",
        }
        if upstream:
            env["SEGMENTGATE_EDGE_UPSTREAM_URL"] = upstream
        else:
            env["SEGMENTGATE_EDGE_MEDIA_ROOT"] = str(self.media)
        self._start(name, server, "benchmarks.apps:edge", env, "/_edge/healthz")

    def stop(self) -> None:
        for process in self.processes:
            process.stop()
        if self.nginx is not None:
            self.nginx.stop()


def buyer_tokens(origin_url: str) -> tuple[str, str]:
    """Create a viewer who bought the sample; return its playlist path+query."""
    with httpx.Client(base_url=origin_url, timeout=10) as client:
        body = client.post("/v1/viewers").raise_for_status().json()
        client.headers["Authorization"] = f"Bearer {body['viewer_token']}"
        purchase = client.post(
            "/v1/purchases",
            json={"content_id": "sample", "payment_method": "pm_card_visa"},
            headers={"Idempotency-Key": secrets.token_hex(16)},
        ).raise_for_status()
        if purchase.json()["status"] != "granted":
            raise RuntimeError(f"the benchmark purchase failed: {purchase.text}")
        session = client.post(
            "/v1/playback-sessions", json={"content_id": "sample"}
        ).raise_for_status()
    playlist = urlsplit(session.json()["playlist_url"])
    return playlist.path, playlist.query


def segment_query(edge_url: str, playlist_query: str) -> str:
    """Fetch the rewritten v180 playlist from an edge; return the segment's query."""
    name = SEGMENT.rsplit("/", 1)[1]
    deadline = time.monotonic() + 10
    while True:
        response = httpx.get(f"{edge_url}/{PLAYLIST}?{playlist_query}", timeout=10)
        response.raise_for_status()
        line = next(x for x in response.text.splitlines() if x.startswith(name))
        query = line.split("?", 1)[1]
        segment = httpx.get(f"{edge_url}/{SEGMENT}?{query}", timeout=10)
        # The edge learns of the purchase from the origin's push or poll.
        if segment.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if segment.status_code != 200 or len(segment.content) != SEGMENT_BYTES:
        raise RuntimeError(f"segment check failed: {segment.status_code}")
    return query


def targets(run: Deployments) -> list[Target]:
    """Build this round's URLs, with a fresh playback session."""
    _, playlist_query = buyer_tokens(run.url("origin"))
    expires = int(time.time()) + 3600
    found = [
        Target("nginx-static", "segment", f"{run.url('nginx-static')}/{SEGMENT}"),
        Target("nginx-static", "playlist", f"{run.url('nginx-static')}/{PLAYLIST}"),
    ]
    for kind, path in (("segment", SEGMENT), ("playlist", PLAYLIST)):
        query = secure_link_query(f"/{path}", run.secure_link_secret, expires)
        url = f"{run.url('nginx-secure-link')}/{path}?{query}"
        found.append(Target("nginx-secure-link", kind, url))
    auth_query = segment_query(run.url("nginx-auth-request"), playlist_query)
    found.append(
        Target(
            "nginx-auth-request",
            "segment",
            f"{run.url('nginx-auth-request')}/{SEGMENT}?{auth_query}",
        )
    )
    for server in run.servers:
        for baseline in ("plain", "bare"):
            name, url = f"{baseline}-{server}", run.url(f"{baseline}-{server}")
            found.append(Target(name, "segment", f"{url}/{SEGMENT}"))
            found.append(Target(name, "playlist", f"{url}/{PLAYLIST}"))
        for upstream in ("file", "http"):
            edge = run.url(f"edge-{upstream}-{server}")
            query = segment_query(edge, playlist_query)
            name = f"edge-{upstream}-{server}"
            found.append(Target(name, "segment", f"{edge}/{SEGMENT}?{query}"))
        edge = run.url(f"edge-file-{server}")
        found.append(
            Target(
                f"edge-file-{server}",
                "playlist",
                f"{edge}/{PLAYLIST}?{playlist_query}",
            )
        )
    return found


def _summarise(samples: dict[tuple[str, str], list[WrkResult]]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for (deployment, kind), results in samples.items():
        rates = [result.requests_per_second for result in results]
        figures[f"{kind}s_per_second.{deployment}"] = round(statistics.median(rates))
        figures[f"{kind}_p99_ms.{deployment}"] = round(
            statistics.median(result.p99_ms for result in results), 2
        )
        errors = sum(result.errors for result in results)
        if errors:
            figures[f"{kind}_errors.{deployment}"] = errors
        cpu = [
            result.server_cpu / result.requests * 1e6
            for result in results
            if result.server_cpu is not None and result.requests
        ]
        if cpu:
            figures[f"{kind}_cpu_us.{deployment}"] = round(statistics.median(cpu), 1)
    return figures


def ratios(figures: dict[str, Any], servers: list[str]) -> dict[str, float]:
    """Compute the ratios that the targets are stated in."""

    def rate(kind: str, deployment: str) -> float | None:
        value = figures.get(f"{kind}s_per_second.{deployment}")
        return float(value) if value else None

    def cpu(kind: str, deployment: str) -> float | None:
        value = figures.get(f"{kind}_cpu_us.{deployment}")
        return float(value) if value else None

    result: dict[str, float] = {}

    def put(name: str, top: float | None, bottom: float | None, *, less=False):
        if top is None or bottom is None:
            return
        result[name] = round(1 - top / bottom if less else top / bottom, 3)

    secure_link = rate("segment", "nginx-secure-link")
    put("nginx_secure_link_vs_static", secure_link, rate("segment", "nginx-static"))
    put("auth_request_vs_nginx_secure_link",
        rate("segment", "nginx-auth-request"), secure_link)  # fmt: skip
    for server in servers:
        file_rate = rate("segment", f"edge-file-{server}")
        put(f"gate_overhead.segment.{server}", file_rate,
            rate("segment", f"bare-{server}"), less=True)  # fmt: skip
        put(f"gate_overhead.playlist.{server}",
            rate("playlist", f"edge-file-{server}"),
            rate("playlist", f"bare-{server}"), less=True)  # fmt: skip
        # The same overhead in the server's CPU time per request, which a
        # busy machine disturbs less than the rate: edge / bare - 1.
        for kind in ("segment", "playlist"):
            edge_cpu = cpu(kind, f"edge-file-{server}")
            bare_cpu = cpu(kind, f"bare-{server}")
            if edge_cpu is not None and bare_cpu is not None:
                result[f"gate_overhead_cpu.{kind}.{server}"] = round(
                    edge_cpu / bare_cpu - 1, 3
                )
        put(f"edge_vs_plain_file_response.segment.{server}", file_rate,
            rate("segment", f"plain-{server}"))  # fmt: skip
        put(f"edge_vs_nginx_secure_link.{server}", file_rate, secure_link)
        put(f"proxy_vs_file.{server}",
            rate("segment", f"edge-http-{server}"), file_rate)  # fmt: skip
    supported = {
        name: value
        for name in [
            "nginx-auth-request",
            *(f"edge-{kind}-{s}" for kind in ("file", "http") for s in servers),
        ]
        if (value := rate("segment", name)) is not None
    }
    if supported and secure_link:
        fastest = max(supported, key=supported.__getitem__)
        result["fastest_deployment_vs_nginx_secure_link"] = round(
            supported[fastest] / secure_link, 3
        )
    return result


def _measure_target(
    run: Deployments, target: Target, args: argparse.Namespace
) -> WrkResult:
    """Load one target with wrk, adding its app server's CPU time if it has one."""
    process = run.by_name.get(target.deployment)
    before = cpu_seconds(process.pid) if process is not None else 0.0
    result = run_wrk(target.url, args.seconds, args.connections)
    if process is not None:
        result.server_cpu = cpu_seconds(process.pid) - before
    return result


def _cpu_text(result: WrkResult) -> str:
    if result.server_cpu is None or not result.requests:
        return ""
    return f" cpu {result.server_cpu / result.requests * 1e6:.0f} us/request"


def measure(args: argparse.Namespace, progress) -> dict[str, Any]:
    servers = [s for s in args.servers if server_available(s)]
    auth_server = next(
        (s for s in ("granian", "uvicorn", "hypercorn") if s in servers), servers[0]
    )
    with tempfile.TemporaryDirectory(prefix="segmentgate-bench-") as directory:
        # nginx workers run as an unprivileged user, who must read the media.
        Path(directory).chmod(0o755)
        run = Deployments(Path(directory), servers, auth_server)
        try:
            progress(f"starting nginx, the origin and {len(servers) * 4} app servers")
            run.start()
            samples: dict[tuple[str, str], list[WrkResult]] = {}
            for round_number in range(args.rounds):
                round_targets = [
                    target
                    for target in targets(run)
                    if not args.deployments or target.deployment in args.deployments
                ]
                for index, target in enumerate(round_targets):
                    result = _measure_target(run, target, args)
                    samples.setdefault((target.deployment, target.kind), []).append(
                        result
                    )
                    progress(
                        f"round {round_number + 1}/{args.rounds} "
                        f"[{index + 1}/{len(round_targets)}] {target.kind:8} "
                        f"{target.deployment:22} "
                        f"{result.requests_per_second:9.0f}/s "
                        f"p99 {result.p99_ms:.1f} ms errors {result.errors}"
                        + _cpu_text(result)
                    )
        finally:
            run.stop()
    figures = _summarise(samples)
    return {
        "seconds_per_sample": args.seconds,
        "rounds": args.rounds,
        "connections": args.connections,
        "servers": servers,
        "auth_request_edge_server": auth_server,
        **figures,
        "ratios": ratios(figures, servers),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="length of each wrk sample, in seconds")  # fmt: skip
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds over every deployment")  # fmt: skip
    parser.add_argument("--connections", type=int, default=32,
                        help="wrk connections kept open")  # fmt: skip
    parser.add_argument("--servers", nargs="+", default=list(SERVERS),
                        choices=SERVERS, help="ASGI servers to compare")  # fmt: skip
    parser.add_argument(
        "--deployments",
        nargs="*",
        default=[],
        help="load only these deployments, e.g. bare-granian edge-file-granian "
        "(default: every one)",
    )


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


if __name__ == "__main__":
    import json

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    print(json.dumps(measure(parser.parse_args(), _print)))
