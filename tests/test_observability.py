"""Traces, logs and metrics of one full journey through a real origin and edge.

One module-scoped run plays a preview through the edge, buys the content
with a client ``traceparent``, plays it entitled, receives the provider's
webhook, refunds, rotates a key and scrapes both services. Spans go to the
OpenTelemetry SDK's in-memory exporter; log records at ``DEBUG`` go through
the services' JSON formatter into a list. The tests then check the trace,
scan every log line for the exact secrets the run used, and read the
metrics that the traffic moved.

The payment provider is the built-in sandbox under the name ``stripe``, so
a Stripe-signed webhook (signed with the ``stripe`` package) reports on its
intents. The webhook body carries the purchase's ``traceparent`` in the
intent's metadata, where Stripe returns what the origin set at creation.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import stripe
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from origin.providers import SandboxProvider
from shared.logs import (
    LIBRARY_LOGGERS,
    JsonFormatter,
    Redactor,
    configure_logging,
    hash_identifier,
)
from shared.tracing import EXPORTER_VARIABLE as EXPORTER
from shared.tracing import add_span_processor
from tests.harness import REPO, RunningStack, Viewer, assert_problem, running_stack

ADMIN_TOKEN = "observability-admin-" + uuid.uuid4().hex
STATUS_TOKEN = "observability-status-" + uuid.uuid4().hex
METRICS_TOKEN = "observability-metrics-" + uuid.uuid4().hex
STRIPE_SECRET = "whsec_" + uuid.uuid4().hex
CARD_NUMBER = "4242 4242 4242 4242"
PLAY_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PURCHASE_TRACE = "0af7651916cd43dd8448eb211c80319c"
URI_TOKEN = re.compile(r"sg=([\w.-]+)")


def traceparent(trace_id: str, span_id: str = "b7ad6b7169203331") -> str:
    return f"00-{trace_id}-{span_id}-01"


class SpanCollector:
    """The SDK's in-memory exporter, fed by a simple span processor.

    The tracer provider outlives this module, so :meth:`close` shuts the
    exporter down and later spans are dropped instead of kept.
    """

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        add_span_processor(SimpleSpanProcessor(self.exporter))

    @property
    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def of_trace(self, trace_id: str) -> list[ReadableSpan]:
        return [
            span for span in self.spans if f"{span.context.trace_id:032x}" == trace_id
        ]

    def close(self) -> None:
        self.exporter.shutdown()


class LineCollector(logging.Handler):
    """Format every record with the services' formatter and keep the line."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        with self._lock:
            self.lines.append(line)

    def records(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(line) for line in self.lines]


@dataclass
class Journey:
    origin_url: str
    edge_url: str
    spans: SpanCollector
    logs: LineCollector
    # Every value that must never appear in a log line.
    secrets: dict[str, str] = field(default_factory=dict)
    purchase_id: str = ""
    edge_metrics: str = ""
    origin_metrics: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    status_token_codes: dict[str, int] = field(default_factory=dict)


def wait_for(condition: Any, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def play(
    client: httpx.Client, playlist_url: str, trace: str = ""
) -> tuple[list[str], list[httpx.Response]]:
    """Fetch a master playlist, its first variant and every segment of it."""
    headers = {"traceparent": traceparent(trace)} if trace else {}
    master = client.get(playlist_url, headers=headers)
    assert master.status_code == 200, master.text
    base = playlist_url.split("?")[0].rsplit("/", 1)[0]
    variant_uri = next(
        line for line in master.text.splitlines() if line and not line.startswith("#")
    )
    variant = client.get(f"{base}/{variant_uri}")
    assert variant.status_code == 200, variant.text
    variant_base = f"{base}/{variant_uri.split('?')[0].rsplit('/', 1)[0]}"
    segments = [
        client.get(f"{variant_base}/{line}")
        for line in variant.text.splitlines()
        if line and not line.startswith("#")
    ]
    tokens = URI_TOKEN.findall(master.text + variant.text)
    return tokens, segments


def post_stripe(origin: httpx.Client, body: bytes, secret: str) -> httpx.Response:
    header = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    return origin.post(
        "/v1/webhooks/stripe",
        content=body,
        headers={"Stripe-Signature": header, "Content-Type": "application/json"},
    )


def intent_event(intent_id: str, trace: str) -> bytes:
    event = {
        "id": "evt_" + uuid.uuid4().hex,
        "object": "event",
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": intent_id,
                "object": "payment_intent",
                "status": "succeeded",
                "amount": 499,
                "currency": "eur",
                "amount_received": 499,
                "latest_charge": "ch_1",
                "metadata": {"traceparent": traceparent(trace, "c7ad6b7169203332")},
            }
        },
    }
    return json.dumps(event).encode()


def edge_caught_up(edge: httpx.Client, origin: httpx.Client) -> bool:
    outbox = origin.get("/v1/admin/outbox").json()
    return bool(
        edge.get("/_edge/healthz").json()["last_event_seq"] == outbox["last_seq"]
    )


def run_journey(journey: Journey, data_dir: Path) -> None:
    secrets = journey.secrets
    viewer = Viewer(journey.origin_url)
    admin = httpx.Client(
        base_url=journey.origin_url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    edge = httpx.Client(base_url=journey.edge_url, timeout=10)
    secrets["viewer token"] = viewer.client.headers["Authorization"].split()[1]
    secrets["viewer id"] = viewer.viewer_id

    preview = viewer.session()
    token = str(preview["token"])
    secrets["preview playback token"] = token
    secrets["viewer ref"] = jwt.decode(token, options={"verify_signature": False})[
        "sub"
    ]
    uri_tokens, segments = play(edge, str(preview["playlist_url"]), PLAY_TRACE)
    assert any(response.status_code == 200 for response in segments)
    assert any(response.status_code == 402 for response in segments)
    assert edge.get("/sample/v180/seg_000.ts").status_code == 401
    path_session = viewer.client.post(
        "/v1/playback-sessions", json={"content_id": "sample", "transport": "path"}
    ).json()
    secrets["path playback token"] = path_session["token"]
    assert edge.get(path_session["playlist_url"]).status_code == 200

    declined = viewer.client.post(
        "/v1/purchases",
        json={"content_id": "sample", "payment_method": CARD_NUMBER},
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert declined.status_code == 422, declined.text

    bought = viewer.client.post(
        "/v1/purchases",
        json={"content_id": "sample", "payment_method": "pm_card_visa"},
        headers={
            "Idempotency-Key": str(uuid.uuid4()),
            "traceparent": traceparent(PURCHASE_TRACE),
        },
    )
    assert bought.status_code in (201, 202), bought.text
    journey.purchase_id = bought.json()["purchase_id"]
    wait_for(
        lambda: (
            viewer.client.get(f"/v1/purchases/{journey.purchase_id}").json()["status"]
            == "granted"
        ),
        "the purchase to be granted",
    )
    wait_for(lambda: edge_caught_up(edge, admin), "the edge to apply the grant")

    entitled = viewer.session()
    secrets["entitled playback token"] = str(entitled["token"])
    more_tokens, segments = play(edge, str(entitled["playlist_url"]))
    assert all(response.status_code == 200 for response in segments)
    for index, uri_token in enumerate(uri_tokens + more_tokens):
        secrets[f"URI token {index}"] = uri_token

    with sqlite3.connect(data_dir / "origin.db") as connection:
        [intent_id] = connection.execute(
            "SELECT payment_intent_id FROM purchases WHERE purchase_id = ?",
            (journey.purchase_id,),
        ).fetchone()
    body = intent_event(intent_id, PURCHASE_TRACE)
    delivered = post_stripe(admin, body, STRIPE_SECRET)
    assert delivered.status_code == 200, delivered.text
    forged = post_stripe(admin, body, "whsec_" + uuid.uuid4().hex)
    assert forged.status_code == 400, forged.text
    header = stripe.WebhookSignature.generate_signature_header(
        body.decode(), STRIPE_SECRET
    )
    secrets["webhook signature"] = header.split("v1=")[1]

    refund = viewer.refund(journey.purchase_id)
    assert refund["status"] in ("refunding", "refunded"), refund
    wait_for(
        lambda: (
            viewer.client.get(f"/v1/purchases/{journey.purchase_id}").json()["status"]
            == "refunded"
        ),
        "the refund",
    )
    rotated = admin.post(
        "/v1/admin/keys/rotate", headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert rotated.status_code in (200, 201), rotated.text
    wait_for(lambda: edge_caught_up(edge, admin), "the edge to apply every event")

    metrics = edge.get(
        "/_edge/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    assert metrics.status_code == 200, metrics.text
    journey.edge_metrics = metrics.text
    origin_metrics = admin.get("/metrics")
    assert origin_metrics.status_code == 200, origin_metrics.text
    journey.origin_metrics = origin_metrics.text
    status = admin.get(
        "/v1/status", headers={"Authorization": f"Bearer {STATUS_TOKEN}"}
    )
    assert status.status_code == 200, status.text
    journey.status = status.json()
    # The status token reads the status and nothing else.
    status_headers = {"Authorization": f"Bearer {STATUS_TOKEN}"}
    journey.status_token_codes = {
        path: admin.get(path, headers=status_headers).status_code
        for path in ("/metrics", "/v1/admin/outbox", "/v1/admin/keys")
    }
    for client in (viewer, admin, edge):
        client.close()


@pytest.fixture(scope="module")
def journey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Journey]:
    spans = SpanCollector()

    logs = LineCollector()
    root = logging.getLogger()
    saved_levels = {
        name: logging.getLogger(name).level for name in ("", *LIBRARY_LOGGERS)
    }
    handler = configure_logging("DEBUG")
    root.addHandler(logs)

    data_dir = tmp_path_factory.mktemp("observability")
    sandbox = SandboxProvider()
    sandbox.name = "stripe"  # type: ignore[misc]
    uri_secret = uuid.uuid4().bytes + uuid.uuid4().bytes
    try:
        with running_stack(
            data_dir,
            admin_token=ADMIN_TOKEN,
            provider=sandbox,
            uri_secret=uri_secret,
            origin_options={
                "admin_tokens": f"status:{STATUS_TOKEN}",
                "webhook_secrets": f"stripe:{STRIPE_SECRET}",
            },
            edge_options={"metrics_token": METRICS_TOKEN},
        ) as running:
            stack = running.stack
            result = Journey(stack.origin_url, stack.edge_url, spans, logs)
            result.secrets.update(
                {
                    "admin token": ADMIN_TOKEN,
                    "status token": STATUS_TOKEN,
                    "metrics token": METRICS_TOKEN,
                    "edge token": stack.edge_token,
                    "webhook secret": STRIPE_SECRET,
                    "URI secret": base64.urlsafe_b64encode(uri_secret).decode(),
                    "card number": CARD_NUMBER,
                    "card digits": CARD_NUMBER.replace(" ", ""),
                }
            )
            run_journey(result, data_dir)
        yield result
    finally:
        spans.close()
        root.removeHandler(logs)
        root.removeHandler(handler)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


# Traces -----------------------------------------------------------------------


def test_purchase_forms_one_trace(journey: Journey) -> None:
    spans = journey.spans.of_trace(PURCHASE_TRACE)
    names = {span.name for span in spans}

    assert "POST" in names
    assert "payment create_intent" in names
    assert "payment authorize" in names
    assert "payment capture" in names
    assert "apply entitlement.granted" in names


def test_outbox_push_links_purchase_trace(journey: Journey) -> None:
    pushes = [span for span in journey.spans.spans if span.name == "outbox push"]
    linked = [
        span
        for span in pushes
        if any(f"{link.context.trace_id:032x}" == PURCHASE_TRACE for link in span.links)
    ]

    assert pushes
    assert linked
    assert linked[0].attributes["outbox.target"] == journey.edge_url


def test_purchase_server_span_continues_client(journey: Journey) -> None:
    [server] = [
        span
        for span in journey.spans.of_trace(PURCHASE_TRACE)
        if span.name == "POST" and span.attributes["url.path"] == "/v1/purchases"
    ]

    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == "b7ad6b7169203331"
    assert server.attributes["http.response.status_code"] in (201, 202)


def test_edge_unlock_is_in_purchase_trace(journey: Journey) -> None:
    [apply] = [
        span
        for span in journey.spans.of_trace(PURCHASE_TRACE)
        if span.name == "apply entitlement.granted"
    ]
    unlocks = [
        record
        for record in journey.logs.records()
        if record["message"].startswith("entitlement granted")
    ]

    assert apply.instrumentation_scope.name == "segmentgate.edge"
    assert len(unlocks) == 1
    assert unlocks[0]["trace_id"] == PURCHASE_TRACE
    assert unlocks[0]["logger"] == "segmentgate.edge.events"


def test_webhook_joins_purchase_trace(journey: Journey) -> None:
    deliveries = [
        span
        for span in journey.spans.of_trace(PURCHASE_TRACE)
        if span.name == "webhook delivery"
    ]

    # The valid delivery and the forged one both name the purchase's trace.
    assert len(deliveries) == 2
    for delivery in deliveries:
        assert delivery.parent is not None
        assert f"{delivery.parent.span_id:016x}" == "c7ad6b7169203332"
        # Linked to the delivery's own request span, in a trace of its own.
        assert len(delivery.links) == 1
        assert f"{delivery.links[0].context.trace_id:032x}" != PURCHASE_TRACE


def test_edge_playback_continues_client_trace(journey: Journey) -> None:
    spans = journey.spans.of_trace(PLAY_TRACE)
    edge_spans = [
        s for s in spans if s.instrumentation_scope.name == "segmentgate.edge"
    ]
    origin_spans = [
        s for s in spans if s.instrumentation_scope.name == "segmentgate.origin"
    ]

    assert [span.attributes["url.path"] for span in edge_spans] == [
        "/sample/master.m3u8"
    ]
    # The edge's first request for the content fetched its policy.
    assert "/v1/catalog/sample" in [
        span.attributes["url.path"] for span in origin_spans
    ]


# Logs -------------------------------------------------------------------------


def test_logs_are_json_lines(journey: Journey) -> None:
    records = journey.logs.records()
    keys = {"ts", "level", "logger", "message", "trace_id", "span_id"}

    assert len(records) > 50
    for record in records:
        assert keys <= record.keys(), record
    assert any(record["level"] == "debug" for record in records)
    assert any(record["logger"] == "segmentgate.edge.access" for record in records)


def test_logs_hold_no_secrets(journey: Journey) -> None:
    text = "\n".join(journey.logs.lines)

    assert len(journey.secrets) > 15
    for name, value in journey.secrets.items():
        assert value not in text, f"the {name} appears in a log line"


def test_logs_identify_viewers_by_hash(journey: Journey) -> None:
    text = "\n".join(journey.logs.lines)

    assert hash_identifier(journey.secrets["viewer ref"]) in text


# Metrics ----------------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """Return one sample's value from a Prometheus exposition."""
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        sample_name, _, label_text = sample.partition("{")
        found = (
            ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
        )
        if sample_name == name and found == wanted:
            return float(value)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


def test_edge_metrics_count_outcomes(journey: Journey) -> None:
    text = journey.edge_metrics

    assert (
        metric(
            text,
            "segmentgate_edge_playback_starts_total",
            outcome="started",
            mode="preview",
            reason="-",
        )
        == 2
    )
    assert (
        metric(
            text,
            "segmentgate_edge_playback_starts_total",
            outcome="started",
            mode="entitled",
            reason="-",
        )
        == 1
    )
    assert metric(text, "segmentgate_edge_segments_served_total", mode="entitled") > 0
    assert metric(text, "segmentgate_edge_segments_served_total", mode="preview") > 0
    assert (
        metric(text, "segmentgate_edge_segments_denied_total", reason="preview-ended")
        > 0
    )
    assert (
        metric(text, "segmentgate_edge_segments_denied_total", reason="token-missing")
        == 1
    )


def test_edge_metrics_time_capture_to_unlock(journey: Journey) -> None:
    text = journey.edge_metrics

    assert metric(text, "segmentgate_edge_capture_to_unlock_seconds_count") == 1
    assert metric(text, "segmentgate_edge_capture_to_unlock_seconds_sum") >= 0
    assert (
        metric(
            text, "segmentgate_edge_events_applied_total", type="entitlement.granted"
        )
        == 1
    )
    assert (
        metric(
            text, "segmentgate_edge_events_applied_total", type="entitlement.revoked"
        )
        == 1
    )
    assert metric(text, "segmentgate_edge_degraded") == 0


def test_origin_metrics_after_journey(journey: Journey) -> None:
    text = journey.origin_metrics
    target = journey.edge_url
    last_seq = metric(text, "segmentgate_outbox_last_seq")

    assert metric(text, "segmentgate_purchases", status="refunded") == 1
    assert metric(text, "segmentgate_previews_total") == 1
    assert metric(text, "segmentgate_preview_purchases_total") == 1
    assert metric(text, "segmentgate_playback_sessions_total", mode="preview") == 2
    assert metric(text, "segmentgate_playback_sessions_total", mode="entitled") == 1
    assert (
        metric(
            text,
            "segmentgate_webhook_verification_failures_total",
            provider="stripe",
            reason="webhook-signature-invalid",
        )
        == 1
    )
    assert metric(text, "segmentgate_webhook_dead_letters") == 0
    assert metric(text, "segmentgate_edge_acknowledged_seq", target=target) == last_seq
    assert metric(text, "segmentgate_edge_behind_events", target=target) == 0
    assert metric(text, "segmentgate_outbox_lag_events", target=target) == 0
    assert "segmentgate_signing_key_age_seconds{" in text


def test_status_token_reads_only_status(journey: Journey) -> None:
    assert journey.status_token_codes == {
        "/metrics": 403,
        "/v1/admin/outbox": 403,
        "/v1/admin/keys": 403,
    }


def test_status_matches_journey(journey: Journey) -> None:
    status = journey.status

    assert status["funnel"]["purchases_by_status"]["refunded"] == 1
    assert status["funnel"]["preview_conversion"] == 1.0
    assert status["webhooks"]["events_by_status"] == {"processed": 1}
    assert [edge["behind_events"] for edge in status["edges"]] == [0]
    assert {key["state"] for key in status["keys"]} >= {"current", "next"}


# Redaction rules --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "leaked"),
    [
        ("GET /sample/master.m3u8?sg=abc.def&x=1", "abc.def"),
        ("moved /_sg/eyJhbGciOi.eyJzdWIi.c2ln/sample/master.m3u8", "eyJzdWIi"),
        ("Authorization: Bearer s3cr3t-token-value", "s3cr3t-token-value"),
        ("secret whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "MfKQ9r8GKYqrTwjUPD8"),
        ("Stripe-Signature: t=1,v1=" + "ab" * 32, "ab" * 32),
        ("card 4000 0566 5566 5556 declined", "4000 0566 5566 5556"),
        ("card 4000056655665556 declined", "4000056655665556"),
        ("viewer vwr_0123456789abcdef01234567 bought", "vwr_0123456789abcdef0123"),
        ("GET /v1/edge/entitlements/Zm9vYmFyYmF6/sample", "Zm9vYmFyYmF6"),
        ("token 1.eyJzZXNzaW9uIjoxfQ.s14000.c2lnbmF0dXJlc2lnbmF0dXJl", "c2lnbmF0"),
    ],
)
def test_redactor_removes(text: str, leaked: str) -> None:
    assert leaked not in Redactor().text(text)


def test_redactor_keeps_ordinary_numbers() -> None:
    text = "applied event 1733337600123 after 12.5 s"

    assert Redactor().text(text) == text


def test_redactor_hides_registered_secret() -> None:
    redactor = Redactor()
    redactor.add_secrets(["plain-admin-token", "short"])

    assert redactor.text("token plain-admin-token used") == "token [redacted] used"
    assert redactor.text("short") == "short"


def test_formatter_redacts_extra_fields() -> None:
    record = logging.LogRecord("segmentgate.test", logging.INFO, "", 0, "m", (), None)
    record.authorization = "Bearer abc"
    record.viewer_ref = "ref-123"
    record.path = "/x?sg=abc"

    entry = json.loads(JsonFormatter(Redactor()).format(record))

    assert entry["authorization"] == "[redacted]"
    assert entry["viewer_ref"] == hash_identifier("ref-123")
    assert entry["path"] == "/x?sg=[redacted]"


# Access to the new endpoints -----------------------------------------------


def test_status_needs_status_scope(stack: RunningStack, viewer: Viewer) -> None:
    url = f"{stack.stack.origin_url}/v1/status"

    assert_problem(httpx.get(url), 401, "unauthorized")
    assert_problem(viewer.client.get("/v1/status"), 403, "forbidden")
    root = httpx.get(url, headers={"Authorization": "Bearer test-admin-token"})
    assert root.status_code == 200, root.text
    assert root.headers["cache-control"] == "no-store"


def test_status_page_contains_no_data(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.stack.origin_url}/status")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "connect-src 'self'" in policy
    assert "script-src 'sha256-" in policy
    assert "/v1/status" in response.text
    assert stack.stack.edge_url not in response.text


def test_edge_metrics_off_without_token(stack: RunningStack) -> None:
    response = httpx.get(f"{stack.stack.edge_url}/_edge/metrics")

    assert_problem(response, 404, "not-found")


def test_edge_metrics_reject_wrong_token(tmp_path: Path) -> None:
    with running_stack(tmp_path, edge_options={"metrics_token": METRICS_TOKEN}) as run:
        url = f"{run.stack.edge_url}/_edge/metrics"
        missing = httpx.get(url)
        wrong = httpx.get(url, headers={"Authorization": "Bearer wrong-token"})
        right = httpx.get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})

    assert_problem(missing, 401, "unauthorized")
    assert_problem(wrong, 403, "forbidden")
    assert right.status_code == 200
    assert "segmentgate_edge_last_event_seq" in right.text


# Exporter configuration -------------------------------------------------------

SPAN_SCRIPT = """
from opentelemetry import trace
from shared.tracing import configure_tracing
configure_tracing()
span = trace.get_tracer("segmentgate.test").start_span("exported-span")
print("recording", span.is_recording(), flush=True)
span.end()
"""


def run_span_script(exporter: str | None) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != EXPORTER}
    if exporter is not None:
        env[EXPORTER] = exporter
    return subprocess.run(
        [sys.executable, "-c", SPAN_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_exporter_off_by_default() -> None:
    result = run_span_script(None)

    assert result.returncode == 0, result.stderr
    assert "recording False" in result.stdout
    assert "exported-span" not in result.stdout


def test_console_exporter_prints_spans() -> None:
    result = run_span_script("console")

    assert result.returncode == 0, result.stderr
    assert "recording True" in result.stdout
    assert '"name": "exported-span"' in result.stdout


def test_unknown_exporter_is_rejected() -> None:
    result = run_span_script("zipkin")

    assert result.returncode != 0
    assert "SEGMENTGATE_TRACES_EXPORTER must be one of" in result.stderr


def test_otlp_exporter_is_built() -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter,
    )

    from shared.tracing import build_exporter

    assert isinstance(build_exporter("otlp"), OTLPSpanExporter)
    assert build_exporter("none") is None


@pytest.mark.parametrize(
    "value",
    [
        "garbage",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "a" * 32 + "-" + "b" * 16 + "-01" + "x" * 5000,
        "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",
    ],
)
def test_invalid_traceparent_is_ignored(stack: RunningStack, value: str) -> None:
    headers = {"traceparent": value}
    origin = httpx.get(f"{stack.stack.origin_url}/v1/catalog", headers=headers)
    edge = httpx.get(f"{stack.stack.edge_url}/trailer/index.m3u8", headers=headers)

    assert origin.status_code == 200, origin.text
    assert_problem(edge, 401, "token-missing")
