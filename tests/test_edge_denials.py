"""Requests the edge must refuse, each with a problem body and no upstream read."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest

from shared.keys import SigningKey
from shared.tokens import SESSION_RENEWAL, PlaybackClaims, encode_playback_token
from tests.harness import (
    PROBLEM_PREFIX,
    AccessLog,
    RunningStack,
    Viewer,
    assert_problem,
    raw_get,
)


@pytest.fixture
def edge(stack: RunningStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.stack.edge_url, timeout=5) as client:
        yield client


def assert_edge_problem(response: httpx.Response, status: int, slug: str) -> None:
    assert_problem(response, status, slug)
    assert response.headers["segmentgate-reason"] == slug


def token_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["sg"][0]


def signed_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def origin_key(stack: RunningStack) -> SigningKey:
    assert stack.stack.origin_app is not None
    return stack.stack.origin_app.state.origin.keys.current


def test_missing_token_is_401(edge: httpx.Client) -> None:
    assert_edge_problem(edge.get("/sample/master.m3u8"), 401, "token-missing")
    assert_edge_problem(edge.get("/sample/v180/seg_000.ts"), 401, "token-missing")


def test_tampered_playback_token_is_403(edge: httpx.Client, viewer: Viewer) -> None:
    token = token_of(str(viewer.session()["playlist_url"]))
    header, payload, signature = token.split(".")
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    response = edge.get(
        "/sample/master.m3u8", params={"sg": f"{header}.{payload}.{flipped}"}
    )
    assert_edge_problem(response, 403, "token-invalid")
    assert_problem(
        edge.get("/sample/master.m3u8", params={"sg": "a.b.c"}), 403, "token-invalid"
    )


def test_token_signed_by_another_key_is_403(
    edge: httpx.Client, viewer: Viewer, stack: RunningStack
) -> None:
    impostor = SigningKey.generate("EdDSA")
    claims = PlaybackClaims(
        "ps_x", "sample", "vr_x", int(time.time()) + 600, True, 0, 0
    )
    # The origin's kid in the header, the impostor's private key underneath.
    forged = jwt.encode(
        claims.to_jwt_claims(int(time.time())),
        impostor.private_key,
        algorithm="EdDSA",
        headers={"kid": origin_key(stack).kid},
    )
    assert_problem(
        edge.get("/sample/master.m3u8", params={"sg": forged}), 403, "token-invalid"
    )
    # A key the origin never published.
    forged = encode_playback_token(claims, impostor)
    assert_problem(
        edge.get("/sample/master.m3u8", params={"sg": forged}), 403, "token-invalid"
    )


def test_expired_playback_token_is_401_expired(
    edge: httpx.Client, stack: RunningStack
) -> None:
    claims = PlaybackClaims("ps_x", "sample", "vr_x", int(time.time()) - 60, True, 0, 0)
    expired = encode_playback_token(claims, origin_key(stack))
    response = edge.get("/sample/master.m3u8", params={"sg": expired})
    assert_edge_problem(response, 401, "token-expired")


def mint_uri_token(stack: RunningStack, claims: PlaybackClaims, path: str) -> str:
    """Mint the URI token the edge would write for ``path`` in a playlist."""
    signer = stack.stack.edge_app.state.edge.signer  # type: ignore[union-attr]
    return signer.mint(signer.session_part(claims), "s0", path)


def test_session_past_renewal_is_401_expired(
    edge: httpx.Client, stack: RunningStack
) -> None:
    expired = int(time.time()) - SESSION_RENEWAL - 60
    claims = PlaybackClaims("ps_y", "sample", "vr_y", expired, True, 0, 0)
    path = "/sample/v180/seg_000.ts"
    token = mint_uri_token(stack, claims, path)
    assert_edge_problem(edge.get(path, params={"sg": token}), 401, "token-expired")


def test_token_for_other_content_is_403(edge: httpx.Client, viewer: Viewer) -> None:
    trailer = token_of(str(viewer.session("trailer")["playlist_url"]))
    response = edge.get("/sample/master.m3u8", params={"sg": trailer})
    assert_edge_problem(response, 403, "wrong-content")


def test_preview_playback_token_does_not_open_segments(
    edge: httpx.Client, viewer: Viewer
) -> None:
    token = token_of(str(viewer.session()["playlist_url"]))
    response = edge.get("/sample/v180/seg_010.ts", params={"sg": token})
    assert_edge_problem(response, 402, "preview-ended")
    response = edge.get("/sample/keys/v360.key", params={"sg": token})
    assert_edge_problem(response, 402, "preview-ended")


def test_tampered_segment_uris_are_403(edge: httpx.Client, viewer: Viewer) -> None:
    viewer.purchase()
    master = edge.get(str(viewer.session()["playlist_url"]))
    media = edge.get(str(master.url.join(signed_lines(master.text)[-1])))
    assert media.status_code == 200
    first, second = signed_lines(media.text)[:2]
    assert edge.get(str(media.url.join(first))).status_code in (200, 206)

    # A valid token moved to another segment's path.
    moved = first.replace("seg_000", "seg_001")
    assert_edge_problem(edge.get(str(media.url.join(moved))), 403, "token-invalid")
    # A later segment's token claiming an earlier start time.
    token = token_of(str(media.url.join(second)))
    version, session, scope, signature = token.split(".")
    rewound = f"{version}.{session}.s0.{signature}"
    response = edge.get("/sample/v180/seg_001.ts", params={"sg": rewound})
    assert_edge_problem(response, 403, "token-invalid")
    # One character of the signature changed, and its unused low bits.
    swapped = "A" if signature[-5] != "A" else "B"
    bad = f"{version}.{session}.{scope}.{signature[:-5]}{swapped}{signature[-4:]}"
    response = edge.get("/sample/v180/seg_001.ts", params={"sg": bad})
    assert_edge_problem(response, 403, "token-invalid")
    low_bits = {"A": "B", "B": "A"}.get(signature[-1], "A")
    bad = f"{version}.{session}.{scope}.{signature[:-1]}{low_bits}"
    response = edge.get("/sample/v180/seg_001.ts", params={"sg": bad})
    assert_edge_problem(response, 403, "token-invalid")
    # Two authorizations on one request.
    response = edge.get(
        "/sample/v180/seg_001.ts", params=[("sg", token), ("sg", token)]
    )
    assert_edge_problem(response, 403, "token-invalid")


@pytest.mark.parametrize(
    "raw_path",
    [
        b"/sample/../../pyproject.toml",
        b"/sample/%2e%2e/%2e%2e/pyproject.toml",
        b"/sample/%252e%252e/trailer/index.m3u8",
        b"/sample/v180/..%5c..%5cpyproject.toml",
        b"/sample//etc/passwd",
        b"/sample/v180/seg_000.ts%00.m3u8",
    ],
)
def test_path_traversal_is_400_and_reads_nothing(
    stack: RunningStack, access_log: AccessLog, raw_path: bytes
) -> None:
    access_log.settle(quiet=0.05)
    mark = access_log.mark()
    status, body = raw_get(stack.stack.edge_url, raw_path + b"?sg=x")
    assert status == 400, (raw_path, body)
    assert json.loads(body)["type"] == PROBLEM_PREFIX + "invalid-path"
    access_log.settle(quiet=0.05)
    assert [r.status for r in access_log.since(mark)] == [400]


def test_unknown_file_is_404_not_500(edge: httpx.Client, viewer: Viewer) -> None:
    viewer.purchase()
    master = edge.get(str(viewer.session()["playlist_url"]))
    token = token_of(str(master.url.join(signed_lines(master.text)[0])))
    # The token is for another path, so the gate refuses before the file system.
    assert_problem(
        edge.get("/sample/v180/nope.ts", params={"sg": token}), 403, "token-invalid"
    )


def test_health(edge: httpx.Client) -> None:
    body = edge.get("/_edge/healthz").json()
    assert body["status"] == "ok"
    assert body["keys"] >= 1
