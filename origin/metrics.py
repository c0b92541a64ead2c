"""Prometheus metrics of the origin's event delivery.

``GET /metrics`` needs an admin token with the ``events`` scope (Prometheus
sends it with ``authorization: {credentials: ...}``). Values are read from
the store on each scrape, so every origin replica reports the same numbers.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from origin.auth import require_scope
from origin.state import Origin
from origin.store import webhook_dead_letters


class _Snapshot:
    """A collector over values read once for one scrape."""

    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[GaugeMetricFamily]:
        return self.families


async def metrics(request: Request) -> Response:
    origin: Origin = request.app.state.origin
    require_scope(request, origin.admin_tokens, "events")
    status = await origin.relay.status()
    async with origin.engine.connect() as connection:
        dead_letters = (
            await connection.execute(
                select(func.count()).select_from(webhook_dead_letters)
            )
        ).scalar_one()

    last_seq = GaugeMetricFamily(
        "segmentgate_outbox_last_seq", "Sequence number of the newest outbox event."
    )
    last_seq.add_metric([], float(status["last_seq"]))  # type: ignore[arg-type]
    per_target = {
        "lag_events": ("segmentgate_outbox_lag_events", "Events not yet delivered."),
        "oldest_undelivered_age_seconds": (
            "segmentgate_outbox_oldest_undelivered_age_seconds",
            "Age of the oldest undelivered event, 0 when none waits.",
        ),
        "parked": (
            "segmentgate_outbox_parked_events",
            "Events the destination rejected.",
        ),
        "failures": (
            "segmentgate_outbox_delivery_failures",
            "Failed deliveries in a row.",
        ),
    }
    families = [last_seq]
    for field, (name, documentation) in per_target.items():
        family = GaugeMetricFamily(name, documentation, labels=["target"])
        for destination in status["destinations"]:  # type: ignore[attr-defined]
            family.add_metric([destination["target"]], float(destination[field] or 0))
        families.append(family)
    dead = GaugeMetricFamily(
        "segmentgate_webhook_dead_letters", "Webhook events that failed every retry."
    )
    dead.add_metric([], float(dead_letters))
    families.append(dead)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot(families))  # type: ignore[arg-type]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


routes = [Route("/metrics", metrics, methods=["GET"])]
