"""Origin configuration, from keyword arguments or ``SEGMENTGATE_*`` variables."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass

logger = logging.getLogger("segmentgate.origin")


@dataclass
class OriginSettings:
    """Everything the origin needs to know.

    ``edge_public_url`` is where players reach the edge, used in the playlist
    URLs handed out; ``edge_urls`` are the edges that receive pushed events.
    """

    database_url: str = "sqlite+aiosqlite:///segmentgate.db"
    admin_token: str = ""
    edge_public_url: str = "http://127.0.0.1:8000"
    edge_urls: tuple[str, ...] = ()
    signing_algorithm: str = "EdDSA"
    playback_token_ttl: int = 30 * 60
    event_retention_seconds: int = 2 * 3600 + 120
    relay_poll_interval: float = 1.0
    relay_timeout: float = 5.0
    payment_provider: str = "sandbox"

    def __post_init__(self) -> None:
        if not self.admin_token:
            self.admin_token = secrets.token_urlsafe(24)
            self.admin_token_generated = True
        else:
            self.admin_token_generated = False
        if self.event_retention_seconds < self.playback_token_ttl:
            raise ValueError(
                "event_retention_seconds must be at least playback_token_ttl, "
                "or edges could forget a revocation while its tokens still live"
            )

    @classmethod
    def from_env(cls) -> OriginSettings:
        env = os.environ
        return cls(
            database_url=env.get("SEGMENTGATE_DATABASE_URL", cls.database_url),
            admin_token=env.get("SEGMENTGATE_ADMIN_TOKEN", ""),
            edge_public_url=env.get("SEGMENTGATE_EDGE_PUBLIC_URL", cls.edge_public_url),
            edge_urls=tuple(
                url.strip()
                for url in env.get("SEGMENTGATE_EDGE_URLS", "").split(",")
                if url.strip()
            ),
        )
