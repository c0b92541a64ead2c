"""A preview of content packaged as one file with byte ranges reads only its ranges.

The fixture joins the sample's fMP4 init segment and media segments into
one file, as ffmpeg's ``hls_flags single_file`` does, and writes the
playlist with ``EXT-X-MAP`` and ``EXT-X-BYTERANGE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

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


def build_single_file(target: Path) -> list[tuple[int, int]]:
    """Write single.mp4 and single.m3u8; return each part's (offset, length)."""
    source = MEDIA_ROOT / "sample" / "v240"
    parts = [source / "init.mp4", *sorted(source.glob("seg_*.m4s"))]
    ranges, offset, blob = [], 0, bytearray()
    for part in parts:
        data = part.read_bytes()
        ranges.append((offset, len(data)))
        blob += data
        offset += len(data)
    target.mkdir()
    (target / "single.mp4").write_bytes(bytes(blob))
    init_offset, init_length = ranges[0]
    lines = [
        "#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:2",
        "#EXT-X-PLAYLIST-TYPE:VOD",
        f'#EXT-X-MAP:URI="single.mp4",BYTERANGE="{init_length}@{init_offset}"',
    ]  # fmt: skip
    for segment_offset, segment_length in ranges[1:]:
        byterange = f"#EXT-X-BYTERANGE:{segment_length}@{segment_offset}"
        lines += ["#EXTINF:2.000000,", byterange, "single.mp4"]
    (target / "single.m3u8").write_text("\n".join([*lines, "#EXT-X-ENDLIST", ""]))
    return ranges


@pytest.fixture(scope="module")
def packed(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningStack, list[tuple[int, int]]]]:
    root = tmp_path_factory.mktemp("media")
    ranges = build_single_file(root / "packed")
    with running_stack(tmp_path_factory.mktemp("data"), media_root=root) as running:
        body = {
            "title": "One file",
            "entry": "single.m3u8",
            "policy": {
                "kind": "purchase",
                "price": {"amount": "1.00", "currency": "EUR"},
                "preview_seconds": 4,
            },
        }
        url = f"{running.stack.origin_url}/v1/admin/content/packed"
        assert httpx.put(url, json=body, headers=ADMIN).is_success
        yield running, ranges


def signed_uris(edge: httpx.Client, viewer: Viewer) -> tuple[str, list[str]]:
    playlist = edge.get(str(viewer.session("packed")["playlist_url"]))
    assert playlist.status_code == 200, playlist.text
    map_uri = re.search(r'URI="([^"]+)"', playlist.text).group(1)  # type: ignore[union-attr]
    lines = [
        line for line in playlist.text.splitlines() if line.startswith("single.mp4")
    ]
    return str(playlist.url.join(map_uri)), [
        str(playlist.url.join(line)) for line in lines
    ]


def byte_range(offset: int, length: int) -> dict[str, str]:
    return {"Range": f"bytes={offset}-{offset + length - 1}"}


def test_preview_init_segment_reads_only_its_range(packed) -> None:
    running, ranges = packed
    viewer = Viewer(running.stack.origin_url)
    with httpx.Client(timeout=5) as edge:
        map_url, _ = signed_uris(edge, viewer)
        response = edge.get(map_url, headers=byte_range(*ranges[0]))
        assert response.status_code == 206
        assert len(response.content) == ranges[0][1]
        assert_problem(edge.get(map_url), 402, "preview-ended")
        assert_problem(
            edge.get(map_url, headers=byte_range(*ranges[5])), 402, "preview-ended"
        )
    viewer.close()


def test_preview_segments_ignore_if_range(packed) -> None:
    running, ranges = packed
    viewer = Viewer(running.stack.origin_url)
    with httpx.Client(timeout=5) as edge:
        _, segments = signed_uris(edge, viewer)
        first = byte_range(*ranges[1])
        widened = edge.get(segments[0], headers={**first, "If-Range": '"stale"'})
        assert widened.status_code == 206
        assert len(widened.content) == ranges[1][1]
        # The third segment starts at 4 s, after the preview.
        assert_problem(edge.get(segments[2], headers=byte_range(*ranges[3])), 402,
                       "preview-ended")  # fmt: skip
    viewer.close()


def test_buyer_reads_whole_ranges_freely(packed) -> None:
    running, ranges = packed
    viewer = Viewer(running.stack.origin_url)
    assert viewer.purchase("packed")["status"] == "granted"
    with httpx.Client(timeout=5) as edge:
        map_url, segments = signed_uris(edge, viewer)
        assert edge.get(map_url).status_code == 200
        assert (
            edge.get(segments[-1], headers=byte_range(*ranges[-1])).status_code == 206
        )
    viewer.close()
