"""Outcome counters kept by one origin process.

Prometheus counters for what the store does not record: webhook deliveries
that failed verification, playback sessions by mode, and purchases that
followed a preview of the same content by the same viewer. They restart
from zero with the process, as Prometheus counters may; ``rate()`` and
``increase()`` handle the reset.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cachetools import LRUCache

# Viewer and content pairs remembered as having previewed. The oldest are
# forgotten first, so a purchase long after its preview may go uncounted.
PREVIEW_MEMORY = 100_000


@dataclass
class OriginCounters:
    """Counts of outcomes since this process started."""

    # (provider, reason) of deliveries rejected before processing.
    webhook_verification_failures: Counter[tuple[str, str]] = field(
        default_factory=Counter
    )
    # Playback sessions issued by mode: "preview" or "entitled".
    playback_sessions: Counter[str] = field(default_factory=Counter)
    previews: int = 0
    purchases_after_preview: int = 0
    _previewed: LRUCache[tuple[str, str], bool] = field(
        default_factory=lambda: LRUCache(maxsize=PREVIEW_MEMORY), repr=False
    )

    def count_session(self, viewer_id: str, content_id: str, preview: bool) -> None:
        self.playback_sessions["preview" if preview else "entitled"] += 1
        if preview and (viewer_id, content_id) not in self._previewed:
            self._previewed[(viewer_id, content_id)] = True
            self.previews += 1

    def count_purchase(self, viewer_id: str, content_id: str) -> None:
        """Count a new purchase as a conversion if the viewer previewed first."""
        if self._previewed.pop((viewer_id, content_id), False):
            self.purchases_after_preview += 1

    def count_webhook_failure(self, provider: str, reason: str) -> None:
        self.webhook_verification_failures[(provider, reason)] += 1

    @property
    def conversion(self) -> float | None:
        """Purchases after a preview per distinct preview, or None before any."""
        if not self.previews:
            return None
        return self.purchases_after_preview / self.previews
