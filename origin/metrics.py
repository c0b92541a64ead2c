"""Prometheus metrics of the origin: ``GET /metrics``.

It needs an admin token with the ``events`` scope (Prometheus sends it with
``authorization: {credentials: ...}``). Values come from
:func:`origin.status.read_status` on each scrape, the same numbers as the
status page: store-backed values agree across origin replicas, and the
counters (webhook verification failures, playback sessions, purchases after
a preview) belong to the process scraped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from origin.auth import require_scope
from origin.state import Origin
from origin.status import read_status

_PER_TARGET = {
    "lag_events": ("segmentgate_outbox_lag_events", "Events not yet delivered."),
    "oldest_undelivered_age_seconds": (
        "segmentgate_outbox_oldest_undelivered_age_seconds",
        "Age of the oldest undelivered event, 0 when none waits.",
    ),
    "parked": ("segmentgate_outbox_parked_events", "Events the destination rejected."),
    "failures": ("segmentgate_outbox_delivery_failures", "Failed deliveries in a row."),
}


class _Snapshot:
    """A collector over values read once for one scrape."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> list[Metric]:
        return self.families


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], value)
    return family


def _outbox(outbox: dict[str, Any]) -> Iterable[Metric]:
    yield _gauge(
        "segmentgate_outbox_last_seq",
        "Sequence number of the newest outbox event.",
        float(outbox["last_seq"]),
    )
    for field, (name, documentation) in _PER_TARGET.items():
        family = GaugeMetricFamily(name, documentation, labels=["target"])
        for destination in outbox["destinations"]:
            family.add_metric([destination["target"]], float(destination[field] or 0))
        yield family


def _edges(edges: list[dict[str, Any]]) -> Iterable[Metric]:
    acknowledged = GaugeMetricFamily(
        "segmentgate_edge_acknowledged_seq",
        "Newest event sequence number each edge accepted.",
        labels=["target"],
    )
    behind = GaugeMetricFamily(
        "segmentgate_edge_behind_events",
        "Outbox events newer than each edge's acknowledged one.",
        labels=["target"],
    )
    age = GaugeMetricFamily(
        "segmentgate_edge_acknowledged_age_seconds",
        "Seconds since each edge last accepted a push; absent before the first.",
        labels=["target"],
    )
    for edge in edges:
        acknowledged.add_metric([edge["target"]], float(edge["acknowledged_seq"]))
        behind.add_metric([edge["target"]], float(edge["behind_events"]))
        if edge["acknowledged_age_seconds"] is not None:
            age.add_metric([edge["target"]], float(edge["acknowledged_age_seconds"]))
    return (acknowledged, behind, age)


def _keys(keys: list[dict[str, Any]]) -> Iterable[Metric]:
    family = GaugeMetricFamily(
        "segmentgate_signing_key_age_seconds",
        "Age of each signing key that the key ring holds.",
        labels=["kid", "state"],
    )
    for key in keys:
        family.add_metric([key["kid"], key["state"]], float(key["age_seconds"]))
    yield family


def _webhooks(webhooks: dict[str, Any]) -> Iterable[Metric]:
    yield _gauge(
        "segmentgate_webhook_dead_letters",
        "Webhook events that failed every retry and were not replayed.",
        float(webhooks["dead_letters"]),
    )
    failures = CounterMetricFamily(
        "segmentgate_webhook_verification_failures",
        "Webhook deliveries rejected before processing, by problem type.",
        labels=["provider", "reason"],
    )
    for provider, reasons in webhooks["verification_failures"].items():
        for reason, count in reasons.items():
            failures.add_metric([provider, reason], float(count))
    yield failures


def _funnel(funnel: dict[str, Any]) -> Iterable[Metric]:
    by_status = GaugeMetricFamily(
        "segmentgate_purchases", "Purchases by current status.", labels=["status"]
    )
    for status, count in funnel["purchases_by_status"].items():
        by_status.add_metric([status], float(count))
    yield by_status
    sessions = CounterMetricFamily(
        "segmentgate_playback_sessions",
        "Playback sessions issued, by mode.",
        labels=["mode"],
    )
    sessions.add_metric(["preview"], float(funnel["preview_sessions"]))
    sessions.add_metric(["entitled"], float(funnel["entitled_sessions"]))
    yield sessions
    previews = CounterMetricFamily(
        "segmentgate_previews",
        "Viewer and content pairs that started a preview.",
    )
    previews.add_metric([], float(funnel["distinct_previews"]))
    yield previews
    conversions = CounterMetricFamily(
        "segmentgate_preview_purchases",
        "Purchases of content that the same viewer previewed first.",
    )
    conversions.add_metric([], float(funnel["purchases_after_preview"]))
    yield conversions


async def metrics(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "events")
    status = await read_status(origin)
    families = [
        *_outbox(status["outbox"]),
        *_edges(status["edges"]),
        *_keys(status["keys"]),
        *_webhooks(status["webhooks"]),
        *_funnel(status["funnel"]),
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
