"""Prometheus metrics of the edge: ``GET /_edge/metrics``.

The route needs ``Authorization: Bearer <metrics_token>`` and returns 404
when no metrics token is configured. Counters move on the request path, by
one increment per request. Gauges are read from the edge's state at scrape
time. Each application has its own registry, so several edges can run in
one process.

Metrics tied to outcomes:

* ``segmentgate_edge_playback_starts_total{outcome, mode, reason}``: entry
  playlist requests made with a playback token, served or denied, in
  preview or entitled mode;
* ``segmentgate_edge_segments_served_total{mode}`` and
  ``segmentgate_edge_segments_denied_total{reason}``: media segment, init
  segment and key requests;
* ``segmentgate_edge_capture_to_unlock_seconds``: from the commit of an
  ``entitlement.granted`` event at the origin to its application here;
* ``segmentgate_edge_events_applied_total{type}``, the last applied
  sequence number and how long the origin has been silent.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from shared import problems
from shared.events import ENTITLEMENT_GRANTED, EntitlementEvent
from shared.problems import Problem

# Set by the media route on the request scope: "preview" or "entitled".
MODE_SCOPE_KEY = "segmentgate.mode"
# Buckets in seconds from an origin commit to its application here. A push
# arrives within a second on a local network; a lost one waits for the feed
# poll (sync_interval, 5 s by default), and an edge that was down longer.
UNLOCK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="segmentgate-edge"'}


class _StateCollector(Collector):
    """Gauges read from the edge when Prometheus scrapes."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def describe(self) -> list[GaugeMetricFamily]:
        # The edge's state may not exist yet at registration.
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in self._read().items():
            family = GaugeMetricFamily(f"segmentgate_edge_{name}", _GAUGES[name])
            family.add_metric([], value)
            yield family


_GAUGES = {
    "last_event_seq": "Sequence number of the newest origin event applied.",
    "origin_silent_seconds": "Seconds since the origin was last heard from.",
    "degraded": "1 while the origin is silent for longer than stale_after.",
    "entitlements": "Entitlement changes held in memory.",
    "keys": "Signing keys known to the edge.",
}


class EdgeMetrics:
    """Counters and histograms of one edge, and its Prometheus registry."""

    def __init__(self, read_state: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.playback_starts = Counter(
            "segmentgate_edge_playback_starts",
            "Entry playlist requests with a playback token, by outcome.",
            ["outcome", "mode", "reason"],
            registry=self.registry,
        )
        self.segments_served = Counter(
            "segmentgate_edge_segments_served",
            "Segment, init segment and key responses that were served.",
            ["mode"],
            registry=self.registry,
        )
        self.segments_denied = Counter(
            "segmentgate_edge_segments_denied",
            "Segment, init segment and key requests denied, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.events_applied = Counter(
            "segmentgate_edge_events_applied",
            "Origin events applied, by type.",
            ["type"],
            registry=self.registry,
        )
        self.capture_to_unlock = Histogram(
            "segmentgate_edge_capture_to_unlock_seconds",
            "Seconds from the origin's commit of a grant to its application here.",
            buckets=UNLOCK_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(read_state))
        # Label children by mode, so a served segment skips the label lookup.
        self._served_by_mode: dict[str, Counter] = {}

    def count_request(
        self, path: str, playback_token: bool, status: int, reason: str, mode: str
    ) -> None:
        """Count one media request by outcome; a playlist counts only as a start."""
        if path.endswith(".m3u8"):
            if not playback_token:
                return
            outcome = "started" if status < 400 else "denied"
            self.playback_starts.labels(outcome, mode or "-", reason or "-").inc()
        elif status < 400:
            served = self._served_by_mode.get(mode)
            if served is None:
                served = self.segments_served.labels(mode or "-")
                self._served_by_mode[mode] = served
            served.inc()
        else:
            self.segments_denied.labels(reason or f"status-{status}").inc()

    def count_event(self, event: EntitlementEvent, applied_at: float) -> None:
        self.events_applied.labels(event.type).inc()
        if event.type == ENTITLEMENT_GRANTED:
            self.capture_to_unlock.observe(max(0.0, applied_at - event.occurred_at))


def metrics_endpoint(token: str) -> Callable[[Request], object]:
    """Return the ``/_edge/metrics`` handler, guarded by ``token``."""

    async def metrics(request: Request) -> Response:
        if not token:
            raise Problem(
                problems.NOT_FOUND,
                "edge metrics are off: set SEGMENTGATE_EDGE_METRICS_TOKEN",
            )
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Problem(
                problems.UNAUTHORIZED,
                "send 'Authorization: Bearer <metrics token>'",
                headers=_CHALLENGE,
            )
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise Problem(problems.FORBIDDEN, "the metrics token is not valid")
        edge_metrics: EdgeMetrics = request.app.state.edge.metrics
        return Response(
            generate_latest(edge_metrics.registry), media_type=CONTENT_TYPE_LATEST
        )

    return metrics
