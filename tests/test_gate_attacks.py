"""Attacks on the gate, against an edge that streams from an HTTP upstream.

The upstream is a plain static server that records every request, standing
for a CDN or packager, so each test can check that a rejected request never
reached it.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from shared.tokens import PlaybackClaims
from tests.harness import (
    MEDIA_ROOT,
    MediaServer,
    RunningStack,
    Viewer,
    assert_problem,
    raw_get,
    running_stack,
)

SEGMENT = "/sample/v180/seg_000.ts"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MediaServer]:
    root = tmp_path_factory.mktemp("upstream")
    for content_id in ("sample", "trailer"):
        shutil.copytree(MEDIA_ROOT / content_id, root / content_id)
    playlist = (MEDIA_ROOT / "trailer" / "index.m3u8").read_bytes()
    (root / "bom").mkdir()
    (root / "bom" / "index.m3u8").write_bytes(b"\xef\xbb\xbf" + playlist)
    (root / "junk").mkdir()
    (root / "junk" / "index.m3u8").write_bytes(b"seg_000.ts\n" + playlist)
    server = MediaServer(root).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gated(
    tmp_path_factory: pytest.TempPathFactory, upstream: MediaServer
) -> Iterator[RunningStack]:
    with running_stack(
        tmp_path_factory.mktemp("gated"), upstream_url=upstream.url
    ) as running:
        admin = {"Authorization": "Bearer test-admin-token"}
        for content_id in ("bom", "junk"):
            body = {
                "title": content_id,
                "entry": "index.m3u8",
                "policy": {"kind": "free"},
            }
            response = httpx.put(
                f"{running.stack.origin_url}/v1/admin/content/{content_id}",
                json=body,
                headers=admin,
            )
            assert response.status_code == 201, response.text
        yield running


@pytest.fixture
def edge(gated: RunningStack, upstream: MediaServer) -> Iterator[httpx.Client]:
    upstream.requests.clear()
    with httpx.Client(base_url=gated.stack.edge_url, timeout=5) as client:
        yield client


@pytest.fixture
def buyer(gated: RunningStack) -> Iterator[Viewer]:
    viewer = Viewer(gated.stack.origin_url)
    assert viewer.purchase()["status"] == "granted"
    yield viewer
    viewer.close()


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["sg"][0]


def claims_payload(**changes: object) -> dict[str, object]:
    now = int(time.time())
    claims = PlaybackClaims("ps_a", "sample", "vr_a", now + 600, True, 0, 0.0)
    payload = claims.to_jwt_claims(issued_at=now)
    payload.update(changes)
    return payload


def origin_jwk(stack: RunningStack) -> dict[str, str]:
    response = httpx.get(f"{stack.stack.origin_url}/.well-known/jwks.json")
    return dict(response.json()["keys"][0])


def sign_as_origin(stack: RunningStack, payload: dict[str, object]) -> str:
    key = stack.stack.origin_app.state.origin.keys.current  # type: ignore[union-attr]
    return jwt.encode(
        payload, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid}
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(header: dict[str, str], payload: dict[str, object]) -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}."


def assert_untouched(upstream: MediaServer) -> None:
    assert upstream.requests == []


# JWT attacks: each on the entry playlist, each must leave the upstream alone.


def test_alg_none_is_rejected(edge, gated, upstream) -> None:
    kid = origin_jwk(gated)["kid"]
    token = unsigned_token({"alg": "none", "typ": "JWT", "kid": kid}, claims_payload())
    # The empty signature makes the token end in ".", outside a JWT's shape
    # for the edge, which still must not serve it.
    response = edge.get("/sample/master.m3u8", params={"sg": token + "x"})
    assert_problem(response, 403, "token-invalid")
    assert_untouched(upstream)


def test_hmac_with_public_key_is_rejected(edge, gated, upstream) -> None:
    jwk = origin_jwk(gated)
    secret = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    token = jwt.encode(
        claims_payload(), secret, algorithm="HS256", headers={"kid": jwk["kid"]}
    )
    assert_problem(
        edge.get("/sample/master.m3u8", params={"sg": token}), 403, "token-invalid"
    )
    assert_untouched(upstream)


def test_algorithm_other_than_the_keys_is_rejected(edge, gated, upstream) -> None:
    genuine = sign_as_origin(gated, claims_payload())
    _, payload, signature = genuine.split(".")
    swapped_header = b64(
        b'{"alg":"ES256","typ":"JWT","kid":"'
        + origin_jwk(gated)["kid"].encode()
        + b'"}'
    )
    token = f"{swapped_header}.{payload}.{signature}"
    assert_problem(
        edge.get("/sample/master.m3u8", params={"sg": token}), 403, "token-invalid"
    )
    assert_untouched(upstream)


@pytest.mark.parametrize(
    "kid", ["../../jwks.json", "http://127.0.0.1:1/k", "", "x" * 300]
)
def test_unknown_kid_is_rejected(edge, gated, upstream, kid: str) -> None:
    key = gated.stack.origin_app.state.origin.keys.current  # type: ignore[union-attr]
    token = jwt.encode(
        claims_payload(), key.private_key, algorithm=key.algorithm, headers={"kid": kid}
    )
    assert_problem(
        edge.get("/sample/master.m3u8", params={"sg": token}), 403, "token-invalid"
    )
    assert_untouched(upstream)


@pytest.mark.parametrize(
    ("changes", "status", "slug"),
    [
        ({"aud": "someone-else"}, 403, "token-invalid"),
        ({"iss": "someone-else"}, 403, "token-invalid"),
        ({"nbf": int(time.time()) + 3600}, 403, "token-invalid"),
        ({"exp": int(time.time()) - 60}, 401, "token-expired"),
        ({"exp": int(time.time()) + 30 * 86400}, 403, "token-invalid"),
        ({"ent": "yes"}, 403, "token-invalid"),
        ({"cid": "trailer"}, 403, "wrong-content"),
    ],
)
def test_claims_are_checked(edge, gated, upstream, changes, status, slug) -> None:
    token = sign_as_origin(gated, claims_payload(**changes))
    assert_problem(edge.get("/sample/master.m3u8", params={"sg": token}), status, slug)
    assert_untouched(upstream)


def test_missing_required_claim_is_rejected(edge, gated, upstream) -> None:
    payload = claims_payload()
    del payload["iat"]
    token = sign_as_origin(gated, payload)
    assert_problem(
        edge.get("/sample/master.m3u8", params={"sg": token}), 403, "token-invalid"
    )
    assert_untouched(upstream)


def test_oversized_token_is_rejected(edge, upstream) -> None:
    response = edge.get("/sample/master.m3u8", params={"sg": "a." * 3000 + "b"})
    assert_problem(response, 403, "token-invalid")
    assert_untouched(upstream)


# URI token attacks.


def signed_segment_url(
    edge: httpx.Client, viewer: Viewer, rendition: str = "v180"
) -> str:
    master = edge.get(str(viewer.session()["playlist_url"]))
    assert master.status_code == 200, master.text
    media_uri = next(
        line for line in master.text.splitlines() if line.startswith(rendition)
    )
    media = edge.get(str(master.url.join(media_uri)))
    segment = next(
        line for line in media.text.splitlines() if line.startswith("seg_000")
    )
    return str(media.url.join(segment))


@pytest.mark.parametrize("garbage", ['"', "%00", "\r\n", " ", "<script>", "é"])
def test_token_outside_alphabet_is_rejected(edge, buyer, upstream, garbage) -> None:
    token = token_of(signed_segment_url(edge, buyer))
    upstream.requests.clear()
    response = edge.get(SEGMENT, params={"sg": token[:10] + garbage + token[10:]})
    assert_problem(response, 403, "token-invalid")
    assert_untouched(upstream)


def test_percent_encoded_token_is_the_same_token(edge, buyer, upstream) -> None:
    token = token_of(signed_segment_url(edge, buyer))
    encoded = "".join(f"%{ord(c):02X}" if c in "._-" else c for c in token)
    url = httpx.URL(edge.base_url).copy_with(
        raw_path=f"{SEGMENT}?sg={encoded}".encode()
    )
    assert edge.get(url).status_code == 200


def test_token_of_other_content_is_rejected(edge, buyer, upstream) -> None:
    token = token_of(signed_segment_url(edge, buyer))
    upstream.requests.clear()
    response = edge.get("/trailer/seg_000.ts", params={"sg": token})
    assert_problem(response, 403, "token-invalid")
    assert_untouched(upstream)


def test_duplicate_token_parameters_are_rejected(edge, buyer, upstream) -> None:
    token = token_of(signed_segment_url(edge, buyer))
    upstream.requests.clear()
    response = edge.get(SEGMENT, params=[("sg", token), ("sg", token)])
    assert_problem(response, 403, "token-invalid")
    assert_untouched(upstream)


# Paths.


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/sample/../trailer/index.m3u8",
        b"/sample/%2e%2e/trailer/index.m3u8",
        b"/sample/%252e%252e/trailer/index.m3u8",
        b"/sample/..%2ftrailer/index.m3u8",
        b"/sample/..%5ctrailer%5cindex.m3u8",
        b"/sample/%c0%ae%c0%ae/trailer/index.m3u8",
        b"/sample/%e0%80%ae%e0%80%ae/trailer/index.m3u8",
        b"/sample/v180/seg_000.ts%00.m3u8",
        b"/sample/v180/%0d%0aseg_000.ts",
        b"/sample/./v180/seg_000.ts",
        b"/%2e%2e/etc/passwd",
        b"/sample",
        b"/_sg/",
    ],
)
def test_traversal_is_400_before_upstream(edge, upstream, raw_path: bytes) -> None:
    status, body = raw_get(str(edge.base_url), raw_path + b"?sg=x")
    assert status == 400, body
    assert json.loads(body)["type"] == "urn:segmentgate:problem:invalid-path"
    assert_untouched(upstream)


# Request values never reach the upstream or a playlist, except checked
# LL-HLS delivery directives.


@pytest.mark.parametrize(
    "query",
    [
        {"_HLS_msn": "1\r\n#EXT-X-ENDLIST"},
        {"_HLS_msn": "-1"},
        {"_HLS_skip": "NO"},
        {"_HLS_part": "1"},
    ],
)
def test_bad_delivery_directives_are_400(edge, buyer, upstream, query) -> None:
    token = token_of(str(buyer.session()["playlist_url"]))
    response = edge.get("/sample/master.m3u8", params={"sg": token, **query})
    assert_problem(response, 400, "invalid-request")
    assert_untouched(upstream)


def test_delivery_directives_pass_upstream_alone(edge, buyer, upstream) -> None:
    token = token_of(str(buyer.session()["playlist_url"]))
    response = edge.get(
        "/sample/master.m3u8",
        params={"sg": token, "_HLS_msn": "5", "_HLS_part": "2", "_HLS_skip": "YES",
                "x": "\r\n#EXT-X-KEY:METHOD=NONE"},
    )  # fmt: skip
    assert response.status_code == 200
    assert upstream.requests == [
        "/sample/master.m3u8?_HLS_msn=5&_HLS_part=2&_HLS_skip=YES"
    ]
    assert b"METHOD=NONE" not in response.content
    assert response.content.count(b"sg=") == 4


# Upstream playlists that break the format.


def test_bom_is_removed_from_upstream_playlist(edge, buyer, gated) -> None:
    session = buyer.session("bom")
    response = edge.get(str(session["playlist_url"]))
    assert response.status_code == 200
    assert response.content.startswith(b"#EXTM3U\n")


def test_junk_before_header_is_502(edge, buyer) -> None:
    session = buyer.session("junk")
    assert_problem(edge.get(str(session["playlist_url"])), 502, "upstream-invalid")


def test_missing_upstream_file_is_404(edge, gated, buyer) -> None:
    signer = gated.stack.edge_app.state.edge.signer  # type: ignore[union-attr]
    claims = PlaybackClaims("ps_n", "sample", "vr_n", int(time.time()) + 60, True, 0, 0)
    path = "/sample/v180/missing.ts"
    token = signer.mint(signer.session_part(claims), "s0", path)
    assert_problem(edge.get(path, params={"sg": token}), 404, "not-found")


# HTTP behaviour through the HTTP upstream.


def test_range_and_head_through_http_upstream(edge, buyer) -> None:
    url = signed_segment_url(edge, buyer)
    size = (MEDIA_ROOT / "sample/v180/seg_000.ts").stat().st_size
    partial = edge.get(url, headers={"Range": "bytes=0-187"})
    assert partial.status_code == 206
    assert partial.headers["content-range"] == f"bytes 0-187/{size}"
    assert len(partial.content) == 188
    beyond = edge.get(url, headers={"Range": f"bytes={size + 10}-"})
    assert beyond.status_code == 416
    head = edge.head(url)
    assert head.status_code == 200
    assert head.headers["content-length"] == str(size)
    assert head.content == b""
