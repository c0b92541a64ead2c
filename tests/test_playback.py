"""A viewer previews, pays and keeps watching, with ffmpeg as the player.

The stack is real: origin and edge under hypercorn, SQLite, the sandbox
payment provider and the bundled HLS sample. ffmpeg drops the playlist URL's
query when it fetches segments, so every segment it gets proves that the
edge wrote an authorization into that URI. Decisions are read from the
edge's access log, because a player's exit status hides them.
"""

from __future__ import annotations

import subprocess
import time
from collections import defaultdict

import httpx
import pytest

from tests.harness import MEDIA_ROOT, AccessLog, AccessRecord, RunningStack, Viewer

SAMPLE = MEDIA_ROOT / "sample"
RENDITIONS = ("v360", "v240", "v180", "audio")
PREVIEW_MS = 10_000
OK = {200, 206}


def segment_starts(rendition: str) -> dict[str, int]:
    """Map each segment file of a rendition to its start time in ms."""
    starts: dict[str, int] = {}
    elapsed = 0.0
    duration = None
    for line in (SAMPLE / rendition / "index.m3u8").read_text().splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[len("#EXTINF:") :].split(",")[0])
        elif line and not line.startswith("#"):
            starts[line] = round(elapsed * 1000)
            assert duration is not None
            elapsed += duration
    return starts


def play(
    ffmpeg: str, url: str, access_log: AccessLog, prefix: str
) -> tuple[subprocess.CompletedProcess[str], list[AccessRecord]]:
    """Read every stream of ``url`` to the end, as a player would.

    Return ffmpeg's result and the edge's records of paths under ``prefix``.
    """
    mark = access_log.mark()
    command = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "warning",
               "-i", url, "-map", "0", "-c", "copy", "-f", "null", "-"]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=180, check=False
    )
    access_log.settle()
    return result, access_log.since(mark, prefix)


def by_path(records: list[AccessRecord]) -> dict[str, list[int]]:
    statuses: dict[str, list[int]] = defaultdict(list)
    for record in records:
        statuses[record.path].append(record.status)
    return statuses


pytestmark = pytest.mark.media


def test_full_playback_after_purchase(
    stack: RunningStack, access_log: AccessLog, viewer: Viewer, ffmpeg: str
) -> None:
    purchase = viewer.purchase()
    assert purchase["status"] == "granted"
    session = viewer.session()
    assert session["preview"] is False

    result, records = play(ffmpeg, str(session["playlist_url"]), access_log, "/sample/")
    assert result.returncode == 0, result.stderr
    statuses = by_path(records)

    expected = {"/sample/master.m3u8", "/sample/keys/v360.key", "/sample/v240/init.mp4"}
    for rendition in RENDITIONS:
        expected.add(f"/sample/{rendition}/index.m3u8")
        expected.update(
            f"/sample/{rendition}/{name}" for name in segment_starts(rendition)
        )
    assert set(statuses) == expected
    # ffmpeg sends "Range: bytes=0-", and the edge responds with 206.
    assert {path for path, codes in statuses.items() if not set(codes) <= OK} == set()
    assert "Failed to open" not in result.stderr


def test_preview_serves_exactly_the_preview_segments(
    stack: RunningStack, access_log: AccessLog, viewer: Viewer, ffmpeg: str
) -> None:
    session = viewer.session()
    assert session["preview"] is True
    assert session["preview_seconds"] == 10

    _, records = play(ffmpeg, str(session["playlist_url"]), access_log, "/sample/")
    statuses = by_path(records)

    for rendition in RENDITIONS:
        for name, start_ms in segment_starts(rendition).items():
            codes = set(statuses[f"/sample/{rendition}/{name}"])
            want = OK if start_ms < PREVIEW_MS else {402}
            assert codes and codes <= want, (rendition, name, start_ms, codes)
    # The key, the init segment and every playlist open for a preview too.
    assert set(statuses["/sample/keys/v360.key"]) <= OK
    assert set(statuses["/sample/v240/init.mp4"]) <= OK
    denied = [r for r in records if r.status == 402]
    assert denied and {r.reason for r in denied} == {"preview-ended"}


def _segment_url(
    client: httpx.Client, playlist_url: str, rendition: str, name: str
) -> str:
    """Follow the rewritten master playlist to one segment's signed URL."""
    master = client.get(playlist_url)
    assert master.status_code == 200, master.text
    media_uri = next(
        line for line in master.text.splitlines() if line.startswith(f"{rendition}/")
    )
    media_url = str(master.url.join(media_uri))
    media = client.get(media_url)
    assert media.status_code == 200, media.text
    segment_uri = next(
        line for line in media.text.splitlines() if line.startswith(name)
    )
    return str(media.url.join(segment_uri))


def _wait_for_status(
    client: httpx.Client, url: str, status: int, limit: float
) -> float:
    started = time.monotonic()
    while True:
        code = client.get(url).status_code
        elapsed = time.monotonic() - started
        if code == status:
            return elapsed
        assert elapsed < limit, f"still {code} after {elapsed:.2f} s"
        time.sleep(0.02)


def test_unlock_and_revoke_within_a_second(stack: RunningStack, viewer: Viewer) -> None:
    session = viewer.session()
    with httpx.Client(timeout=5) as client:
        url = _segment_url(client, str(session["playlist_url"]), "v180", "seg_010.ts")
        denied = client.get(url)
        assert denied.status_code == 402
        assert denied.json()["type"] == "urn:segmentgate:problem:preview-ended"

        purchase = viewer.purchase()
        assert purchase["status"] == "granted"
        unlock = _wait_for_status(client, url, 200, limit=1.0)

        viewer.refund(str(purchase["purchase_id"]))
        revoke = _wait_for_status(client, url, 402, limit=1.0)
    assert unlock < 1.0
    assert revoke < 1.0


def test_free_content_plays_without_purchase(
    stack: RunningStack, access_log: AccessLog, viewer: Viewer, ffmpeg: str
) -> None:
    session = viewer.session("trailer")
    assert session["preview"] is False
    result, records = play(
        ffmpeg, str(session["playlist_url"]), access_log, "/trailer/"
    )
    assert result.returncode == 0, result.stderr
    statuses = by_path(records)
    assert {f"/trailer/seg_00{i}.ts" for i in range(4)} <= set(statuses)
    assert all(set(codes) <= OK for codes in statuses.values())
