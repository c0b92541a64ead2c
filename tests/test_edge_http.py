"""Token transports, session renewal and HTTP behaviour of the edge."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from shared.tokens import PlaybackClaims
from tests.harness import MEDIA_ROOT, AccessLog, RunningStack, Viewer, assert_problem

SEGMENT = "/sample/v180/seg_000.ts"


@pytest.fixture
def edge(stack: RunningStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.stack.edge_url, timeout=5) as client:
        yield client


@pytest.fixture
def buyer(viewer: Viewer) -> Viewer:
    assert viewer.purchase()["status"] == "granted"
    return viewer


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["sg"][0]


def uri_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def viewer_ref(viewer: Viewer) -> str:
    token = str(viewer.session()["token"])
    return str(jwt.decode(token, options={"verify_signature": False})["sub"])


# Transports.


def test_bearer_header_opens_playlists_and_entitled_segments(
    edge: httpx.Client, buyer: Viewer
) -> None:
    token = str(buyer.session()["token"])
    bearer = {"Authorization": f"Bearer {token}"}
    master = edge.get("/sample/master.m3u8", headers=bearer)
    assert master.status_code == 200
    assert "sg=" in master.text
    assert edge.get(SEGMENT, headers=bearer).status_code == 200


def test_bearer_header_of_preview_opens_no_segments(
    edge: httpx.Client, viewer: Viewer
) -> None:
    bearer = {"Authorization": f"Bearer {viewer.session()['token']}"}
    assert edge.get("/sample/v180/index.m3u8", headers=bearer).status_code == 200
    assert_problem(edge.get(SEGMENT, headers=bearer), 402, "preview-ended")


def test_garbage_bearer_is_403(edge: httpx.Client) -> None:
    response = edge.get(
        "/sample/master.m3u8", headers={"Authorization": "Bearer x.y.z"}
    )
    assert_problem(response, 403, "token-invalid")
    response = edge.get("/sample/master.m3u8", headers={"Authorization": "Basic Zm9v"})
    assert_problem(response, 401, "token-missing")


def test_path_prefix_is_inherited_by_relative_uris(
    edge: httpx.Client, buyer: Viewer, access_log: AccessLog
) -> None:
    response = buyer.client.post(
        "/v1/playback-sessions", json={"content_id": "sample", "transport": "path"}
    )
    assert response.status_code == 201
    url = response.json()["playlist_url"]
    assert "/_sg/" in url
    assert "?" not in url
    master = edge.get(url)
    assert master.status_code == 200
    # A player that drops every query still plays: the prefix carries the token.
    variant = uri_lines(master.text)[-1].split("?")[0]
    media = edge.get(str(master.url.join(variant)))
    assert media.status_code == 200
    segment = uri_lines(media.text)[0].split("?")[0]
    assert edge.get(str(media.url.join(segment))).status_code == 200
    # The token never reaches the access log.
    access_log.settle(quiet=0.05)
    assert all("/_sg/" not in record.path for record in access_log.records)


def test_unknown_transport_is_400(viewer: Viewer) -> None:
    response = viewer.client.post(
        "/v1/playback-sessions", json={"content_id": "sample", "transport": "cookie"}
    )
    assert_problem(response, 400, "invalid-request")


# Session renewal: URI tokens outlive the session while the viewer is entitled.


def uri_token(
    stack: RunningStack, claims: PlaybackClaims, path: str, scope: str = "s0"
) -> str:
    signer = stack.stack.edge_app.state.edge.signer  # type: ignore[union-attr]
    return signer.mint(signer.session_part(claims), scope, path)


def test_expired_session_renews_until_refund(
    edge: httpx.Client, stack: RunningStack, viewer: Viewer
) -> None:
    purchase = viewer.purchase()
    ref = viewer_ref(viewer)
    # Issued entitled, expired an hour ago: a paused film resuming.
    claims = PlaybackClaims("ps_r", "sample", ref, int(time.time()) - 3600, True, 1, 10)
    token = uri_token(stack, claims, "/sample/v180/seg_012.ts", "s24000")
    assert edge.get("/sample/v180/seg_012.ts", params={"sg": token}).status_code == 200

    viewer.refund(str(purchase["purchase_id"]))
    deadline = time.monotonic() + 1.0
    while True:
        response = edge.get("/sample/v180/seg_012.ts", params={"sg": token})
        if response.status_code != 200 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert_problem(response, 401, "token-expired")


def test_expired_preview_session_does_not_renew(
    edge: httpx.Client, stack: RunningStack
) -> None:
    claims = PlaybackClaims(
        "ps_p", "sample", "vr_p", int(time.time()) - 60, False, 0, 10
    )
    token = uri_token(stack, claims, SEGMENT)
    assert_problem(edge.get(SEGMENT, params={"sg": token}), 401, "token-expired")


def test_key_token_is_stable_across_reloads(edge: httpx.Client, buyer: Viewer) -> None:
    session = buyer.session()
    keys = []
    for _ in range(2):
        master = edge.get(str(session["playlist_url"]))
        v360 = next(line for line in uri_lines(master.text) if line.startswith("v360"))
        media = edge.get(str(master.url.join(v360)))
        keys.append(
            next(line for line in media.text.splitlines() if "EXT-X-KEY" in line)
        )
    assert keys[0] == keys[1]


# HTTP.


def test_range_head_and_416_from_files(edge: httpx.Client, buyer: Viewer) -> None:
    token = str(buyer.session()["token"])
    bearer = {"Authorization": f"Bearer {token}"}
    size = (MEDIA_ROOT / SEGMENT.lstrip("/")).stat().st_size
    partial = edge.get(SEGMENT, headers={**bearer, "Range": "bytes=188-375"})
    assert partial.status_code == 206
    assert partial.headers["content-range"] == f"bytes 188-375/{size}"
    assert len(partial.content) == 188
    suffix = edge.get(SEGMENT, headers={**bearer, "Range": "bytes=-100"})
    assert suffix.status_code == 206
    assert len(suffix.content) == 100
    beyond = edge.get(SEGMENT, headers={**bearer, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    head = edge.head(SEGMENT, headers=bearer)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(size)
    assert head.content == b""


def test_playlist_head_matches_get(edge: httpx.Client, buyer: Viewer) -> None:
    url = str(buyer.session()["playlist_url"])
    head, get = edge.head(url), edge.get(url)
    assert head.status_code == 200
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(get.content)


def test_playlists_are_private(edge: httpx.Client, buyer: Viewer) -> None:
    response = edge.get(str(buyer.session()["playlist_url"]))
    assert response.headers["cache-control"] == "private, no-store"
    assert response.headers["content-type"].startswith("application/vnd.apple.mpegurl")


def test_two_viewers_never_get_the_same_playlist(edge: httpx.Client, stack) -> None:
    first, second = Viewer(stack.stack.origin_url), Viewer(stack.stack.origin_url)
    try:
        one = edge.get(str(first.session()["playlist_url"])).text
        two = edge.get(str(second.session()["playlist_url"])).text
    finally:
        first.close()
        second.close()
    assert set(uri_lines(one)).isdisjoint(uri_lines(two))


def test_cors_preflight(edge: httpx.Client) -> None:
    response = edge.options(
        SEGMENT,
        headers={
            "Origin": "https://player.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "range",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in (
        "*",
        "https://player.example",
    )
    assert "range" in response.headers["access-control-allow-headers"].lower()


@pytest.mark.parametrize(
    ("params", "status", "slug"),
    [({}, 401, "token-missing"), ({"sg": "1.a.p.b"}, 403, "token-invalid")],
)
def test_denials_carry_cors_reason_and_time(
    edge: httpx.Client, params: dict[str, str], status: int, slug: str
) -> None:
    response = edge.get(
        SEGMENT, params=params, headers={"Origin": "https://player.example"}
    )
    assert_problem(response, status, slug)
    assert response.headers["access-control-allow-origin"] in (
        "*",
        "https://player.example",
    )
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "segmentgate-reason" in exposed
    assert "date" in exposed
    assert response.headers["segmentgate-reason"] == slug
    assert response.headers["date"]
    assert response.headers["cache-control"] == "no-store"


def test_preview_byte_range_segment_reads_only_its_range(
    edge: httpx.Client, stack: RunningStack
) -> None:
    claims = PlaybackClaims(
        "ps_b", "sample", "vr_b", int(time.time()) + 600, False, 0, 10
    )
    # A preview segment that is bytes 0-187 of a larger file.
    token = uri_token(stack, claims, SEGMENT, "s0r0-188")
    inside = edge.get(SEGMENT, params={"sg": token}, headers={"Range": "bytes=0-187"})
    assert inside.status_code == 206
    for header in (
        {},
        {"Range": "bytes=0-188"},
        {"Range": "bytes=0-"},
        {"Range": "bytes=-10"},
    ):
        response = edge.get(SEGMENT, params={"sg": token}, headers=header)
        assert_problem(response, 402, "preview-ended")


@pytest.mark.parametrize(
    "header", ["bytes=50-10", "items=0-5", "bytes=abc", "bytes=-", "bytes="]
)
def test_invalid_range_is_ignored(
    edge: httpx.Client, buyer: Viewer, header: str
) -> None:
    bearer = {"Authorization": f"Bearer {buyer.session()['token']}"}
    size = (MEDIA_ROOT / SEGMENT.lstrip("/")).stat().st_size
    response = edge.get(SEGMENT, headers={**bearer, "Range": header})
    assert response.status_code == 200
    assert len(response.content) == size


def test_unsatisfiable_range_is_a_problem(edge: httpx.Client, buyer: Viewer) -> None:
    bearer = {"Authorization": f"Bearer {buyer.session()['token']}"}
    size = (MEDIA_ROOT / SEGMENT.lstrip("/")).stat().st_size
    response = edge.get(SEGMENT, headers={**bearer, "Range": f"bytes={size + 5}-"})
    assert_problem(response, 416, "range-not-satisfiable")
    assert response.headers["content-range"] == f"bytes */{size}"


def test_media_is_privately_cacheable(edge: httpx.Client, buyer: Viewer) -> None:
    bearer = {"Authorization": f"Bearer {buyer.session()['token']}"}
    assert edge.get(SEGMENT, headers=bearer).headers["cache-control"] == (
        "private, max-age=86400"
    )


def test_wrong_method_lists_allowed(edge: httpx.Client) -> None:
    response = edge.post(SEGMENT)
    assert_problem(response, 405, "method-not-allowed")
    assert "GET" in response.headers["allow"]


def test_warm_segment_path_never_asks_the_origin(
    edge: httpx.Client, stack: RunningStack, buyer: Viewer
) -> None:
    link = stack.stack.edge_app.state.edge.link  # type: ignore[union-attr]
    master = edge.get(str(buyer.session()["playlist_url"]))
    media = edge.get(str(master.url.join(uri_lines(master.text)[-1])))
    segment = str(media.url.join(uri_lines(media.text)[5]))
    assert edge.get(segment).status_code == 200  # warms every cache
    before = link.requests.copy()
    for _ in range(300):
        assert edge.get(segment, headers={"Range": "bytes=0-187"}).status_code == 206
    made = link.requests - before
    # Besides the timed feed poll, at most one background revalidation of the
    # policy may run, if its 60 s freshness ran out meanwhile.
    assert set(made) <= {"/v1/events", "/v1/catalog/sample"}
    assert made["/v1/catalog/sample"] <= 1


def test_nested_path_tokens_stay_out_of_problems(
    edge: httpx.Client, buyer: Viewer
) -> None:
    token = str(buyer.session()["token"])
    response = edge.get(f"/_sg/{token}/_sg/{token}/sample/master.m3u8")
    assert_problem(response, 400, "invalid-path")
    assert token not in response.text


def test_renewal_checks_the_origin_once_per_viewer(
    edge: httpx.Client, stack: RunningStack, viewer: Viewer
) -> None:
    viewer.purchase()
    ref = viewer_ref(viewer)
    lookups = stack.stack.edge_app.state.edge.lookups  # type: ignore[union-attr]
    before = lookups.origin_requests
    # A session that expired an hour ago, issued entitled, renews as long as
    # the origin's own record shows it entitled; many requests, one lookup.
    claims = PlaybackClaims("ps_l", "sample", ref, int(time.time()) - 3600, True, 1, 10)
    token = uri_token(stack, claims, "/sample/v180/seg_012.ts", "s24000")
    for _ in range(20):
        response = edge.get("/sample/v180/seg_012.ts", params={"sg": token})
        assert response.status_code == 200
    assert lookups.origin_requests - before == 1
