"""The ``segmentgate`` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import tempfile
from pathlib import Path

import httpx

from segmentgate.admin_cli import add_commands as add_admin_commands
from segmentgate.admin_cli import run as run_admin_command
from segmentgate.events_cli import add_commands as add_events_commands
from segmentgate.events_cli import run as run_events_command
from segmentgate.risk_cli import add_commands as add_risk_commands
from segmentgate.risk_cli import run as run_risk_command
from segmentgate.serving import start_server
from segmentgate.stack import Stack
from shared.logs import LEVEL_VARIABLE, configure_logging

BUNDLED_MEDIA = Path(__file__).resolve().parent.parent / "media"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segmentgate", description="Paid HLS video behind a gating edge."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser(
        "demo", help="run an origin and an edge with the bundled sample"
    )
    demo.add_argument(
        "--media",
        type=Path,
        default=BUNDLED_MEDIA,
        help="media root holding sample/ and trailer/ (default: the bundled media)",
    )
    demo.add_argument(
        "--data", type=Path, help="directory for the SQLite store (default: temporary)"
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    demo.add_argument("--origin-port", type=int, default=8100, help="origin port")
    demo.add_argument("--edge-port", type=int, default=8000, help="edge port")

    for name, help_text in (
        ("origin", "run the origin, configured by SEGMENTGATE_* variables"),
        ("edge", "run the edge, configured by SEGMENTGATE_EDGE_* variables"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--bind", default=None, help="host:port to listen on")
        if name == "origin":
            command.add_argument(
                "action",
                nargs="?",
                choices=["migrate"],
                help="migrate: upgrade the store at SEGMENTGATE_DATABASE_URL to "
                "the newest schema and exit (the origin also does this at start)",
            )

    mock = commands.add_parser(
        "mock",
        help="serve the examples of docs/openapi.yaml for every operation of the "
        "origin and the edge, to integrate before the real services run",
    )
    mock.add_argument("--host", default="127.0.0.1", help="address to listen on")
    mock.add_argument("--port", type=int, default=8300, help="port (default: 8300)")

    add_admin_commands(commands)
    add_events_commands(commands)
    add_risk_commands(commands)

    reconcile = commands.add_parser(
        "reconcile",
        help="compare each payment in the origin's store with the payment "
        "provider, repair drift and print a JSON report of the changes",
    )
    reconcile.add_argument(
        "--window-days",
        type=float,
        default=30.0,
        help="also check settled purchases updated within this many days "
        "(default: 30); running purchases are always checked",
    )
    return parser


def _instructions(stack: Stack, viewer_token: str, playlist_url: str) -> str:
    origin, edge = stack.origin_url, stack.edge_url
    return f"""
Storefront: {origin}/   (open it in a browser)

segmentgate demo is running.
  origin  {origin}   (catalog: {origin}/v1/catalog)
  edge    {edge}   (health: {edge}/_edge/healthz)
  admin token: {stack.admin_token}
  status page: {origin}/status#token={stack.admin_token}

A demo viewer and a preview session of "sample" are ready:

  VT='{viewer_token}'
  URL='{playlist_url}'

Watch the 10 s preview; after it the edge answers 402 Payment Required:

  ffplay "$URL"      # or: ffmpeg -i "$URL" -map 0 -c copy -f null -

Buy it with the sandbox card (pm_card_chargeDeclined is declined, and
pm_card_authenticationRequired waits for 3-D Secure at next_action.url):

  curl -s -X POST {origin}/v1/purchases -H "Authorization: Bearer $VT" \\
       -H "Content-Type: application/json" -H "Idempotency-Key: demo-1" \\
       -d '{{"content_id": "sample", "payment_method": "pm_card_visa"}}'

With pm_card_authenticationRequired the purchase returns 202 "requires_action".
Approve it on the issuer's page at its next_action.url, in a browser or with
curl (result=fail declines it):

  curl -s -X POST {origin}/v1/sandbox/authentications/sa_... -d result=approve

The same URL now plays in full. Refund with the purchase_id from that response,
and within a second the URL is a preview again:

  curl -s -X POST {origin}/v1/purchases/PURCHASE_ID/refund \\
       -H "Authorization: Bearer $VT"

A new session for any content:

  curl -s -X POST {origin}/v1/playback-sessions -H "Authorization: Bearer $VT" \\
       -H "Content-Type: application/json" -d '{{"content_id": "trailer"}}'

ffmpeg exits with status 0 when a preview ends; the 402 responses show up as
"HTTP error 402" lines in its log.

Press Ctrl+C to stop.
"""


async def _demo_viewer(stack: Stack) -> tuple[str, str]:
    """Create a viewer and a preview session of the sample."""
    async with httpx.AsyncClient(base_url=stack.origin_url) as client:
        viewer = (await client.post("/v1/viewers")).raise_for_status().json()
        token = viewer["viewer_token"]
        session = await client.post(
            "/v1/playback-sessions",
            json={"content_id": "sample"},
            headers={"Authorization": f"Bearer {token}"},
        )
        return token, session.raise_for_status().json()["playlist_url"]


async def _run_demo(args: argparse.Namespace) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.set)
    with tempfile.TemporaryDirectory(prefix="segmentgate-demo-") as temporary:
        data_dir = args.data or Path(temporary)
        data_dir.mkdir(parents=True, exist_ok=True)
        stack = Stack(
            media_root=args.media,
            data_dir=data_dir,
            host=args.host,
            origin_port=args.origin_port,
            edge_port=args.edge_port,
            admin_token=os.environ.get("SEGMENTGATE_ADMIN_TOKEN", ""),
        )
        runner = asyncio.create_task(stack.run(shutdown))
        ready = asyncio.create_task(stack.ready.wait())
        done, _ = await asyncio.wait(
            {runner, ready}, return_when=asyncio.FIRST_COMPLETED
        )
        if runner in done:
            runner.result()
            return
        viewer_token, playlist_url = await _demo_viewer(stack)
        print(_instructions(stack, viewer_token, playlist_url), flush=True)
        await runner


async def _run_one(command: str, bind: str | None) -> None:
    shutdown = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, shutdown.set)
    if command == "mock":
        from segmentgate.mock import create_mock_app

        app = create_mock_app()
        default_bind = "127.0.0.1:8300"
    elif command == "origin":
        from origin import OriginSettings, create_app

        settings = OriginSettings.from_env()
        if settings.admin_token_generated:
            print(f"admin token: {settings.admin_token}", flush=True)
        app = create_app(settings)
        default_bind = "127.0.0.1:8100"
    else:
        from edge import EdgeSettings
        from edge import create_app as create_edge

        app = create_edge(EdgeSettings.from_env())
        default_bind = "127.0.0.1:8000"
    await start_server(app, bind or default_bind, shutdown.wait)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    if not os.environ.get(LEVEL_VARIABLE):
        # One line per media request or origin call is too much by default.
        logging.getLogger("segmentgate.edge.access").setLevel(logging.WARNING)
        logging.getLogger("httpx").setLevel(logging.WARNING)
    if args.command == "demo":
        if not (args.media / "sample" / "master.m3u8").is_file():
            print(f"error: no sample/master.m3u8 under {args.media}; pass --media DIR")
            return 2
        asyncio.run(_run_demo(args))
    elif args.command in ("keys", "catalog", "webhook-secrets"):
        return run_admin_command(args)
    elif args.command in ("dlq", "outbox"):
        return run_events_command(args)
    elif args.command == "risk":
        return run_risk_command(args)
    elif args.command == "reconcile":
        from origin import OriginSettings
        from origin.reconcile import format_report, run_reconciliation

        report = asyncio.run(
            run_reconciliation(OriginSettings.from_env(), args.window_days * 86400)
        )
        print(format_report(report), flush=True)
    elif args.command == "origin" and args.action == "migrate":
        from origin import OriginSettings
        from origin.migrations import migrate_store

        revision = asyncio.run(migrate_store(OriginSettings.from_env().database_url))
        print(f"store is at schema revision {revision}", flush=True)
    elif args.command == "mock":
        bind = f"{args.host}:{args.port}"
        print(f"mock of the origin and the edge on http://{bind}", flush=True)
        asyncio.run(_run_one("mock", bind))
    else:
        asyncio.run(_run_one(args.command, args.bind))
    return 0
