"""Policy changes and withdrawals reach the edge as events, within a second."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.harness import (
    MEDIA_ROOT,
    RunningStack,
    Viewer,
    assert_problem,
    running_stack,
)

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    root = tmp_path_factory.mktemp("media")
    for name in ("film", "gone"):
        (root / name).symlink_to(MEDIA_ROOT / "sample", target_is_directory=True)
    with running_stack(tmp_path_factory.mktemp("data"), media_root=root) as running:
        yield running


def publish(stack: RunningStack, content_id: str, preview_seconds: float) -> None:
    body = {
        "title": content_id,
        "entry": "master.m3u8",
        "policy": {
            "kind": "purchase",
            "price": {"amount": "2.00", "currency": "EUR"},
            "preview_seconds": preview_seconds,
        },
    }
    response = httpx.put(
        f"{stack.stack.origin_url}/v1/admin/content/{content_id}",
        json=body,
        headers=ADMIN,
    )
    assert response.is_success, response.text


def segment_url(edge: httpx.Client, viewer: Viewer, content_id: str, name: str) -> str:
    master = edge.get(str(viewer.session(content_id)["playlist_url"]))
    variant = next(line for line in master.text.splitlines() if line.startswith("v180"))
    media = edge.get(str(master.url.join(variant)))
    segment = next(line for line in media.text.splitlines() if line.startswith(name))
    return str(media.url.join(segment))


def wait_for_status(edge: httpx.Client, url: str, status: int) -> float:
    started = time.monotonic()
    while (code := edge.get(url).status_code) != status:
        assert time.monotonic() - started < 1.0, f"still {code}"
        time.sleep(0.02)
    return time.monotonic() - started


def test_shorter_preview_applies_to_live_sessions(stack: RunningStack) -> None:
    publish(stack, "film", 10)
    viewer = Viewer(stack.stack.origin_url)
    with httpx.Client(base_url=stack.stack.edge_url, timeout=5) as edge:
        url = segment_url(edge, viewer, "film", "seg_003")  # starts at 6 s
        assert edge.get(url).status_code == 200
        publish(stack, "film", 4)
        wait_for_status(edge, url, 402)
        assert_problem(edge.get(url), 402, "preview-ended")
        publish(stack, "film", 10)
        wait_for_status(edge, url, 200)
    viewer.close()


def test_withdrawn_content_stops_everywhere(stack: RunningStack) -> None:
    publish(stack, "gone", 10)
    viewer = Viewer(stack.stack.origin_url)
    assert viewer.purchase("gone")["status"] == "granted"
    with httpx.Client(base_url=stack.stack.edge_url, timeout=5) as edge:
        url = segment_url(edge, viewer, "gone", "seg_010")
        playlist = str(viewer.session("gone")["playlist_url"])
        assert edge.get(url).status_code == 200
        response = httpx.delete(
            f"{stack.stack.origin_url}/v1/admin/content/gone", headers=ADMIN
        )
        assert response.status_code == 204
        wait_for_status(edge, url, 410)
        assert_problem(edge.get(url), 410, "content-withdrawn")
        assert_problem(edge.get(playlist), 410, "content-withdrawn")
    # The origin stops issuing sessions and lists it no more.
    response = viewer.client.post("/v1/playback-sessions", json={"content_id": "gone"})
    assert_problem(response, 410, "content-withdrawn")
    catalog = httpx.get(f"{stack.stack.origin_url}/v1/catalog").json()["items"]
    assert "gone" not in {item["content_id"] for item in catalog}
    viewer.close()
