"""``segmentgate risk``: the risk engine's assessments from a shell.

It calls the origin's admin API at ``SEGMENTGATE_ORIGIN_URL`` (default
``http://127.0.0.1:8100``) with a token of the ``risk`` scope in
``SEGMENTGATE_ADMIN_TOKEN`` and prints the origin's JSON response. Errors
print the problem details and exit with status 1.
"""

from __future__ import annotations

import argparse
from typing import Any
from urllib.parse import quote

import httpx

from segmentgate.admin_cli import call_origin


def add_commands(commands: Any) -> None:
    """Register the ``risk`` subcommand on ``commands``."""
    risk = commands.add_parser(
        "risk", help="list or show the risk engine's assessments of purchases"
    )
    actions = risk.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="assessments, newest first")
    listing.add_argument("--decision", choices=("allow", "challenge", "block"))
    listing.add_argument("--viewer", help="only this viewer id")
    listing.add_argument("--purchase", help="only this purchase id")
    listing.add_argument(
        "--limit", type=int, default=50, help="at most this many (1 to 500)"
    )
    show = actions.add_parser("show", help="one assessment with reasons and signals")
    show.add_argument("assessment_id", help="the id that 'risk list' shows")
    actions.add_parser("policy", help="the mode and thresholds in force")


def request(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    """Send the admin API request for a ``risk`` command."""
    if args.action == "show":
        assessment_id = quote(args.assessment_id, safe="")
        return client.get(f"/v1/admin/risk/assessments/{assessment_id}")
    if args.action == "policy":
        return client.get("/v1/admin/risk/policy")
    filters = {
        "decision": args.decision,
        "viewer_id": args.viewer,
        "purchase_id": args.purchase,
        "limit": str(args.limit),
    }
    params = {name: value for name, value in filters.items() if value is not None}
    return client.get("/v1/admin/risk/assessments", params=params)


def run(args: argparse.Namespace, transport: httpx.BaseTransport | None = None) -> int:
    """Run a ``risk`` command; return the exit status."""
    return call_origin(args, request, transport)
