"""An origin and an edge wired to each other, as ``segmentgate demo`` runs them."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette

from edge import EdgeSettings
from edge import create_app as create_edge
from origin import OriginSettings
from origin import create_app as create_origin
from origin.providers import PaymentProvider
from segmentgate.serving import start_server, wait_until_healthy

SAMPLE_CATALOG = {
    "sample": {
        "title": "Sample (three renditions, AES-128, fMP4)",
        "entry": "master.m3u8",
        "policy": {
            "kind": "purchase",
            "price": {"amount": "4.99", "currency": "EUR"},
            "preview_seconds": 10,
        },
    },
    "trailer": {
        "title": "Trailer",
        "entry": "master.m3u8",
        "policy": {"kind": "free"},
    },
}


@dataclass
class Stack:
    """Settings for one origin and one edge on the same host."""

    media_root: Path
    data_dir: Path
    host: str = "127.0.0.1"
    origin_port: int = 8100
    edge_port: int = 8000
    admin_token: str = ""
    uri_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    edge_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    provider: PaymentProvider | None = None
    upstream_url: str | None = None
    origin_options: dict[str, Any] = field(default_factory=dict)
    edge_options: dict[str, Any] = field(default_factory=dict)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    origin_app: Starlette | None = field(default=None, init=False)
    edge_app: Starlette | None = field(default=None, init=False)

    @property
    def origin_url(self) -> str:
        return f"http://{self.host}:{self.origin_port}"

    @property
    def edge_url(self) -> str:
        return f"http://{self.host}:{self.edge_port}"

    def origin_settings(self) -> OriginSettings:
        options: dict[str, Any] = {
            "database_url": f"sqlite+aiosqlite:///{self.data_dir / 'origin.db'}",
            "admin_token": self.admin_token,
            "edge_public_url": self.edge_url,
            "edge_urls": (self.edge_url,),
            "edge_token": self.edge_token,
            **self.origin_options,
        }
        return OriginSettings(**options)

    def edge_settings(self) -> EdgeSettings:
        options: dict[str, Any] = {
            "origin_url": self.origin_url,
            "media_root": None if self.upstream_url else self.media_root,
            "upstream_url": self.upstream_url,
            "uri_secrets": [self.uri_secret],
            "origin_token": self.edge_token,
            **self.edge_options,
        }
        return EdgeSettings(**options)

    async def run(self, shutdown: asyncio.Event, seed: bool = True) -> None:
        """Start the origin and the edge, seed the catalog; stop on ``shutdown``.

        The catalog is seeded once the edge runs, so the origin's first pushes
        reach it instead of starting the relay's backoff.
        """
        origin_settings = self.origin_settings()
        self.admin_token = origin_settings.admin_token
        self.origin_app = create_origin(origin_settings, self.provider)
        origin_task = start_server(
            self.origin_app, f"{self.host}:{self.origin_port}", shutdown.wait
        )
        await wait_until_healthy(f"{self.origin_url}/healthz")
        self.edge_app = create_edge(self.edge_settings())
        edge_task = start_server(
            self.edge_app, f"{self.host}:{self.edge_port}", shutdown.wait
        )
        await wait_until_healthy(f"{self.edge_url}/_edge/healthz")
        if seed:
            await seed_catalog(self.origin_url, self.admin_token)
        self.ready.set()
        await asyncio.gather(origin_task, edge_task)


async def seed_catalog(origin_url: str, admin_token: str) -> None:
    """Publish the bundled sample and trailer through the admin API."""
    headers = {"Authorization": f"Bearer {admin_token}"}
    async with httpx.AsyncClient(base_url=origin_url, headers=headers) as client:
        for content_id, body in SAMPLE_CATALOG.items():
            response = await client.put(f"/v1/admin/content/{content_id}", json=body)
            response.raise_for_status()
