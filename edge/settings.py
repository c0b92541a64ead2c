"""Edge configuration, from keyword arguments or ``SEGMENTGATE_EDGE_*`` variables."""

from __future__ import annotations

import base64
import logging
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.tokens import MAX_TOKEN_LIFETIME, SESSION_RENEWAL

logger = logging.getLogger("segmentgate.edge")

# The characters of a JetStream durable consumer name that are safe in
# subjects too: no spaces, dots or wildcards.
DURABLE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


def decode_secrets(text: str) -> list[bytes]:
    """Read comma-separated base64url secrets, oldest first."""
    values = [item.strip() for item in text.split(",") if item.strip()]
    return [
        base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)) for value in values
    ]


@dataclass
class EdgeSettings:
    """Everything an edge needs to know.

    ``media_root`` serves files from disk; ``upstream_url`` streams them from
    an HTTP origin instead. ``uri_secrets`` sign the authorizations written
    into playlists: every edge of a fleet must share them, the last one
    signs. ``entitlement_ttl`` defaults to the longest token lifetime plus
    the renewal window, because only an entitlement change older than every
    token still honoured can be forgotten.
    """

    origin_url: str
    media_root: Path | None = None
    upstream_url: str | None = None
    uri_secrets: list[bytes] = field(default_factory=list)
    extra_hosts: frozenset[str] = frozenset()
    allow_origins: tuple[str, ...] = ("*",)
    leeway_seconds: int = 5
    max_token_bytes: int = 4096
    max_playlist_bytes: int = 16 * 1024 * 1024
    entitlement_ttl: float | None = None
    entitlement_capacity: int = 1_000_000
    jwks_refresh_interval: float = 30.0
    origin_timeout: float = 5.0
    sync_interval: float = 5.0
    # The bearer token the origin requires on its event feed.
    origin_token: str = ""
    # The bearer token that GET /_edge/metrics requires. Empty turns it off.
    metrics_token: str = ""
    renewal_seconds: float = SESSION_RENEWAL
    # The origin counts as silent after stale_after seconds without a feed
    # read or a push; entitled viewers keep playing for grace_period more.
    stale_after: float = 15.0
    grace_period: float = 900.0
    # The circuit to the origin opens after this many failures in a row and
    # lets one request through again after the reset timeout.
    origin_failure_threshold: int = 3
    origin_reset_timeout: float = 5.0
    policy_ttl: float = 60.0
    policy_stale_ttl: float = 3600.0
    policy_negative_ttl: float = 5.0
    max_token_lifetime: float = MAX_TOKEN_LIFETIME
    # A NATS server with JetStream to consume the origin's events from, as
    # the durable consumer named edge_id; empty relies on pushes and polls.
    nats_url: str = ""
    edge_id: str = ""
    nats_stream: str = "SEGMENTGATE_EVENTS"
    nats_subject_prefix: str = "segmentgate.events"
    # Whole media files up to memory_cache_file_bytes are sent from memory,
    # up to memory_cache_bytes in all. With 0, every file is sent from disk.
    memory_cache_bytes: int = 64 * 1024 * 1024
    memory_cache_file_bytes: int = 4 * 1024 * 1024
    # Files of a media_root are checked by a stat on every request. Bytes
    # from an upstream_url are kept this many seconds without a new request.
    memory_cache_seconds: float = 300.0

    def __post_init__(self) -> None:
        minimum_ttl = self.max_token_lifetime + self.renewal_seconds + 60
        if self.entitlement_ttl is None:
            self.entitlement_ttl = minimum_ttl
        elif self.entitlement_ttl < minimum_ttl:
            raise ValueError(
                f"entitlement_ttl must be at least {minimum_ttl:g} seconds "
                "(max_token_lifetime + renewal_seconds + 60)"
            )
        if self.nats_url and not DURABLE_NAME.fullmatch(self.edge_id):
            raise ValueError(
                f"edge_id {self.edge_id!r} is not a valid JetStream consumer "
                "name: set SEGMENTGATE_EDGE_ID to letters, digits, '-' or '_'"
            )
        if self.memory_cache_bytes < 0 or self.memory_cache_file_bytes < 0:
            raise ValueError(
                "memory_cache_bytes and memory_cache_file_bytes must be 0 or more"
            )
        if self.media_root is None and self.upstream_url is None:
            raise ValueError("set media_root or upstream_url")
        if not self.uri_secrets:
            logger.warning(
                "no URI signing secret configured; using a random one, so "
                "playlist URIs stop working when this process restarts"
            )
            self.uri_secrets = [secrets.token_bytes(32)]

    @classmethod
    def from_env(cls) -> EdgeSettings:
        return cls.from_mapping(os.environ)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> EdgeSettings:
        """Read ``SEGMENTGATE_EDGE_*`` settings from ``env``."""
        media_root = env.get("SEGMENTGATE_EDGE_MEDIA_ROOT")
        return cls(
            origin_url=env.get("SEGMENTGATE_EDGE_ORIGIN_URL", "http://127.0.0.1:8100"),
            media_root=Path(media_root) if media_root else None,
            upstream_url=env.get("SEGMENTGATE_EDGE_UPSTREAM_URL"),
            uri_secrets=decode_secrets(env.get("SEGMENTGATE_EDGE_URI_SECRETS", "")),
            origin_token=env.get("SEGMENTGATE_EDGE_ORIGIN_TOKEN", ""),
            metrics_token=env.get("SEGMENTGATE_EDGE_METRICS_TOKEN", ""),
            grace_period=float(env.get("SEGMENTGATE_EDGE_GRACE_SECONDS", "900")),
            nats_url=env.get("SEGMENTGATE_EDGE_NATS_URL", ""),
            edge_id=env.get("SEGMENTGATE_EDGE_ID", ""),
            nats_stream=env.get("SEGMENTGATE_EDGE_NATS_STREAM", cls.nats_stream),
            nats_subject_prefix=env.get(
                "SEGMENTGATE_EDGE_NATS_SUBJECT_PREFIX", cls.nats_subject_prefix
            ),
            memory_cache_bytes=int(
                env.get("SEGMENTGATE_EDGE_MEMORY_CACHE_BYTES", str(64 * 1024 * 1024))
            ),
            extra_hosts=frozenset(
                host.strip().lower()
                for host in env.get("SEGMENTGATE_EDGE_EXTRA_HOSTS", "").split(",")
                if host.strip()
            ),
        )
