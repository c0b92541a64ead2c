"""Measure the edge's decisions and how fast the origin's changes reach a fleet.

    python -m benchmarks.propagation [--events 240] [--edges 3]

One run starts an origin (SQLite, sandbox payments) and a fleet of edges on
127.0.0.1 under hypercorn, all in this process, and reports:

* segment decisions per second of one edge with a warm cache, next to a
  baseline from the same run (one bare HMAC-SHA256 per decision, the least
  a signed-URL check can cost);
* the time from the origin's commit of a grant or a revoke to every edge of
  the fleet enforcing it, p50 and p99, over ``--events`` purchases and
  refunds spaced 20 ms apart, delivered by the origin's push;
* origin requests that one edge makes per 10,000 segment requests of one
  viewer, sent through its ASGI app, not counting the feed poll that runs
  every few seconds whatever the traffic.

Everything shares one CPU core and one event loop, so the latencies are an
upper bound for separate processes. The last line printed is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import secrets
import socket
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from edge import EdgeSettings
from edge import create_app as create_edge
from edge.gate import Credentials
from origin import OriginSettings
from origin import create_app as create_origin
from origin.risk import RiskPolicy
from segmentgate.serving import start_server, wait_until_healthy
from segmentgate.stack import seed_catalog
from shared.tokens import PlaybackClaims

MEDIA_ROOT = Path(__file__).resolve().parent.parent / "media"
ADMIN_TOKEN = "benchmark-admin"
SEGMENT = "/sample/v180/seg_010.ts"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


async def decisions_per_second(edge_app, count: int = 20_000) -> tuple[float, float]:
    """Return (gate decisions/s, bare HMAC verifications/s) for one segment."""
    edge = edge_app.state.edge
    claims = PlaybackClaims("ps_bench", "sample", "vr_bench", int(time.time()) + 600,
                            True, 0, 10.0)  # fmt: skip
    token = edge.signer.mint(edge.signer.session_part(claims), "s20000", SEGMENT)
    credentials = Credentials(query=(token,))
    await edge.gate.check(credentials, "sample", SEGMENT)  # warm the caches

    started = time.perf_counter()
    for _ in range(count):
        await edge.gate.check(credentials, "sample", SEGMENT)
    gate_rate = count / (time.perf_counter() - started)

    key, message = secrets.token_bytes(32), token.encode() + SEGMENT.encode()
    started = time.perf_counter()
    for _ in range(count):
        hmac.compare_digest(hmac.new(key, message, hashlib.sha256).digest(), key)
    hmac_rate = count / (time.perf_counter() - started)
    return gate_rate, hmac_rate


async def origin_requests_per_10k(
    edge_app, playlist_url: str, requests: int = 10_000
) -> float:
    """Play one viewer's segment ``requests`` times; count origin calls per 10k."""
    edge = edge_app.state.edge
    transport = httpx.ASGITransport(app=edge_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
        master = await client.get(httpx.URL(playlist_url).raw_path.decode())
        variant = next(
            line for line in master.text.splitlines() if line.startswith("v180")
        )
        media = await client.get(str(master.url.join(variant)))
        segment = next(
            line for line in media.text.splitlines() if line.startswith("seg_003")
        )
        url = str(media.url.join(segment))
        before = edge.link.requests.copy()
        for _ in range(requests):
            response = await client.get(url, headers={"Range": "bytes=0-187"})
            assert response.status_code == 206, response.status_code
        made = edge.link.requests - before
        # The feed poll runs on a timer whatever the traffic; count the rest.
        calls = sum(count for path, count in made.items() if path != "/v1/events")
        return calls * 10_000 / requests


async def run(
    event_count: int, edge_count: int, segment_requests: int = 10_000
) -> dict[str, object]:
    shutdown = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="segmentgate-bench-") as data:
        edge_ports = [free_port() for _ in range(edge_count)]
        edge_urls = [f"http://127.0.0.1:{port}" for port in edge_ports]
        origin_url = f"http://127.0.0.1:{free_port()}"
        edge_token = secrets.token_urlsafe(16)
        origin_app = create_origin(
            OriginSettings(
                database_url=f"sqlite+aiosqlite:///{data}/origin.db",
                admin_token=ADMIN_TOKEN,
                edge_public_url=edge_urls[0],
                edge_urls=tuple(edge_urls),
                edge_token=edge_token,
                # Synthetic buyers share one address and test card, which the
                # risk engine would block; it still assesses every purchase.
                risk=RiskPolicy(mode="observe"),
            )
        )
        servers = [start_server(origin_app, origin_url[7:], shutdown.wait)]
        await wait_until_healthy(f"{origin_url}/healthz")
        await seed_catalog(origin_url, ADMIN_TOKEN)
        secret = secrets.token_bytes(32)
        edge_apps = []
        for url in edge_urls:
            app = create_edge(
                EdgeSettings(origin_url=origin_url, media_root=MEDIA_ROOT,
                             uri_secrets=[secret], origin_token=edge_token)
            )  # fmt: skip
            edge_apps.append(app)
            servers.append(start_server(app, url[7:], shutdown.wait))
            await wait_until_healthy(f"{url}/_edge/healthz")

        async with httpx.AsyncClient(base_url=origin_url, timeout=10) as client:
            tokens = []
            for _ in range(20):
                body = (await client.post("/v1/viewers")).json()
                tokens.append(body["viewer_token"])
            owned: dict[int, str] = {}
            for index in range(event_count):
                viewer = index % len(tokens)
                headers = {
                    "Authorization": f"Bearer {tokens[viewer]}",
                    "Idempotency-Key": str(uuid.uuid4()),
                }
                if viewer in owned:
                    purchase_id = owned.pop(viewer)
                    response = await client.post(
                        f"/v1/purchases/{purchase_id}/refund", headers=headers
                    )
                else:
                    response = await client.post(
                        "/v1/purchases",
                        json={"content_id": "sample", "payment_method": "pm_card_visa"},
                        headers=headers,
                    )
                    owned[viewer] = response.json()["purchase_id"]
                response.raise_for_status()
                await asyncio.sleep(0.02)
            session = await client.post(
                "/v1/playback-sessions",
                json={"content_id": "sample"},
                headers={"Authorization": f"Bearer {tokens[0]}"},
            )
            playlist_url = session.json()["playlist_url"]

        followers = [app.state.edge.events for app in edge_apps]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            applied = [{seq for seq, _, _ in f.applied} for f in followers]
            if all(len(seqs) >= event_count for seqs in applied):
                break
            await asyncio.sleep(0.05)
        by_seq: dict[int, list[float]] = {}
        for follower in followers:
            for seq, occurred_at, applied_at in follower.applied:
                by_seq.setdefault(seq, []).append(applied_at - occurred_at)
        fleet_lags = [
            max(lags) * 1000 for lags in by_seq.values() if len(lags) == edge_count
        ]

        gate_rate, hmac_rate = await decisions_per_second(edge_apps[0])
        origin_calls = await origin_requests_per_10k(
            edge_apps[0], playlist_url, segment_requests
        )

        shutdown.set()
        await asyncio.gather(*servers)

    return {
        "segment_decisions_per_second": round(gate_rate),
        "bare_hmac_per_second": round(hmac_rate),
        "decision_cost_vs_bare_hmac": round(hmac_rate / gate_rate, 2),
        "fleet_edges": edge_count,
        "events_measured": len(fleet_lags),
        "fleet_enforced_ms_p50": round(statistics.median(fleet_lags), 2),
        "fleet_enforced_ms_p99": round(percentile(fleet_lags, 0.99), 2),
        "origin_requests_per_10k_segments": origin_calls,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=240, help="grants and revokes")
    parser.add_argument("--edges", type=int, default=3, help="edges in the fleet")
    args = parser.parse_args()
    result = asyncio.run(run(args.events, args.edges))
    for name, value in result.items():
        print(f"{name:36} {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
