"""``segmentgate dlq`` and ``segmentgate outbox``: event plumbing from a shell.

Both call the origin's admin API at ``SEGMENTGATE_ORIGIN_URL`` (default
``http://127.0.0.1:8100``) with a token of the ``events`` scope in
``SEGMENTGATE_ADMIN_TOKEN`` and print the origin's JSON response. Errors
print the problem details and exit with status 1.
"""

from __future__ import annotations

import argparse
from typing import Any

import httpx

from segmentgate.admin_cli import call_origin


def add_commands(commands: Any) -> None:
    """Register the ``dlq`` and ``outbox`` subcommands on ``commands``."""
    dlq = commands.add_parser(
        "dlq", help="list, show or replay webhook events that failed every retry"
    )
    dlq_actions = dlq.add_subparsers(dest="action", required=True)
    dlq_actions.add_parser("list", help="dead letters, newest first")
    show = dlq_actions.add_parser(
        "show", help="one dead letter with its raw payload and redacted headers"
    )
    show.add_argument("correlation_id", help="the id that 'dlq list' shows")
    replay = dlq_actions.add_parser(
        "replay", help="put the event back to pending and process it now"
    )
    replay.add_argument("correlation_id", help="the id that 'dlq list' shows")

    outbox = commands.add_parser(
        "outbox", help="show relay lag or push a range of events to edges again"
    )
    outbox_actions = outbox.add_subparsers(dest="action", required=True)
    outbox_actions.add_parser(
        "status", help="lag per edge, oldest undelivered event, parked events"
    )
    resend = outbox_actions.add_parser(
        "resend", help="push events FROM to TO (inclusive) to every edge again"
    )
    resend.add_argument("--from", dest="from_seq", type=int, required=True)
    resend.add_argument("--to", dest="to_seq", type=int, required=True)


def request(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    """Send the admin API request for a ``dlq`` or ``outbox`` command."""
    if args.command == "dlq":
        if args.action == "list":
            return client.get("/v1/admin/dlq")
        if args.action == "show":
            return client.get(f"/v1/admin/dlq/{args.correlation_id}")
        return client.post(f"/v1/admin/dlq/{args.correlation_id}/replay")
    if args.action == "status":
        return client.get("/v1/admin/outbox")
    body = {"from_seq": args.from_seq, "to_seq": args.to_seq}
    return client.post("/v1/admin/outbox/resend", json=body)


def run(args: argparse.Namespace, transport: httpx.BaseTransport | None = None) -> int:
    """Run a ``dlq`` or ``outbox`` command; return the exit status."""
    return call_origin(args, request, transport)
