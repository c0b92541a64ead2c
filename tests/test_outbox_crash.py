"""A real origin process killed with SIGKILL inside the outbox relay.

``SEGMENTGATE_RELAY_FAULT`` makes the relay block for good either after the
events committed but before it pushes them, or after an edge accepted a
push but before the relay saved its cursor. The test kills the process
there and starts a new one on the same store. Two edges listen: a real
edge process, and a recorder in this process that counts every push of
every event id and applies each id once, as edges do.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from tests.harness import MEDIA_ROOT, REPO, free_port

ADMIN_TOKEN = "test-admin-token"
# Upper bound that only stops a broken run from hanging.
DEADLINE = 60.0


class Recorder:
    """Counts pushes per event id; ``applied`` contains each id once."""

    def __init__(self) -> None:
        self.pushes: Counter[str] = Counter()
        self.applied: list[str] = []
        self.lock = threading.Lock()

    def record(self, claims: dict[str, Any]) -> None:
        with self.lock:
            for event in claims["events"]:
                self.pushes[event["id"]] += 1
                if event["id"] not in self.applied:
                    self.applied.append(event["id"])


@pytest.fixture
def recording_edge() -> Iterator[tuple[Recorder, str]]:
    """A recording edge on a free port, and its URL."""
    recorder = Recorder()
    server = serve_recorder(recorder)
    yield recorder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def serve_recorder(recorder: Recorder) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            recorder.record(jwt.decode(body, options={"verify_signature": False}))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def wait_for(condition: Any, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            output = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"gave up waiting for {what}\n{output}")
        time.sleep(0.05)


def get_json(url: str) -> Any:
    try:
        response = httpx.get(url, timeout=1)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def outbox_ids(database: Path) -> list[str]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT event_id FROM outbox ORDER BY seq")
        return [event_id for (event_id,) in rows]


class Processes:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, command: str, bind: str, env: dict[str, str]) -> Any:
        log = (self.tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "segmentgate", command, "--bind", bind],
            cwd=REPO,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.running.append(process)
        return process


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    for process in started.running:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


@pytest.mark.parametrize("fault", ["block_before_push", "block_after_push"])
def test_killed_relay_delivers_all_once(
    tmp_path: Path,
    processes: Processes,
    recording_edge: tuple[Recorder, str],
    fault: str,
) -> None:
    recorder, recorder_url = recording_edge
    origin_port, edge_port = free_port(), free_port()
    origin_url = f"http://127.0.0.1:{origin_port}"
    edge_url = f"http://127.0.0.1:{edge_port}"
    database = tmp_path / "origin.db"
    origin_env = {
        "SEGMENTGATE_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "SEGMENTGATE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SEGMENTGATE_EDGE_URLS": f"{recorder_url},{edge_url}",
    }
    processes.start(
        "edge",
        "edge",
        f"127.0.0.1:{edge_port}",
        {
            "SEGMENTGATE_EDGE_ORIGIN_URL": origin_url,
            "SEGMENTGATE_EDGE_MEDIA_ROOT": str(MEDIA_ROOT),
        },
    )
    origin = processes.start(
        "origin-0",
        "origin",
        f"127.0.0.1:{origin_port}",
        {**origin_env, "SEGMENTGATE_RELAY_FAULT": fault},
    )
    wait_for(
        lambda: get_json(f"{origin_url}/healthz"),
        "the origin to start",
        tmp_path / "origin-0.log",
    )
    wait_for(lambda: get_json(f"{edge_url}/_edge/healthz"), "the edge to start")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for content_id in ("film", "trailer", "short"):
        item = {"title": content_id, "entry": "master.m3u8", "policy": {"kind": "free"}}
        response = httpx.put(
            f"{origin_url}/v1/admin/content/{content_id}", json=item, headers=admin
        )
        assert response.is_success, response.text
    log = tmp_path / "origin-0.log"
    wait_for(lambda: f"relay fault {fault}" in log.read_text(), "the relay to block")
    origin.send_signal(signal.SIGKILL)
    origin.wait(10)
    pushed_before = dict(recorder.pushes)

    processes.start("origin-1", "origin", f"127.0.0.1:{origin_port}", origin_env)
    expected = outbox_ids(database)
    wait_for(lambda: recorder.applied == expected, "every event at the recorder")
    wait_for(
        lambda: (
            (get_json(f"{edge_url}/_edge/healthz") or {}).get("last_event_seq")
            == len(expected)
        ),
        "every event at the edge",
    )
    status = subprocess.run(
        [sys.executable, "-m", "segmentgate", "outbox", "status"],
        cwd=REPO,
        env={
            **os.environ,
            "SEGMENTGATE_ADMIN_TOKEN": ADMIN_TOKEN,
            "SEGMENTGATE_ORIGIN_URL": origin_url,
        },
        capture_output=True,
        check=False,
        timeout=DEADLINE,
    )
    assert len(expected) >= 3
    assert recorder.applied == expected
    if fault == "block_before_push":
        assert pushed_before == {}
        assert set(recorder.pushes.values()) == {1}
    else:
        # The batch pushed before the kill is pushed again: at least once.
        assert pushed_before
        assert all(recorder.pushes[event_id] == 2 for event_id in pushed_before)
    assert status.returncode == 0, status.stderr
    destinations = json.loads(status.stdout)["destinations"]
    assert [destination["lag_events"] for destination in destinations] == [0, 0]
