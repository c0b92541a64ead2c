"""Origin configuration, from keyword arguments or ``SEGMENTGATE_*`` variables."""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass

from shared.tokens import MAX_TOKEN_LIFETIME, SESSION_RENEWAL

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
    # Events must outlive every token that an edge may still honour: the
    # longest token lifetime plus the renewal window, with slack for clocks.
    event_retention_seconds: int = MAX_TOKEN_LIFETIME + SESSION_RENEWAL + 600
    relay_poll_interval: float = 1.0
    relay_timeout: float = 5.0
    payment_provider: str = "sandbox"

    def __post_init__(self) -> None:
        if not self.admin_token:
            self.admin_token = secrets.token_urlsafe(24)
            self.admin_token_generated = True
        else:
            self.admin_token_generated = False
        if not 0 < self.playback_token_ttl <= MAX_TOKEN_LIFETIME:
            raise ValueError(
                f"playback_token_ttl must be 1 to {MAX_TOKEN_LIFETIME} seconds, "
                "the longest lifetime edges accept"
            )
        if self.event_retention_seconds < MAX_TOKEN_LIFETIME + SESSION_RENEWAL:
            raise ValueError(
                "event_retention_seconds must be at least "
                f"{MAX_TOKEN_LIFETIME + SESSION_RENEWAL} (token lifetime plus "
                "renewal), or a restarted edge could miss a revocation"
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
