"""Measure purchases per second to ``granted`` on SQLite and on PostgreSQL.

    python -m benchmarks.purchases [--purchases 400] [--concurrency 8]

Each run starts an origin in this process with the sandbox provider and
sends ``POST /v1/purchases`` through httpx's ASGI transport, so the figure
covers the HTTP handler, idempotency keys, the saga's recorded steps and
the store, but no network. Every viewer buys one content item; a share of
them (``--decline-share``) pays with ``pm_card_chargeDeclined``. Only the
purchase requests are timed; viewers are created beforehand.

PostgreSQL is the server at 127.0.0.1:5432 (user postgres, trust auth); the
run creates a database of its own and drops it afterwards. The last line of
output is one JSON object with both figures (null where a backend could not
run, with the reason).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from cryptography.fernet import Fernet
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import create_async_engine

from origin import OriginSettings, create_app
from origin.risk import RiskPolicy

POSTGRES_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"
ADMIN_TOKEN = "benchmark-admin-token"
CONTENT = {
    "title": "Benchmark film",
    "entry": "master.m3u8",
    "policy": {"kind": "purchase", "price": {"amount": "4.99", "currency": "EUR"}},
}


async def measure(database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the purchases against one store and return the counts and rates."""
    settings = OriginSettings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        master_key=Fernet.generate_key().decode("ascii"),
        recovery_interval=0,
        # Synthetic buyers share one address and a few test cards, which the
        # risk engine would block; it still assesses every purchase.
        risk=RiskPolicy(mode="observe"),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", timeout=60
        ) as client:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            response = await client.put(
                "/v1/admin/content/film", json=CONTENT, headers=admin
            )
            response.raise_for_status()
            viewers = [await _viewer(client) for _ in range(args.purchases)]
            declines = round(args.purchases * args.decline_share)
            methods = ["pm_card_chargeDeclined"] * declines
            methods += ["pm_card_visa"] * (args.purchases - declines)
            # Spread the declines over the run instead of front-loading them.
            methods = methods[::2] + methods[1::2]
            limit = asyncio.Semaphore(args.concurrency)

            async def buy(viewer: dict[str, str], method: str) -> str:
                async with limit:
                    answer = await client.post(
                        "/v1/purchases",
                        json={"content_id": "film", "payment_method": method},
                        headers={**viewer, "Idempotency-Key": str(uuid.uuid4())},
                    )
                answer.raise_for_status()
                return str(answer.json()["status"])

            counts: Counter[str] = Counter()
            engine = app.state.origin.engine.sync_engine

            def count_statement(*_: object) -> None:
                counts["statements"] += 1

            def count_commit(*_: object) -> None:
                counts["commits"] += 1

            event.listen(engine, "before_cursor_execute", count_statement)
            event.listen(engine, "commit", count_commit)
            started = time.perf_counter()
            statuses = await asyncio.gather(
                *(buy(v, m) for v, m in zip(viewers, methods, strict=True))
            )
            elapsed = time.perf_counter() - started
            event.remove(engine, "before_cursor_execute", count_statement)
            event.remove(engine, "commit", count_commit)
    granted = statuses.count("granted")
    return {
        "purchases": len(statuses),
        "granted": granted,
        "declined": statuses.count("declined"),
        "seconds": round(elapsed, 3),
        "granted_per_second": round(granted / elapsed, 1),
        "purchases_per_second": round(len(statuses) / elapsed, 1),
        # Everything the origin's store did while the purchases ran, the
        # outbox relay's reads and writes included.
        "statements_per_purchase": round(counts["statements"] / len(statuses), 1),
        "commits_per_purchase": round(counts["commits"] / len(statuses), 1),
    }


async def _viewer(client: httpx.AsyncClient) -> dict[str, str]:
    response = await client.post("/v1/viewers")
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['viewer_token']}"}


def sqlite_commit_ms(directory: Path, commits: int = 200) -> float:
    """Return the mean time of one small committed write, in milliseconds.

    The same pragmas as the origin's store (WAL, SQLite's default
    synchronous=FULL), on the same file system as the benchmark's database:
    each commit waits for the write-ahead log to reach the disk.
    """
    connection = sqlite3.connect(directory / "commit.db", isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("CREATE TABLE t (n INTEGER)")
        started = time.perf_counter()
        for number in range(commits):
            connection.execute("BEGIN")
            connection.execute("INSERT INTO t VALUES (?)", (number,))
            connection.execute("COMMIT")
        return (time.perf_counter() - started) / commits * 1000
    finally:
        connection.close()


async def run_sqlite(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="segmentgate-bench-") as directory:
        url = f"sqlite+aiosqlite:///{Path(directory) / 'origin.db'}"
        figures = await measure(url, args)
        commit_ms = sqlite_commit_ms(Path(directory))
    figures["commit_ms"] = round(commit_ms, 3)
    # One writer commits one transaction at a time: the purchases a second
    # that the disk allows, whatever the CPU does.
    figures["purchases_per_second_commit_bound"] = round(
        1000 / (commit_ms * figures["commits_per_purchase"]), 1
    )
    return figures


async def run_postgres(args: argparse.Namespace) -> dict[str, Any]:
    name = f"segmentgate_bench_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(f"{POSTGRES_SERVER}/test", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            return await measure(f"{POSTGRES_SERVER}/{name}", args)
        finally:
            async with admin.connect() as connection:
                await connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


async def main(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {
        "purchases": args.purchases,
        "concurrency": args.concurrency,
        "decline_share": args.decline_share,
    }
    for backend, run in (("sqlite", run_sqlite), ("postgresql", run_postgres)):
        try:
            figures = await run(args)
        except (OSError, OperationalError, DBAPIError) as exc:
            print(f"{backend}: not measured: {exc}", file=sys.stderr)
            result[f"{backend}_granted_per_second"] = None
            result[f"{backend}_error"] = str(exc)[:200]
            continue
        print(f"{backend}: {figures}", file=sys.stderr)
        result[f"{backend}_granted_per_second"] = figures["granted_per_second"]
        result[backend] = figures
    return result


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.purchases")
    parser.add_argument(
        "--purchases", type=int, default=400, help="purchases per backend"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="requests in flight at once"
    )
    parser.add_argument(
        "--decline-share",
        type=float,
        default=0.2,
        help="share of purchases paid with a card that is declined (0 to 1)",
    )
    return parser


if __name__ == "__main__":
    arguments = _parser().parse_args()
    if arguments.purchases < 1 or not 0 <= arguments.decline_share <= 1:
        sys.exit("--purchases must be positive and --decline-share within 0..1")
    print(json.dumps(asyncio.run(main(arguments))), flush=True)
