"""The admin API from a shell: ``keys``, ``catalog`` and ``webhook-secrets``.

They talk to the origin at ``SEGMENTGATE_ORIGIN_URL`` (default
``http://127.0.0.1:8100``) with the admin token in ``SEGMENTGATE_ADMIN_TOKEN``
and print the origin's JSON response. Errors print the problem details and
exit with status 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx


def add_commands(commands: Any) -> None:
    """Register the ``keys`` and ``catalog`` subcommands on ``commands``."""
    keys = commands.add_parser("keys", help="list, rotate or revoke signing keys")
    key_actions = keys.add_subparsers(dest="action", required=True)
    key_actions.add_parser("list", help="every key with its state")
    key_actions.add_parser(
        "rotate", help="publish a new key; it signs after the publish delay"
    )
    revoke = key_actions.add_parser(
        "revoke", help="stop accepting a key at once, everywhere"
    )
    revoke.add_argument("kid", help="the key id, as 'keys list' shows it")

    secrets = commands.add_parser(
        "webhook-secrets", help="list, add or remove payment providers' webhook secrets"
    )
    secret_actions = secrets.add_subparsers(dest="action", required=True)
    secret_actions.add_parser(
        "list", help="every stored secret, by its last characters"
    )
    add = secret_actions.add_parser(
        "add", help="add a secret; the provider's older secrets stay valid"
    )
    add.add_argument("provider", help="for example stripe or sandbox")
    add.add_argument("secret", help="the signing secret, such as whsec_...")
    remove = secret_actions.add_parser("remove", help="stop accepting a secret")
    remove.add_argument("secret_id", help="the id that 'webhook-secrets list' shows")

    catalog = commands.add_parser("catalog", help="list, publish or withdraw content")
    catalog_actions = catalog.add_subparsers(dest="action", required=True)
    catalog_actions.add_parser("list", help="the published content items")
    put = catalog_actions.add_parser("put", help="create or replace a content item")
    put.add_argument("content_id")
    put.add_argument("--title", required=True)
    put.add_argument("--entry", default="master.m3u8", help="entry playlist")
    put.add_argument(
        "--price", nargs=2, metavar=("AMOUNT", "CURRENCY"),
        help="sell it, for example --price 4.99 EUR; without it the item is free",
    )  # fmt: skip
    put.add_argument("--preview", type=float, default=0, help="preview seconds")
    put.add_argument(
        "--offline", choices=("open", "closed"),
        help="what edges do once they lose the origin past their grace period",
    )  # fmt: skip
    withdraw = catalog_actions.add_parser("withdraw", help="stop serving an item")
    withdraw.add_argument("content_id")


def run(args: argparse.Namespace) -> int:
    """Run a ``keys``, ``catalog`` or ``webhook-secrets`` command."""
    return call_origin(args, _request)


def call_origin(
    args: argparse.Namespace,
    request: Callable[[httpx.Client, argparse.Namespace], httpx.Response],
    transport: httpx.BaseTransport | None = None,
) -> int:
    """Send one admin request to the origin, print its JSON; return the exit status."""
    token = os.environ.get("SEGMENTGATE_ADMIN_TOKEN", "")
    if not token:
        print("error: set SEGMENTGATE_ADMIN_TOKEN to an admin token", file=sys.stderr)
        return 2
    base_url = os.environ.get("SEGMENTGATE_ORIGIN_URL", "http://127.0.0.1:8100")
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(
        base_url=base_url, headers=headers, timeout=30, transport=transport
    ) as client:
        try:
            response = request(client, args)
        except httpx.HTTPError as exc:
            print(f"error: the origin at {base_url} failed: {exc}", file=sys.stderr)
            return 1
    if response.status_code == 204:
        print(json.dumps({"status": "done"}))
        return 0
    print(json.dumps(response.json(), indent=2))
    return 0 if response.is_success else 1


def _request(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    once = {"Idempotency-Key": str(uuid.uuid4())}
    if args.command == "keys":
        if args.action == "list":
            return client.get("/v1/admin/keys")
        if args.action == "rotate":
            return client.post("/v1/admin/keys/rotate", headers=once)
        kid = quote(args.kid, safe="")
        return client.post(f"/v1/admin/keys/{kid}/revoke", headers=once)
    if args.command == "webhook-secrets":
        if args.action == "list":
            return client.get("/v1/admin/webhook-secrets")
        if args.action == "add":
            body = {"provider": args.provider, "secret": args.secret}
            return client.post("/v1/admin/webhook-secrets", json=body, headers=once)
        secret_id = quote(args.secret_id, safe="")
        return client.delete(f"/v1/admin/webhook-secrets/{secret_id}")
    if args.action == "list":
        return client.get("/v1/catalog")
    if args.action == "withdraw":
        return client.delete(f"/v1/admin/content/{quote(args.content_id, safe='')}")
    policy: dict[str, Any] = {"kind": "free"}
    if args.price:
        amount, currency = args.price
        policy = {
            "kind": "purchase",
            "price": {"amount": amount, "currency": currency},
            "preview_seconds": args.preview,
        }
    if args.offline:
        policy["offline"] = args.offline
    body = {"title": args.title, "entry": args.entry, "policy": policy}
    return client.put(f"/v1/admin/content/{quote(args.content_id, safe='')}", json=body)
