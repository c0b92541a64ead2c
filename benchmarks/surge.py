"""Purchase to playback under a surge: time from purchase to first unlocked segment.

    python -m benchmarks surge --set surge.rates=5,50 --set surge.seconds=10

The origin (SQLite, sandbox payments) and the edge run under hypercorn in
their own processes, as ``segmentgate origin`` and ``segmentgate edge`` do.
On a machine with two cores or more, the origin runs alone on core 0 and
the edge and this load generator share core 1 (taskset and
``os.sched_setaffinity``), so the origin's figures are those of one core.
Viewers are created and open a preview beforehand. Then, for ``--seconds``,
buyers start at each of ``--rates`` a second: a share of them is declined first and
retries with another card. Each buyer polls a segment past the preview
every 20 ms from the purchase request until the edge sends it. A share of
buyers then gets a refund and polls until the segment is refused again.
Watchers and unlocked buyers keep fetching a segment every 2 seconds, as
players do. The CPU time of the origin, the edge and this load generator
over the surge shows whether one of them was CPU-bound.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import statistics
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet

from benchmarks.propagation import free_port, percentile
from benchmarks.servers import ServerProcess
from segmentgate.stack import seed_catalog

REPO = Path(__file__).resolve().parent.parent
LOCKED = "seg_010.ts"
PREVIEW = "seg_001.ts"
POLL_SECONDS = 0.02
Progress = Callable[[str], None]
PLAY_SECONDS = 2.0


@dataclass
class Viewer:
    headers: dict[str, str]
    locked_url: str = ""
    preview_url: str = ""


@dataclass
class Tally:
    unlock_ms: list[float] = field(default_factory=list)
    purchase_ms: list[float] = field(default_factory=list)
    revoke_ms: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    declined: int = 0
    granted: int = 0
    segments: int = 0


def _cpu_seconds(pid: int) -> float:
    """Return the CPU seconds of ``pid`` and its live child processes.

    Servers such as hypercorn run the app in a child of the process started.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of /proc/PID/stat (proc(5)).
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            total += _cpu_seconds(int(child))
    return total


async def _viewer(client: httpx.AsyncClient, origin: str) -> Viewer:
    body = (await client.post(f"{origin}/v1/viewers")).raise_for_status().json()
    viewer = Viewer({"Authorization": f"Bearer {body['viewer_token']}"})
    session = await client.post(
        f"{origin}/v1/playback-sessions",
        json={"content_id": "sample"},
        headers=viewer.headers,
    )
    master = await client.get(session.raise_for_status().json()["playlist_url"])
    variants = master.raise_for_status().text.splitlines()
    variant = next((x for x in variants if x.startswith("v180/")), None)
    if variant is None:
        raise RuntimeError(f"the edge's master playlist has no v180: {master.text!r}")
    media = await client.get(master.url.join(variant))
    for line in media.raise_for_status().text.splitlines():
        if line.startswith(LOCKED):
            viewer.locked_url = str(media.url.join(line))
        elif line.startswith(PREVIEW):
            viewer.preview_url = str(media.url.join(line))
    return viewer


class Surge:
    """One surge against a running origin and edge."""

    def __init__(self, origin: str, args: argparse.Namespace) -> None:
        self.origin = origin
        self.args = args
        self.tally = Tally()
        # A seeded generator, so runs choose the same buyers to decline.
        self.random = random.Random(1)  # noqa: S311 - not for security
        self.ends_at = 0.0
        self.origin_client: httpx.AsyncClient  # set by run()

    async def _get(self, client: httpx.AsyncClient, url: str) -> int:
        try:
            response = await client.get(url)
        except httpx.HTTPError as exc:
            self.tally.errors[f"segment {type(exc).__name__}"] += 1
            return 0
        self.tally.segments += 1
        if response.status_code >= 500:
            self.tally.errors[f"segment {response.status_code}"] += 1
        return response.status_code

    async def _purchase(
        self, client: httpx.AsyncClient, viewer: Viewer, method: str
    ) -> dict[str, Any] | None:
        try:
            response = await self.origin_client.post(
                f"{self.origin}/v1/purchases",
                json={"content_id": "sample", "payment_method": method},
                headers={**viewer.headers, "Idempotency-Key": str(uuid.uuid4())},
            )
        except httpx.HTTPError as exc:
            self.tally.errors[f"purchase {type(exc).__name__}"] += 1
            return None
        if response.status_code not in (201, 202):
            self.tally.errors[f"purchase {response.status_code}"] += 1
            return None
        return dict(response.json())

    async def _wait_for(self, client: httpx.AsyncClient, url: str, status: int) -> bool:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await self._get(client, url) == status:
                return True
            await asyncio.sleep(POLL_SECONDS)
        self.tally.errors[f"no {status} within 30 s"] += 1
        return False

    async def buyer(self, client: httpx.AsyncClient, viewer: Viewer) -> None:
        if self.random.random() < self.args.decline_share:
            declined = await self._purchase(client, viewer, "pm_card_chargeDeclined")
            if declined is not None and declined["status"] == "declined":
                self.tally.declined += 1
            await asyncio.sleep(0.2)  # the viewer types in another card
        started = time.monotonic()
        purchase = await self._purchase(client, viewer, "pm_card_visa")
        if purchase is None:
            return
        if purchase["status"] != "granted":
            self.tally.errors[f"purchase {purchase['status']}"] += 1
            return
        self.tally.purchase_ms.append((time.monotonic() - started) * 1000)
        self.tally.granted += 1
        if not await self._wait_for(client, viewer.locked_url, 200):
            return
        self.tally.unlock_ms.append((time.monotonic() - started) * 1000)
        if self.random.random() < self.args.refund_share:
            await self._refund(client, viewer, str(purchase["purchase_id"]))
        else:
            await self.play(client, viewer.locked_url)

    async def _refund(
        self, client: httpx.AsyncClient, viewer: Viewer, purchase_id: str
    ) -> None:
        started = time.monotonic()
        try:
            response = await self.origin_client.post(
                f"{self.origin}/v1/purchases/{purchase_id}/refund",
                headers={**viewer.headers, "Idempotency-Key": str(uuid.uuid4())},
            )
        except httpx.HTTPError as exc:
            self.tally.errors[f"refund {type(exc).__name__}"] += 1
            return
        if response.status_code not in (200, 202):
            self.tally.errors[f"refund {response.status_code}"] += 1
            return
        if await self._wait_for(client, viewer.locked_url, 402):
            self.tally.revoke_ms.append((time.monotonic() - started) * 1000)

    async def play(self, client: httpx.AsyncClient, url: str) -> None:
        await asyncio.sleep(self.random.random() * PLAY_SECONDS)
        while time.monotonic() < self.ends_at:
            await self._get(client, url)
            await asyncio.sleep(PLAY_SECONDS)

    async def run(
        self, buyers: list[Viewer], watchers: list[Viewer], progress
    ) -> float:
        # Purchases and segments use separate pools, so a slow origin does
        # not hold up the players' segment requests.
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
        async with (
            httpx.AsyncClient(timeout=60, limits=limits) as client,
            httpx.AsyncClient(timeout=60, limits=limits) as self.origin_client,
        ):
            started = time.monotonic()
            self.ends_at = started + self.args.seconds
            tasks = [asyncio.create_task(self.play(client, w.preview_url))
                     for w in watchers]  # fmt: skip
            for index, viewer in enumerate(buyers):
                delay = started + index / self.args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self.buyer(client, viewer)))
                if index % max(1, int(self.args.rate)) == 0:
                    progress(
                        f"surge {time.monotonic() - started:5.1f} s: "
                        f"{index}/{len(buyers)} buyers started, "
                        f"{len(self.tally.unlock_ms)} unlocked, "
                        f"errors {sum(self.tally.errors.values())}"
                    )
            offered_seconds = time.monotonic() - started
            await asyncio.gather(*tasks)
        return offered_seconds


async def _prepare(origin: str, count: int) -> list[Viewer]:
    async with httpx.AsyncClient(timeout=30) as client:
        limit = asyncio.Semaphore(16)

        async def one() -> Viewer:
            async with limit:
                return await _viewer(client, origin)

        return list(await asyncio.gather(*(one() for _ in range(count))))


def _cores() -> tuple[int | None, int | None]:
    """Return the origin's core and the edge's and load generator's core."""
    if (os.cpu_count() or 1) < 2 or not hasattr(os, "sched_setaffinity"):
        return None, None
    return 0, 1


def _pin(cpu: int | None) -> set[int] | None:
    """Run this process on ``cpu``; return the cores it ran on before."""
    if cpu is None:
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return before


def _unpin(before: set[int] | None) -> None:
    if before is not None:
        os.sched_setaffinity(0, before)


def _summary(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None}
    return {
        "p50": round(statistics.median(values), 1),
        "p99": round(percentile(values, 0.99), 1),
    }


def measure(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Run one surge per rate in ``args.rates``, each with a new origin and edge."""
    by_rate: dict[str, Any] = {}
    for rate in args.rates:
        progress(f"surge at {rate:g} purchases a second")
        by_rate[f"{rate:g}"] = _measure_rate(
            argparse.Namespace(**{**vars(args), "rate": rate}), progress
        )
    return {"rates": args.rates, "by_rate": by_rate}


def _measure_rate(args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    buyer_count = max(1, round(args.rate * args.seconds))
    with tempfile.TemporaryDirectory(prefix="segmentgate-bench-") as directory:
        work = Path(directory)
        origin_port, edge_port = free_port(), free_port()
        edge_url = f"http://127.0.0.1:{edge_port}"
        edge_token, admin_token = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
        origin_cpu, load_cpu = _cores()
        origin = ServerProcess("hypercorn", "benchmarks.apps:origin", origin_port, {
            "SEGMENTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{work}/origin.db",
            # Synthetic buyers share one address, so the risk engine only records.
            "SEGMENTGATE_RISK_MODE": "observe",
            "SEGMENTGATE_ADMIN_TOKEN": admin_token,
            "SEGMENTGATE_EDGE_TOKEN": edge_token,
            "SEGMENTGATE_MASTER_KEY": Fernet.generate_key().decode(),
            "SEGMENTGATE_EDGE_PUBLIC_URL": edge_url,
            "SEGMENTGATE_EDGE_URLS": edge_url,
        }, cpu=origin_cpu, log=work / "origin.log")  # fmt: skip
        edge = ServerProcess("hypercorn", "benchmarks.apps:edge", edge_port, {
            "SEGMENTGATE_EDGE_ORIGIN_URL": origin.url,
            "SEGMENTGATE_EDGE_MEDIA_ROOT": str(REPO / "media"),
            "SEGMENTGATE_EDGE_URI_SECRETS": secrets.token_urlsafe(32),
            "SEGMENTGATE_EDGE_ORIGIN_TOKEN": edge_token,
        }, cpu=load_cpu, log=work / "edge.log")  # fmt: skip
        try:
            origin.wait_healthy("/healthz")
            edge.wait_healthy("/_edge/healthz")
            asyncio.run(seed_catalog(origin.url, admin_token))
            progress(f"creating {buyer_count} buyers and {args.watchers} watchers")
            viewers = asyncio.run(_prepare(origin.url, buyer_count + args.watchers))
            surge = Surge(origin.url, args)
            pinned = _pin(load_cpu)
            try:
                cpu_before = {"origin": _cpu_seconds(origin.pid),
                              "edge": _cpu_seconds(edge.pid),
                              "load generator": time.process_time()}  # fmt: skip
                wall = time.monotonic()
                offered = asyncio.run(
                    surge.run(viewers[:buyer_count], viewers[buyer_count:], progress)
                )
                wall = time.monotonic() - wall
                cpu_after = {"origin": _cpu_seconds(origin.pid),
                             "edge": _cpu_seconds(edge.pid),
                             "load generator": time.process_time()}  # fmt: skip
            finally:
                _unpin(pinned)
        finally:
            edge.stop()
            origin.stop()
    tally = surge.tally
    cpu = {name: round((cpu_after[name] - cpu_before[name]) / wall, 3)
           for name in cpu_before}  # fmt: skip
    busiest = max(cpu, key=cpu.__getitem__)
    unlock, revoke = _summary(tally.unlock_ms), _summary(tally.revoke_ms)
    purchase = _summary(tally.purchase_ms)
    return {
        "offered_purchases_per_second": round(buyer_count / offered, 1),
        "buyers": buyer_count,
        "watchers": args.watchers,
        "granted": tally.granted,
        "declined_then_retried": tally.declined,
        # The purchase request alone, until the origin returned "granted".
        "purchase_ms_p50": purchase["p50"],
        "purchase_ms_p99": purchase["p99"],
        "unlock_ms_p50": unlock["p50"],
        "unlock_ms_p99": unlock["p99"],
        "revokes": len(tally.revoke_ms),
        "revoke_ms_p50": revoke["p50"],
        "revoke_ms_p99": revoke["p99"],
        "segment_requests": tally.segments,
        "errors": dict(tally.errors),
        "cpu_cores_used": cpu,
        # A process near one full core is CPU-bound; if none is, the wait is
        # elsewhere (the purchases part measures the store's commits).
        "cpu_bound_process": busiest if cpu[busiest] >= 0.85 else None,
        "unlock_ms": [round(value, 1) for value in tally.unlock_ms],
        "revoke_ms": [round(value, 1) for value in tally.revoke_ms],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rates", type=float, nargs="+", default=[5.0, 50.0],
                        help="purchases a second, one surge each")  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="length of the surge, in seconds")  # fmt: skip
    parser.add_argument("--watchers", type=int, default=300,
                        help="viewers who only watch the preview")  # fmt: skip
    parser.add_argument("--decline-share", type=float, default=0.2,
                        help="share of buyers declined once before paying")  # fmt: skip
    parser.add_argument("--refund-share", type=float, default=0.2,
                        help="share of buyers refunded after the unlock")  # fmt: skip
