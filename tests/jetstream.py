"""Streams of their own on the NATS server with JetStream at 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

NATS_URL = "nats://127.0.0.1:4222"


def run_nats(work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``work(jetstream)`` on a connection of its own and return its result."""
    import nats

    async def main() -> Any:
        connection = await nats.connect(NATS_URL, connect_timeout=2)
        try:
            return await work(connection.jetstream())
        finally:
            await connection.close()

    return asyncio.run(main())


@contextlib.contextmanager
def temporary_stream(label: str) -> Iterator[tuple[str, str]]:
    """Create a stream and its subject prefix, yield both, then delete the stream.

    Skip the test when the server cannot be reached.
    """
    import nats

    suffix = uuid.uuid4().hex[:12]
    name, prefix = f"{label.upper()}_{suffix}", f"{label.lower()}.{suffix}"

    async def create(jetstream: Any) -> None:
        await jetstream.add_stream(name=name, subjects=[f"{prefix}.>"])

    try:
        run_nats(create)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        pytest.skip(f"NATS at 127.0.0.1:4222 is unreachable: {exc}")
    try:
        yield name, prefix
    finally:

        async def delete(jetstream: Any) -> None:
            await jetstream.delete_stream(name)

        run_nats(delete)
