"""W3C trace context through both services, with OpenTelemetry.

Every request gets a span: a child of the client's ``traceparent`` header
when it sends a valid one, a new trace otherwise. Outgoing httpx requests
carry the current span as ``traceparent``, and outbox events carry the
span that committed them, so an edge applies an event inside the trace of
the purchase that caused it.

Spans are recorded only while an exporter is configured: set
``SEGMENTGATE_TRACES_EXPORTER`` to ``otlp`` (OTLP over HTTP, configured by
the standard ``OTEL_EXPORTER_OTLP_*`` variables) or ``console``. Without one,
trace ids are still created and propagated, so log lines and events carry
them, but spans cost no more than their ids.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence

import httpx
from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.trace.propagation.tracecontext import (
    TraceContextTextMapPropagator,
)
from opentelemetry.util.types import Attributes
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "EXPORTER_VARIABLE",
    "TRACEPARENT",
    "TraceMiddleware",
    "add_span_processor",
    "build_exporter",
    "configure_tracing",
    "context_from_traceparent",
    "current_ids",
    "current_traceparent",
    "inject_traceparent",
    "links_to",
    "span_from",
    "spans_recording",
]

TRACEPARENT = "traceparent"
EXPORTER_VARIABLE = "SEGMENTGATE_TRACES_EXPORTER"
EXPORTERS = ("", "none", "otlp", "console")
REASON_HEADER = b"segmentgate-reason"

_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()


class _ExportingSampler(Sampler):
    """Record spans only while a span processor is installed.

    A dropped span still gets its own ids and keeps its parent's trace id,
    so propagation and log correlation work without an exporter.
    """

    def __init__(self) -> None:
        self.recording = False
        self._sampler = ParentBased(ALWAYS_ON)

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        if not self.recording:
            return SamplingResult(Decision.DROP)
        return self._sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return "ExportingSampler"


class _IdGenerator(IdGenerator):
    """Span and trace ids from a generator of our own.

    The SDK's default draws from the global ``random`` state, which other
    code (tests with a seeded ``random``, Hypothesis) expects to own.
    """

    def __init__(self) -> None:
        # Trace ids must be unique, not secret, as the SDK's own are.
        self._random = random.Random()  # noqa: S311
        # A forked worker would otherwise repeat its parent's ids.
        os.register_at_fork(after_in_child=self._random.seed)

    def generate_span_id(self) -> int:
        span_id = self._random.getrandbits(64)
        while span_id == trace.INVALID_SPAN_ID:
            span_id = self._random.getrandbits(64)
        return span_id

    def generate_trace_id(self) -> int:
        trace_id = self._random.getrandbits(128)
        while trace_id == trace.INVALID_TRACE_ID:
            trace_id = self._random.getrandbits(128)
        return trace_id


_sampler = _ExportingSampler()
_provider: TracerProvider | None = None


def build_exporter(name: str) -> SpanExporter | None:
    """Create the span exporter called ``name``, or None for no exporter."""
    if name not in EXPORTERS:
        raise ValueError(
            f"{EXPORTER_VARIABLE} must be one of otlp, console or none; got {name!r}"
        )
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    return None


def configure_tracing(exporter: str | None = None) -> TracerProvider:
    """Install the process's tracer provider once; add ``exporter`` if named.

    ``exporter`` defaults to ``SEGMENTGATE_TRACES_EXPORTER``. The origin and
    the edge of one process share the provider: their spans differ by
    tracer name (``segmentgate.origin`` or ``segmentgate.edge``).
    """
    global _provider
    name = (
        os.environ.get(EXPORTER_VARIABLE, "") if exporter is None else exporter
    ).lower()
    span_exporter = build_exporter(name)
    with _lock:
        if _provider is None:
            _provider = TracerProvider(
                resource=_resource({"service.name": "segmentgate"}),
                sampler=_sampler,
                id_generator=_IdGenerator(),
            )
            trace.set_tracer_provider(_provider)
        provider = _provider
    if span_exporter is not None:
        add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


def _resource(attributes: Attributes) -> Resource:
    if sys.platform == "emscripten":
        # Resource.create runs its detectors in threads, which Pyodide (the
        # edge on Cloudflare Workers) cannot start.
        return Resource(attributes)
    return Resource.create(attributes)


def add_span_processor(processor: SpanProcessor) -> None:
    """Send finished spans to ``processor``, and start recording spans."""
    configure_tracing("none").add_span_processor(processor)
    _sampler.recording = True


def spans_recording() -> bool:
    """Return whether spans are recorded, that is, an exporter is installed."""
    return _sampler.recording


def context_from_traceparent(traceparent: str) -> Context | None:
    """Return the context of a ``traceparent`` value, or None if it is invalid."""
    if not traceparent:
        return None
    extracted = _propagator.extract({TRACEPARENT: traceparent})
    if not trace.get_current_span(extracted).get_span_context().is_valid:
        return None
    return extracted


def links_to(traceparents: Iterable[str]) -> list[Link]:
    """Return span links to every valid ``traceparent`` value, once each."""
    links: dict[str, Link] = {}
    for traceparent in traceparents:
        parent = context_from_traceparent(traceparent)
        if parent is not None and traceparent not in links:
            span_context = trace.get_current_span(parent).get_span_context()
            links[traceparent] = Link(span_context)
    return list(links.values())


def current_traceparent() -> str:
    """Return the current span as a ``traceparent`` value, or ``""``."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get(TRACEPARENT, "")


def current_ids() -> tuple[str, str]:
    """Return the current trace id and span id in hex, or two empty strings."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return "", ""
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


async def inject_traceparent(request: httpx.Request) -> None:
    """Add the current span's ``traceparent`` to an outgoing request.

    Install it as an httpx request hook: ``event_hooks={"request": [...]}``.
    """
    traceparent = current_traceparent()
    if traceparent:
        request.headers[TRACEPARENT] = traceparent


@contextlib.contextmanager
def span_from(
    tracer: trace.Tracer,
    name: str,
    traceparent: str = "",
    attributes: Mapping[str, str | int] | None = None,
    links: Sequence[Link] = (),
) -> Iterator[trace.Span]:
    """Run a span as a child of ``traceparent``, or of the current span."""
    parent = context_from_traceparent(traceparent)
    with tracer.start_as_current_span(
        name, context=parent, attributes=dict(attributes or {}), links=links
    ) as span:
        yield span


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return ""


class TraceMiddleware:
    """Run every HTTP request in a server span, continuing the client's trace.

    The span records the method, the path (never the query, which may hold
    tokens), the status and the denial reason that the response carries.

    With ``start_traces=False`` a request without ``traceparent`` gets no
    span while no exporter records spans. The edge uses this because a span
    per segment request would cost as much as its whole gate decision.
    """

    def __init__(
        self, app: ASGIApp, *, tracer_name: str, start_traces: bool = True
    ) -> None:
        self.app = app
        self.tracer = trace.get_tracer(tracer_name)
        self.start_traces = start_traces

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        traceparent = _header(scope, TRACEPARENT.encode())
        if not (traceparent or self.start_traces or _sampler.recording):
            await self.app(scope, receive, send)
            return

        parent = context_from_traceparent(traceparent)
        span = self.tracer.start_span(
            scope["method"], context=parent, kind=SpanKind.SERVER
        )
        recording = span.is_recording()
        if recording:
            span.set_attribute("http.request.method", scope["method"])
            span.set_attribute("url.path", scope["path"])

        async def send_traced(message: Message) -> None:
            if recording and message["type"] == "http.response.start":
                span.set_attribute("http.response.status_code", message["status"])
                for name, value in message.get("headers", ()):
                    if name.lower() == REASON_HEADER:
                        span.set_attribute("segmentgate.reason", value.decode())
            await send(message)

        token = context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_traced)
        finally:
            context.detach(token)
            span.end()
