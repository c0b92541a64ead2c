"""NATS JetStream as an outbox destination, for fleets of edges.

Each event is published on its own to ``segmentgate.events.<type>`` in the
stream ``SEGMENTGATE_EVENTS``, created when missing, as a signed batch of
one event (the body edges accept on ``POST /_edge/events``). The header
``Nats-Msg-Id`` is the event id, so JetStream drops a republished event
within the stream's duplicate window (two minutes by default); edges drop
older repeats by event id. Needs the ``nats-py`` package (the ``nats``
extra).

A batch's signature is valid for five minutes, so a consumer that reads a
message later than that cannot verify it: edges (:mod:`edge.jetstream`)
catch up from ``GET /v1/events`` instead.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from shared.events import EventBatch, encode_event_batch
from shared.keys import SigningKey

logger = logging.getLogger("segmentgate.origin.outbox")

STREAM = "SEGMENTGATE_EVENTS"
SUBJECT_PREFIX = "segmentgate.events"


def is_nats_target(target: str) -> bool:
    return target.startswith(("nats://", "tls://"))


class NatsPublishError(Exception):
    """Raised when JetStream did not acknowledge a message."""


class JetStreamPublisher:
    """Publish events to JetStream, connecting on first use."""

    def __init__(
        self,
        url: str,
        timeout: float,
        *,
        stream: str = STREAM,
        subject_prefix: str = SUBJECT_PREFIX,
    ) -> None:
        self._url = url
        self._timeout = timeout
        self.stream = stream
        self.subject_prefix = subject_prefix
        self._connection: Any = None
        self._jetstream: Any = None
        self.duplicates = 0

    async def publish(self, batch: EventBatch, key: SigningKey) -> None:
        """Publish every event of ``batch``; raise :class:`NatsPublishError`."""
        import nats.errors
        import nats.js.errors

        try:
            jetstream = await self._connect()
            for event in batch.events:
                body = encode_event_batch(EventBatch([event], batch.last_seq), key)
                ack = await jetstream.publish(
                    f"{self.subject_prefix}.{event.type}",
                    body.encode("ascii"),
                    timeout=self._timeout,
                    headers={"Nats-Msg-Id": event.id},
                )
                self.duplicates += int(bool(ack.duplicate))
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await self.aclose()
            raise NatsPublishError(f"{type(exc).__name__}: {exc}") from exc
        except nats.js.errors.Error as exc:
            raise NatsPublishError(f"{type(exc).__name__}: {exc}") from exc

    async def _connect(self) -> Any:
        if self._jetstream is not None:
            return self._jetstream
        import nats

        # nats-py 2.16 retries a refused first connection without end even
        # with allow_reconnect=False, so the whole connect is bounded here.
        self._connection = await asyncio.wait_for(
            nats.connect(
                self._url,
                connect_timeout=self._timeout,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_log_client_error,
            ),
            self._timeout,
        )
        jetstream = self._connection.jetstream(timeout=self._timeout)
        try:
            await jetstream.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            await jetstream.add_stream(
                name=self.stream, subjects=[f"{self.subject_prefix}.>"]
            )
            logger.info("created JetStream stream %s", self.stream)
        self._jetstream = jetstream
        return jetstream

    async def aclose(self) -> None:
        connection, self._connection, self._jetstream = self._connection, None, None
        if connection is not None and not connection.is_closed:
            await connection.close()


async def _log_client_error(error: Exception) -> None:
    # The relay logs failed publishes itself, rate-limited.
    logger.debug("NATS client error: %s", error)
