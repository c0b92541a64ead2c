"""nginx serves the media files and the edge decides, with auth_request.

Real nginx runs the repository's deploy/nginx-auth-request.conf against the
session's real origin and edge. The edge's access log shows which requests
reached it, so the tests can tell that nginx, not the edge, sent a segment.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from benchmarks.nginx import Nginx, auth_request_server, nginx_binary
from tests.harness import (
    MEDIA_ROOT,
    AccessLog,
    RunningStack,
    Viewer,
    assert_problem,
    free_port,
    raw_get,
)

SEGMENT_PAST_PREVIEW = "seg_010.ts"
SEGMENT_IN_PREVIEW = "seg_001.ts"


@pytest.fixture(scope="module")
def nginx_url(stack: RunningStack) -> Iterator[str]:
    if nginx_binary() is None:
        pytest.skip("nginx is not installed; `make bench` installs it with apt-get")
    port = free_port()
    edge = urlsplit(stack.stack.edge_url).netloc
    nginx = Nginx([auth_request_server(port, MEDIA_ROOT, edge)])
    try:
        nginx.wait_for(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        nginx.stop()


def _through_nginx(url: str, nginx_url: str) -> str:
    parts = urlsplit(url)
    return nginx_url + parts.path + (f"?{parts.query}" if parts.query else "")


def _segment_url(
    client: httpx.Client, playlist_url: str, rendition: str, name: str
) -> str:
    master = client.get(playlist_url)
    assert master.status_code == 200, master.text
    media_uri = next(
        line for line in master.text.splitlines() if line.startswith(f"{rendition}/")
    )
    media = client.get(str(master.url.join(media_uri)))
    assert media.status_code == 200, media.text
    segment_uri = next(
        line for line in media.text.splitlines() if line.startswith(name)
    )
    return str(media.url.join(segment_uri))


def _wait_for_status(client: httpx.Client, url: str, status: int) -> None:
    deadline = time.monotonic() + 5.0
    code = None
    while time.monotonic() < deadline:
        code = client.get(url).status_code
        if code == status:
            return
        time.sleep(0.02)
    raise AssertionError(f"still {code} after 5 s, expected {status}")


def test_entitled_segment_sent_by_nginx(
    nginx_url: str, viewer: Viewer, access_log: AccessLog
) -> None:
    viewer.purchase()
    playlist = _through_nginx(str(viewer.session()["playlist_url"]), nginx_url)
    with httpx.Client(timeout=5) as client:
        url = _segment_url(client, playlist, "v180", SEGMENT_PAST_PREVIEW)
        mark = access_log.mark()
        response = client.get(url)
    access_log.settle()
    expected = (MEDIA_ROOT / "sample" / "v180" / SEGMENT_PAST_PREVIEW).read_bytes()
    assert response.status_code == 200
    assert response.content == expected
    assert response.headers["content-type"] == "video/mp2t"
    assert response.headers["cache-control"] == "private, max-age=86400"
    reached_edge = {record.path for record in access_log.since(mark)}
    assert "/_edge/authorize" in reached_edge
    assert f"/sample/v180/{SEGMENT_PAST_PREVIEW}" not in reached_edge


def test_playlist_rewritten_by_edge(nginx_url: str, viewer: Viewer) -> None:
    playlist = _through_nginx(str(viewer.session()["playlist_url"]), nginx_url)
    with httpx.Client(timeout=5) as client:
        response = client.get(playlist)
    assert response.status_code == 200
    variants = [line for line in response.text.splitlines() if line.startswith("v180/")]
    assert variants
    assert all("sg=" in line for line in variants)
    assert response.headers["cache-control"] == "private, no-store"


def test_tampered_token_rejected(nginx_url: str, viewer: Viewer) -> None:
    viewer.purchase()
    playlist = _through_nginx(str(viewer.session()["playlist_url"]), nginx_url)
    with httpx.Client(timeout=5) as client:
        url = _segment_url(client, playlist, "v180", SEGMENT_PAST_PREVIEW)
        tampered = url[:-2] + ("AA" if not url.endswith("AA") else "BB")
        response = client.get(tampered)
    assert_problem(response, 403, "token-invalid")


def test_missing_token_rejected(nginx_url: str) -> None:
    response = httpx.get(f"{nginx_url}/sample/v180/{SEGMENT_PAST_PREVIEW}")
    assert_problem(response, 401, "token-missing")


def test_preview_past_its_end_is_402(nginx_url: str, viewer: Viewer) -> None:
    playlist = _through_nginx(str(viewer.session()["playlist_url"]), nginx_url)
    with httpx.Client(timeout=5) as client:
        inside = client.get(_segment_url(client, playlist, "v180", SEGMENT_IN_PREVIEW))
        past = client.get(_segment_url(client, playlist, "v180", SEGMENT_PAST_PREVIEW))
    assert inside.status_code == 200
    assert_problem(past, 402, "preview-ended")


def test_revocation_applies_to_next_requests(nginx_url: str, viewer: Viewer) -> None:
    purchase = viewer.purchase()
    assert purchase["status"] == "granted"
    playlist = _through_nginx(str(viewer.session()["playlist_url"]), nginx_url)
    with httpx.Client(timeout=5) as client:
        url = _segment_url(client, playlist, "v180", SEGMENT_PAST_PREVIEW)
        assert client.get(url).status_code == 200
        viewer.refund(str(purchase["purchase_id"]))
        _wait_for_status(client, url, 402)
        # nginx keeps no decision: the denial holds on every later request.
        for _ in range(5):
            assert_problem(client.get(url), 402, "preview-ended")


def test_authorize_endpoint_hidden(nginx_url: str) -> None:
    response = httpx.get(
        f"{nginx_url}/_edge/authorize",
        headers={"X-Original-URI": "/sample/v180/seg_000.ts"},
    )
    assert response.status_code == 404


def test_dot_segments_rejected(nginx_url: str) -> None:
    status, body = raw_get(nginx_url, b"/sample/v180/../v180/seg_000.ts?sg=x.y.z.w")
    assert status == 400
    assert b"invalid-path" in body


def test_authorize_denials_sent_as_403(stack: RunningStack, viewer: Viewer) -> None:
    # nginx turns any subrequest status but 2xx, 401 and 403 into a 500, so
    # the endpoint sends 403 and names the real status in a header.
    url = f"{stack.stack.edge_url}/_edge/authorize"
    playlist = urlsplit(str(viewer.session()["playlist_url"]))
    missing = httpx.get(url)
    rewritten_only = httpx.get(
        url, headers={"X-Original-URI": f"{playlist.path}?{playlist.query}"}
    )
    past_preview = httpx.get(
        url, headers={"X-Original-URI": f"/sample/v180/{SEGMENT_PAST_PREVIEW}"}
    )
    assert missing.status_code == 403
    assert missing.headers["segmentgate-decision-status"] == "400"
    assert missing.json()["type"].endswith("invalid-request")
    assert rewritten_only.status_code == 403
    assert rewritten_only.headers["segmentgate-decision-status"] == "403"
    assert past_preview.status_code == 403
    assert past_preview.headers["segmentgate-decision-status"] == "401"
    assert past_preview.json()["type"].endswith("token-missing")
