"""The edge as a durable NATS JetStream consumer of the origin's events.

Each edge pulls from the stream that the origin's relay publishes to
(:mod:`origin.outbox_nats`) through a durable consumer named after its edge
id. JetStream keeps the consumer's position, so an edge that restarts
resumes after the last message it acknowledged. A message is acknowledged
after the follower applied it, with the signature checks of a pushed batch.

A batch verifies for five minutes only. A message that an edge reads later
than that, after a long outage, is not applied: the edge catches up from
the origin's feed instead, which covers that event, and then acknowledges
the message. A message that fails verification for any other reason is
logged and terminated, so it is never delivered again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from edge.events import EventFollower, InvalidEventBatch
from edge.origin_link import OriginUnavailable

logger = logging.getLogger("segmentgate.edge.jetstream")

# Messages fetched per pull, and seconds a pull waits for the first one.
FETCH_BATCH = 100
FETCH_WAIT = 2.0
# Seconds JetStream waits for an acknowledgement before it redelivers.
ACK_WAIT = 30.0
# Seconds before a message that could not be applied now is delivered again.
RETRY_DELAY = 2.0
CONNECTION_ERRORS: tuple[type[Exception], ...] = (OSError, TimeoutError)
# Seconds between connection attempts, doubling up to RECONNECT_MAX.
RECONNECT_BASE = 0.5
RECONNECT_MAX = 30.0


@dataclass
class ConsumerStats:
    """Counts of one consumer's messages since the edge started."""

    received: int = 0
    acknowledged: int = 0
    expired: int = 0
    rejected: int = 0
    retried: int = 0
    connected: bool = False


class JetStreamConsumer:
    """Pull events from JetStream into ``follower`` until stopped."""

    def __init__(
        self,
        url: str,
        durable: str,
        follower: EventFollower,
        *,
        stream: str,
        subject_prefix: str,
    ) -> None:
        self.url = url
        self.durable = durable
        self.stream = stream
        self.subject_prefix = subject_prefix
        self.stats = ConsumerStats()
        self._follower = follower
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    async def _run(self) -> None:
        import nats.errors
        import nats.js.errors

        failures = 0
        logged_at = float("-inf")
        while True:
            try:
                subscription = await self._subscribe()
                failures = 0
                await self._pull(subscription)
            except (*CONNECTION_ERRORS, nats.errors.Error, nats.js.errors.Error) as exc:
                await self._close()
                failures += 1
                delay = min(RECONNECT_BASE * 2 ** (failures - 1), RECONNECT_MAX)
                if time.monotonic() - logged_at >= 60.0:
                    logged_at = time.monotonic()
                    logger.warning(
                        "consuming JetStream stream %s at %s as %s failed "
                        "(%d in a row): %s; next try in %.1f s",
                        self.stream,
                        self.url,
                        self.durable,
                        failures,
                        exc,
                        delay,
                    )
                await asyncio.sleep(delay)

    async def _subscribe(self) -> Any:
        import nats
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

        # nats-py 2.16 retries a refused first connection without end even
        # with allow_reconnect=False, so the whole connect is bounded here.
        self._connection = await asyncio.wait_for(
            nats.connect(
                self.url,
                connect_timeout=5,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=_log_client_error,
            ),
            10,
        )
        jetstream = self._connection.jetstream(timeout=5)
        # A new consumer starts at new messages: the edge read the feed at
        # start. An existing one resumes after its last acknowledgement.
        subscription = await jetstream.pull_subscribe(
            f"{self.subject_prefix}.>",
            durable=self.durable,
            stream=self.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.NEW,
                ack_wait=ACK_WAIT,
            ),
        )
        self.stats.connected = True
        logger.info(
            "consuming JetStream stream %s at %s as %s",
            self.stream,
            self.url,
            self.durable,
        )
        return subscription

    async def _pull(self, subscription: Any) -> None:
        import nats.errors

        while True:
            try:
                messages = await subscription.fetch(FETCH_BATCH, timeout=FETCH_WAIT)
            except nats.errors.TimeoutError:
                if self._connection is None or self._connection.is_closed:
                    raise
                continue
            for message in messages:
                await self._handle(message)

    async def _handle(self, message: Any) -> None:
        self.stats.received += 1
        try:
            await self._follower.receive(message.data.decode("ascii"))
        except (InvalidEventBatch, UnicodeDecodeError) as exc:
            if isinstance(exc.__cause__, jwt.ExpiredSignatureError):
                await self._catch_up_for(message)
                return
            self.stats.rejected += 1
            logger.warning(
                "JetStream message %s on %s rejected: %s",
                message.metadata.sequence.stream,
                message.subject,
                exc,
            )
            await message.term()
            return
        except (httpx.HTTPError, OriginUnavailable) as exc:
            self._retry_later(message, exc)
            await message.nak(delay=RETRY_DELAY)
            return
        await message.ack()
        self.stats.acknowledged += 1

    async def _catch_up_for(self, message: Any) -> None:
        # The batch's signature expired in the stream: the feed, which the
        # origin signs afresh, brings every event after the last one applied.
        self.stats.expired += 1
        try:
            await self._follower.catch_up()
        except (httpx.HTTPError, OriginUnavailable, InvalidEventBatch) as exc:
            self._retry_later(message, exc)
            await message.nak(delay=RETRY_DELAY)
            return
        await message.ack()
        self.stats.acknowledged += 1

    def _retry_later(self, message: Any, exc: Exception) -> None:
        self.stats.retried += 1
        logger.warning(
            "applying JetStream message %s failed, delivering it again in %.0f s: %s",
            message.metadata.sequence.stream,
            RETRY_DELAY,
            exc,
        )

    async def _close(self) -> None:
        self.stats.connected = False
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()


async def _log_client_error(error: Exception) -> None:
    # Failed pulls are logged by the consumer loop, rate-limited.
    logger.debug("NATS client error: %s", error)
