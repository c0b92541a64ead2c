"""A viewer plays the sample with hls.js in headless Chromium, through the edge.

hls.js (pinned in tests/browser/package.json) runs in Debian's Chromium,
driven by Playwright, on a page served from another 127.0.0.1 port, so
every request crosses origins as it does from a real site. hls.js fetches
each URI of the rewritten playlists as written, including the AES-128 key
and the fMP4 init segment. hls.js 1.7.4 does not retry a 4xx response. It
reports a non-fatal error, switches level and plays on, so a page that
played to the end may still have been denied a segment. Every decision is
therefore also read from the edge's access log.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pytest

from tests.harness import AccessLog, AccessRecord, RunningStack, Viewer
from tests.test_playback import OK, PREVIEW_MS, by_path, segment_starts

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright package is missing; `make test` installs the test extra",
)

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
BROWSER_DIR = Path(__file__).resolve().parent / "browser"
PLAYER_PAGE = BROWSER_DIR / "player.html"
HLS_JS = BROWSER_DIR / "node_modules" / "hls.js" / "dist" / "hls.min.js"

VIDEO_RENDITIONS = ("v360", "v240", "v180")
SAMPLE_SECONDS = 30.0
# The <video> element plays this many times faster than real time, so the
# 30 s sample ends in a few seconds; hls.js still fetches every segment.
PLAYBACK_RATE = 8.0
PLAYBACK_TIMEOUT_MS = 30_000


class PlayerFiles(BaseHTTPRequestHandler):
    """Request handler for the player page and hls.js, and nothing else."""

    files: ClassVar[dict[str, tuple[Path, str]]] = {
        "/player.html": (PLAYER_PAGE, "text/html; charset=utf-8"),
        "/hls.min.js": (HLS_JS, "text/javascript; charset=utf-8"),
    }

    def do_GET(self) -> None:
        entry = self.files.get(self.path)
        if entry is None:
            self.send_error(404)
            return
        path, media_type = entry
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Write no line per request to stderr."""


@pytest.fixture(scope="module")
def player_url() -> Iterator[str]:
    if not HLS_JS.is_file():
        pytest.skip(
            f"hls.js is missing at {HLS_JS}; run `npm ci` in {BROWSER_DIR} "
            "(`make test` does)"
        )
    server = ThreadingHTTPServer(("127.0.0.1", 0), PlayerFiles)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/player.html"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Headless Chromium with a temporary HOME.

    ``launch`` gives the browser a new temporary profile directory and
    removes it on close.
    """
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Chromium is missing at {CHROMIUM}; `make test` installs it with "
            "apt-get when it runs as root"
        )
    home = tmp_path_factory.mktemp("chromium-home")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            env={**os.environ, "HOME": str(home)},
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, player_url: str) -> Iterator[Page]:
    """The player page in a new browser context, so no HTTP cache is shared."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(player_url)
    try:
        yield page
    finally:
        context.close()


def sample_segments() -> dict[str, int]:
    """Map the edge path of every segment of the sample to its start in ms."""
    return {
        f"/sample/{rendition}/{name}": start
        for rendition in (*VIDEO_RENDITIONS, "audio")
        for name, start in segment_starts(rendition).items()
    }


def play(
    page: Page,
    playlist_url: str,
    rendition: str,
    access_log: AccessLog,
    until: str,
) -> tuple[dict[str, Any], list[AccessRecord]]:
    """Play ``playlist_url`` at the level of ``rendition`` until ``until``.

    ``until`` is a JavaScript expression over ``window.playback``. Return the
    page's playback state and the edge's records of paths under /sample/.
    """
    page_errors: list[str] = []
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    mark = access_log.mark()
    page.evaluate(
        "([url, rendition, rate]) => startPlayback(url, rendition, rate)",
        [playlist_url, rendition, PLAYBACK_RATE],
    )
    try:
        page.wait_for_function(until, timeout=PLAYBACK_TIMEOUT_MS)
    except sync_api.TimeoutError:
        state = page.evaluate("playbackState()")
        pytest.fail(f"playback timed out waiting for {until}: {state}")
    state: dict[str, Any] = page.evaluate("playbackState()")
    state["pageErrors"] = page_errors
    access_log.settle()
    return state, access_log.since(mark, "/sample/")


@pytest.mark.parametrize("rendition", VIDEO_RENDITIONS)
def test_purchased_rendition_plays_to_end(
    rendition: str,
    stack: RunningStack,
    access_log: AccessLog,
    viewer: Viewer,
    page: Page,
) -> None:
    purchase = viewer.purchase()
    assert purchase["status"] == "granted"
    session = viewer.session()
    assert session["preview"] is False

    state, records = play(
        page,
        str(session["playlist_url"]),
        rendition,
        access_log,
        "window.playback.done",
    )

    assert state["pageErrors"] == []
    assert state["fatal"] is None, state["errors"]
    # hls.js reports a non-fatal bufferAppendNoProgress on the sample's
    # audio/seg_000.ts, so only load errors fail the test.
    load_errors = [e for e in state["errors"] if "Load" in e["details"]]
    assert load_errors == []
    assert state["ended"] is True
    assert state["currentTime"] >= SAMPLE_SECONDS - 0.5
    played = {f["path"] for f in state["fragments"] if f["type"] == "main"}
    assert played == {
        f"/sample/{rendition}/{name}" for name in segment_starts(rendition)
    }

    expected = {
        "/sample/master.m3u8",
        f"/sample/{rendition}/index.m3u8",
        "/sample/audio/index.m3u8",
        *(f"/sample/{rendition}/{name}" for name in segment_starts(rendition)),
        *(f"/sample/audio/{name}" for name in segment_starts("audio")),
    }
    if rendition == "v360":
        expected.add("/sample/keys/v360.key")
    if rendition == "v240":
        expected.add("/sample/v240/init.mp4")
    statuses = by_path(records)
    assert set(statuses) == expected
    denied = {path: codes for path, codes in statuses.items() if not set(codes) <= OK}
    assert denied == {}


def test_preview_plays_until_preview_end(
    stack: RunningStack, access_log: AccessLog, viewer: Viewer, page: Page
) -> None:
    session = viewer.session()
    assert session["preview"] is True
    assert session["preview_seconds"] == PREVIEW_MS // 1000

    # After a 402, hls.js tries the other levels and retries later, while
    # the <video> element plays the buffered preview up to its end.
    preview_end = PREVIEW_MS / 1000
    state, records = play(
        page,
        str(session["playlist_url"]),
        "v360",
        access_log,
        "window.playback.done || "
        "(window.playback.errors.some((e) => e.code === 402) && "
        f"window.playback.currentTime >= {preview_end - 0.5})",
    )

    assert state["pageErrors"] == []
    assert state["ended"] is False
    assert state["currentTime"] >= preview_end - 0.5
    assert state["currentTime"] <= preview_end + 0.1
    assert state["buffered"]
    assert state["buffered"][-1][1] <= preview_end + 0.1
    load_codes = {e["code"] for e in state["errors"] if "Load" in e["details"]}
    assert load_codes == {402}

    starts = sample_segments()
    statuses = by_path(records)
    for path, codes in statuses.items():
        if path not in starts:
            assert set(codes) <= OK, (path, codes)
        elif starts[path] < PREVIEW_MS:
            assert set(codes) <= OK, (path, starts[path], codes)
        else:
            assert set(codes) == {402}, (path, starts[path], codes)
    preview = {
        path
        for path, start in starts.items()
        if start < PREVIEW_MS and path.split("/")[2] in ("v360", "audio")
    }
    assert preview - set(statuses) == set()
    assert "/sample/keys/v360.key" in statuses
    denied = [r for r in records if r.status == 402]
    assert denied
    assert {r.reason for r in denied} == {"preview-ended"}
