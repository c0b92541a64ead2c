"""Key rotation and revocation with players running through two edges."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import jwt
import pytest
from sqlalchemy import create_engine, text

from tests.harness import (
    REPO,
    AccessLog,
    ExtraEdge,
    RunningStack,
    Viewer,
    assert_problem,
    free_port,
    running_stack,
)

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, access_log: AccessLog
) -> Iterator[tuple[RunningStack, ExtraEdge]]:
    edge_port, second_port = free_port(), free_port()
    urls = (f"http://127.0.0.1:{edge_port}", f"http://127.0.0.1:{second_port}")
    with running_stack(
        tmp_path_factory.mktemp("keys"),
        edge_port=edge_port,
        origin_options={
            "edge_urls": urls,
            "key_publish_seconds": 1.0,
            "key_tick_interval": 0.1,
        },
        edge_options={"jwks_refresh_interval": 0.5},
    ) as running:
        second = ExtraEdge(running.stack, second_port).start()
        yield running, second
        second.stop()


def rotate(origin_url: str) -> dict[str, object]:
    response = httpx.post(
        f"{origin_url}/v1/admin/keys/rotate",
        headers={**ADMIN, "Idempotency-Key": str(uuid.uuid4())},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def on_edge(url: str, edge_url: str) -> str:
    parsed = httpx.URL(url)
    return str(httpx.URL(edge_url).copy_with(raw_path=parsed.raw_path))


def test_rotation_fails_no_request(
    fleet: tuple[RunningStack, ExtraEdge], access_log: AccessLog, ffmpeg: str
) -> None:
    running, second = fleet
    origin_url = running.stack.origin_url
    edges = [running.stack.edge_url, second.url]
    viewer = Viewer(origin_url)
    viewer.purchase()
    stop = threading.Event()
    rotated: list[str] = []

    def rotate_often() -> None:
        while not stop.is_set():
            rotated.append(str(rotate(origin_url)["kid"]))
            stop.wait(0.7)

    access_log.settle(quiet=0.05)
    mark = access_log.mark()
    rotator = threading.Thread(target=rotate_often)
    rotator.start()
    players = []
    try:
        for index in range(2):
            url = on_edge(str(viewer.session()["playlist_url"]), edges[index])
            players.append(
                subprocess.Popen(
                    [
                        ffmpeg,
                        "-nostdin",
                        "-loglevel",
                        "error",
                        "-readrate",
                        "6",
                        "-i",
                        url,
                        "-map",
                        "0",
                        "-c",
                        "copy",
                        "-f",
                        "null",
                        "-",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        with httpx.Client(timeout=5) as client:
            deadline = time.monotonic() + 5.0
            turn = 0
            while time.monotonic() < deadline:
                # New sessions all the time: each may carry the newest key.
                url = on_edge(str(viewer.session()["playlist_url"]), edges[turn % 2])
                assert client.get(url).status_code == 200
                turn += 1
                time.sleep(0.05)
        for player in players:
            _, errors = player.communicate(timeout=60)
            assert player.returncode == 0, errors
    finally:
        stop.set()
        rotator.join()
    access_log.settle()
    records = access_log.since(mark, "/sample/")
    failed = [(r.path, r.status, r.reason) for r in records if r.status >= 300]
    assert failed == []
    assert len(set(rotated)) >= 4
    keys = httpx.get(f"{origin_url}/v1/admin/keys", headers=ADMIN).json()["keys"]
    assert sum(key["state"] == "retiring" for key in keys) >= 3
    viewer.close()


def test_revoked_key_is_rejected_and_renewal_plays(
    fleet: tuple[RunningStack, ExtraEdge],
) -> None:
    running, second = fleet
    origin_url = running.stack.origin_url
    viewer = Viewer(origin_url)
    viewer.purchase()
    session = viewer.session()
    # The key that signed this session, whatever rotation did meanwhile.
    current = jwt.get_unverified_header(str(session["token"]))["kid"]
    with httpx.Client(timeout=5) as client:
        edges = [running.stack.edge_url, second.url]
        master = client.get(str(session["playlist_url"]))
        segment = str(master.url.join(master.text.splitlines()[-1]))
        assert client.get(segment).status_code == 200

        response = httpx.post(
            f"{origin_url}/v1/admin/keys/{current}/revoke", headers=ADMIN
        )
        assert response.json()["state"] == "revoked"
        started = time.monotonic()
        for edge in edges:
            for url in (
                on_edge(str(session["playlist_url"]), edge),
                on_edge(segment, edge),
            ):
                while client.get(url).status_code != 401:
                    assert time.monotonic() - started < 1.0, url
                    time.sleep(0.02)
                assert_problem(client.get(url), 401, "token-expired")
        # The viewer renews: a new session, signed by the new key, plays.
        renewed = viewer.session()
        for edge in edges:
            assert (
                client.get(on_edge(str(renewed["playlist_url"]), edge)).status_code
                == 200
            )
    jwks = httpx.get(f"{origin_url}/.well-known/jwks.json").json()
    assert current not in {key["kid"] for key in jwks["keys"]}
    viewer.close()


def test_private_keys_are_encrypted_at_rest(
    fleet: tuple[RunningStack, ExtraEdge],
) -> None:
    running, _ = fleet
    database = running.stack.data_dir / "origin.db"
    engine = create_engine(f"sqlite:///{database}")
    with engine.connect() as connection:
        stored = [
            row[0]
            for row in connection.execute(text("SELECT private_pem FROM signing_keys"))
        ]
    engine.dispose()
    assert stored
    assert not any("PRIVATE KEY" in value for value in stored)
    audit = httpx.get(
        f"{running.stack.origin_url}/v1/admin/audit", headers=ADMIN
    ).json()
    actions = {entry["action"] for entry in audit["entries"]}
    assert {"keys.rotate", "keys.revoke", "catalog.put"} <= actions


def test_scoped_admin_tokens(tmp_path_factory: pytest.TempPathFactory) -> None:
    with running_stack(
        tmp_path_factory.mktemp("scoped"),
        origin_options={"admin_tokens": "catalog:cat-token,keys:key-token"},
    ) as running:
        origin = running.stack.origin_url
        body = {"title": "T", "entry": "master.m3u8", "policy": {"kind": "free"}}
        catalog = {"Authorization": "Bearer cat-token"}
        keys = {"Authorization": "Bearer key-token"}
        assert httpx.put(
            f"{origin}/v1/admin/content/t", json=body, headers=catalog
        ).is_success
        response = httpx.put(f"{origin}/v1/admin/content/t", json=body, headers=keys)
        assert_problem(response, 403, "forbidden")
        assert httpx.get(f"{origin}/v1/admin/keys", headers=keys).is_success
        assert_problem(
            httpx.get(f"{origin}/v1/admin/keys", headers=catalog), 403, "forbidden"
        )
        entries = httpx.get(f"{origin}/v1/admin/audit", headers=ADMIN).json()["entries"]
        actors = {entry["actor"] for entry in entries if entry["target"] == "t"}
        assert len(actors) == 1
        assert next(iter(actors)).startswith("catalog:")
        assert all("cat-token" not in entry["actor"] for entry in entries)


def test_cli_manages_keys_and_catalog(fleet: tuple[RunningStack, ExtraEdge]) -> None:
    running, _ = fleet
    env = {
        **os.environ,
        "SEGMENTGATE_ORIGIN_URL": running.stack.origin_url,
        "SEGMENTGATE_ADMIN_TOKEN": "test-admin-token",
    }

    def cli(*args: str) -> tuple[int, object]:
        result = subprocess.run(
            [sys.executable, "-m", "segmentgate", *args],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.returncode, json.loads(result.stdout or "null")

    code, rotated = cli("keys", "rotate")
    assert code == 0
    assert rotated["state"] == "next"  # type: ignore[index]
    code, listed = cli("keys", "list")
    assert rotated["kid"] in {key["kid"] for key in listed["keys"]}  # type: ignore[index]
    code, put = cli("catalog", "put", "cli-item", "--title", "From the shell",
                    "--price", "3.50", "EUR", "--preview", "5")  # fmt: skip
    assert code == 0
    assert put["policy"]["price"]["amount"] == "3.50"  # type: ignore[index]
    for kid in ("no-such-kid", "../keys/rotate?x="):
        code, answer = cli("keys", "revoke", kid)
        assert code == 1
        assert answer["type"].endswith("not-found")  # type: ignore[index]
