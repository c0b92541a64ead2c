"""A real origin process killed with SIGKILL in the middle of a capture.

The sandbox keeps its state in a file, as a real provider keeps its own, and
holds the capture at a gate that nobody opens, before or after it acted. The
test kills the process there, starts a new one on the same store and
sandbox file, and expects the start-up or periodic recovery to finish the
purchase with exactly one capture.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from origin.invariants import check_invariants
from origin.store import create_engine
from tests.harness import REPO, free_port

ADMIN_TOKEN = "test-admin-token"
# Upper bounds that only stop a broken run from hanging; no assertion is
# about how long anything took.
DEADLINE = 60.0


def origin_env(tmp_path: Path, faults: str) -> dict[str, str]:
    return {
        **os.environ,
        "SEGMENTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}",
        "SEGMENTGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SEGMENTGATE_SANDBOX_STATE": str(tmp_path / "sandbox.json"),
        "SEGMENTGATE_SANDBOX_FAULTS": faults,
        "SEGMENTGATE_SAGA_LEASE_SECONDS": "1",
        "SEGMENTGATE_RECOVERY_INTERVAL": "0.2",
    }


@pytest.fixture
def start_origin(tmp_path: Path) -> Iterator[object]:
    processes: list[subprocess.Popen[bytes]] = []
    port = free_port()

    def start(faults: str) -> tuple[subprocess.Popen[bytes], str]:
        log_path = tmp_path / f"origin-{len(processes)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "segmentgate",
                    "origin",
                    "--bind",
                    f"127.0.0.1:{port}",
                ],
                cwd=REPO,
                env=origin_env(tmp_path, faults),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(url), "the origin to start")
        return process, url

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(condition: object, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def capture_started(database: Path) -> bool:
    if not database.exists():
        return False
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        (count,) = connection.execute(
            "SELECT count(*) FROM purchase_steps "
            "WHERE step = 'capture' AND outcome = 'started'"
        ).fetchone()
    return bool(count)


@pytest.mark.parametrize("fault", ["capture:block_before", "capture:block_after"])
def test_killed_during_capture_finishes_once(
    tmp_path: Path, start_origin: object, fault: str
) -> None:
    process, url = start_origin(fault)  # type: ignore[operator]
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    item = {
        "title": "Film",
        "entry": "master.m3u8",
        "policy": {"kind": "purchase", "price": {"amount": "4.99", "currency": "EUR"}},
    }
    assert httpx.put(
        f"{url}/v1/admin/content/film", json=item, headers=admin
    ).is_success
    token = httpx.post(f"{url}/v1/viewers").json()["viewer_token"]
    viewer = {"Authorization": f"Bearer {token}"}
    key = str(uuid.uuid4())
    body = {"content_id": "film", "payment_method": "pm_card_visa"}

    def purchase() -> httpx.Response:
        return httpx.post(
            f"{url}/v1/purchases",
            json=body,
            headers={**viewer, "Idempotency-Key": key},
            timeout=DEADLINE,
        )

    # The first request never gets a response: the process dies under it.
    lost: list[BaseException] = []

    def purchase_lost() -> None:
        try:
            purchase()
        except httpx.HTTPError as exc:
            lost.append(exc)

    blocked = threading.Thread(target=purchase_lost)
    blocked.start()
    wait_for(lambda: capture_started(tmp_path / "origin.db"), "the capture to start")
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    blocked.join(DEADLINE)
    assert len(lost) == 1

    process, url = start_origin("")  # type: ignore[operator]
    answers: list[httpx.Response] = []

    def settled() -> bool:
        answers.append(purchase())
        return answers[-1].status_code == 201

    wait_for(settled, "the purchase to finish after the restart")
    assert {answer.status_code for answer in answers} <= {201, 202, 409}
    result = answers[-1].json()
    assert result["status"] == "granted"
    captures = [step for step in result["steps"] if step["step"] == "capture"]
    assert captures[0]["outcome"] == "unknown"
    assert [step["outcome"] for step in captures].count("succeeded") == 1

    sandbox = json.loads((tmp_path / "sandbox.json").read_text())
    intents = [
        intent
        for intent in sandbox["intents"].values()
        if intent["purchase_id"] == result["purchase_id"]
    ]
    assert sum(intent["captures"] for intent in intents) == 1
    assert sum(intent["refunds"] for intent in intents) == 0

    async def invariants() -> list[str]:
        engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'origin.db'}")
        try:
            async with engine.connect() as connection:
                return await check_invariants(connection)
        finally:
            await engine.dispose()

    assert asyncio.run(invariants()) == []
