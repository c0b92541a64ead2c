"""Edges as durable NATS JetStream consumers of the origin's events.

The NATS server at 127.0.0.1:4222 with JetStream carries the events, in a
stream with a name of its own per test; the tests are skipped, saying why,
when it is unreachable. The origin and the edges run under hypercorn. The
edges under test poll the origin's feed only once an hour, so every event
they apply arrives through JetStream, or through a catch-up that a JetStream
message started.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from edge import create_app as create_edge
from edge.settings import EdgeSettings
from shared.events import EventBatch, encode_event_batch, event_batch_from_claims
from shared.keys import SigningKey
from tests.harness import RunningStack, ServedApp, Viewer, free_port, running_stack
from tests.jetstream import NATS_URL, run_nats, temporary_stream


@pytest.fixture
def stream() -> Iterator[tuple[str, str]]:
    """Create a stream and subject prefix for one test, deleted after it."""
    with temporary_stream("sgtest") as names:
        yield names


@contextlib.contextmanager
def origin_publishing(
    tmp_path: Path, stream: tuple[str, str], *, publish: bool = True
) -> Iterator[RunningStack]:
    """Run an origin that publishes to ``stream``, and an edge that polls."""
    origin_options: dict[str, Any] = {"edge_urls": ()}
    if publish:
        origin_options.update(
            nats_url=NATS_URL, nats_stream=stream[0], nats_subject_prefix=stream[1]
        )
    with running_stack(tmp_path, origin_options=origin_options) as running:
        yield running


def consuming_edge(
    running: RunningStack, stream: tuple[str, str], edge_id: str
) -> ServedApp:
    settings: EdgeSettings = replace(
        running.stack.edge_settings(),
        nats_url=NATS_URL,
        edge_id=edge_id,
        nats_stream=stream[0],
        nats_subject_prefix=stream[1],
        sync_interval=3600.0,
    )
    return ServedApp(create_edge(settings), free_port(), "/_edge/healthz").start()


def health(edge: ServedApp) -> dict[str, Any]:
    return dict(httpx.get(f"{edge.url}/_edge/healthz", timeout=5).json())


def wait_for(condition: Callable[[], bool], what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def consumer_info(stream: str, durable: str) -> Any:
    async def info(jetstream: Any) -> Any:
        return await jetstream.consumer_info(stream, durable)

    return run_nats(info)


def stream_last_seq(stream: str) -> int:
    async def info(jetstream: Any) -> Any:
        return await jetstream.stream_info(stream)

    return int(run_nats(info).state.last_seq)


def buy(viewer: Viewer) -> str:
    purchase = viewer.purchase()
    assert purchase["status"] == "granted", purchase
    return str(purchase["purchase_id"])


def test_edge_applies_jetstream_events(tmp_path: Path, stream: tuple[str, str]) -> None:
    with origin_publishing(tmp_path, stream) as running:
        edge = consuming_edge(running, stream, "edge-1")
        viewer = Viewer(running.stack.origin_url)
        try:
            wait_for(lambda: health(edge)["jetstream"]["connected"], "the consumer")
            buy(viewer)
            last_seq = stream_last_seq(stream[0])
            wait_for(
                lambda: health(edge)["jetstream"]["acknowledged"] >= 1,
                "the event to arrive",
            )
            wait_for(
                lambda: (
                    consumer_info(stream[0], "edge-1").ack_floor.stream_seq == last_seq
                ),
                "the acknowledgement",
            )
            state = health(edge)
        finally:
            viewer.close()
            edge.stop()
    assert state["jetstream"]["durable"] == "edge-1"
    assert state["jetstream"]["rejected"] == 0
    assert state["jetstream"]["expired"] == 0
    assert state["last_event_seq"] >= 1


def test_restarted_edge_resumes_consumer(
    tmp_path: Path, stream: tuple[str, str]
) -> None:
    with origin_publishing(tmp_path, stream) as running:
        viewers = [Viewer(running.stack.origin_url) for _ in range(5)]
        edge = consuming_edge(running, stream, "edge-restarts")
        try:
            wait_for(lambda: health(edge)["jetstream"]["connected"], "the consumer")
            buy(viewers[0])
            before = stream_last_seq(stream[0])
            wait_for(
                lambda: (
                    consumer_info(stream[0], "edge-restarts").ack_floor.stream_seq
                    == before
                ),
                "the first acknowledgement",
            )
            edge.stop()

            for viewer in viewers[1:]:
                buy(viewer)
            after = stream_last_seq(stream[0])
            edge = consuming_edge(running, stream, "edge-restarts")
            wait_for(
                lambda: (
                    consumer_info(stream[0], "edge-restarts").ack_floor.stream_seq
                    == after
                ),
                "the restarted edge to acknowledge",
            )
            state = health(edge)
            info = consumer_info(stream[0], "edge-restarts")
        finally:
            for viewer in viewers:
                viewer.close()
            edge.stop()
    # The restarted edge got exactly what was published while it was down.
    assert after > before
    assert state["jetstream"]["received"] == after - before
    assert state["jetstream"]["acknowledged"] == after - before
    assert info.num_pending == 0
    assert info.num_ack_pending == 0


def origin_key(running: RunningStack) -> SigningKey:
    origin = running.stack.origin_app.state.origin  # type: ignore[union-attr]
    return origin.keys.current  # type: ignore[no-any-return]


def origin_events(running: RunningStack) -> EventBatch:
    """Read every event from the origin's feed, as an edge would."""
    response = httpx.get(
        f"{running.stack.origin_url}/v1/events",
        params={"after": 0},
        headers={"Authorization": f"Bearer {running.stack.edge_token}"},
        timeout=5,
    )
    response.raise_for_status()
    claims = jwt.decode(response.text, options={"verify_signature": False})
    return event_batch_from_claims(claims)


def publish_raw(stream: tuple[str, str], body: str) -> None:
    async def publish(jetstream: Any) -> None:
        await jetstream.publish(
            f"{stream[1]}.entitlement.granted", body.encode("ascii")
        )

    run_nats(publish)


def test_expired_message_falls_back_to_feed(
    tmp_path: Path, stream: tuple[str, str]
) -> None:
    # The origin does not publish here; the test puts old messages in the
    # stream itself, as a consumer back from a long outage would find them.
    with origin_publishing(tmp_path, stream, publish=False) as running:
        edge = consuming_edge(running, stream, "edge-late")
        viewer = Viewer(running.stack.origin_url)
        try:
            wait_for(lambda: health(edge)["jetstream"]["connected"], "the consumer")
            seq_before = health(edge)["last_event_seq"]
            buy(viewer)
            batch = origin_events(running)
            expired = encode_event_batch(batch, origin_key(running), ttl=-60)
            forged = encode_event_batch(batch, SigningKey.generate("EdDSA"))
            publish_raw(stream, expired)
            publish_raw(stream, forged)
            wait_for(
                lambda: consumer_info(stream[0], "edge-late").ack_floor.stream_seq == 2,
                "both messages to be settled",
            )
            state = health(edge)
        finally:
            viewer.close()
            edge.stop()
    jetstream = state["jetstream"]
    assert jetstream["received"] == 2
    assert jetstream["expired"] == 1
    assert jetstream["acknowledged"] == 1
    assert jetstream["rejected"] == 1
    # The catch-up from the feed applied the purchase that the expired
    # message announced, and whatever the origin wrote after it.
    assert state["last_event_seq"] >= batch.last_seq
    assert state["last_event_seq"] > seq_before
