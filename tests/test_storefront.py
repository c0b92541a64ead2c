"""The storefront page, driven in headless Chromium through a viewer's journey.

The origin serves the page and hls.js; the page plays from the edge of the
session's stack. In the journey, the preview plays and the paywall appears
at the preview's end. The declined card fails cleanly, the good card
resumes playback on the same page, and a refund stops it. Last, a card
that needs 3-D Secure is approved on the sandbox issuer's page. Each step saves a
screenshot; the directory is printed. hls.js does not retry a 402 and reports
denials only as non-fatal errors, so the edge's access log is read to check
what the edge returned.

Playwright's ``wait_for_function`` evaluates a string, which the page's
Content-Security-Policy forbids, so waits poll ``page.evaluate`` instead.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.harness import AccessLog, AccessRecord, RunningStack
from tests.test_playback import OK, PREVIEW_MS, segment_starts

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
REPO = Path(__file__).resolve().parent.parent
SCREENSHOTS = REPO / "var" / "storefront-screenshots"
HLS_JS = (
    REPO / "origin" / "storefront" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
)
PREVIEW_SECONDS = PREVIEW_MS / 1000
WAIT_SECONDS = 20.0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Headless Chromium with a temporary HOME."""
    if not CHROMIUM.is_file():
        pytest.skip(
            f"Chromium is missing at {CHROMIUM}; `make test` installs it with "
            "apt-get when it runs as root"
        )
    if not HLS_JS.is_file():
        pytest.skip(f"hls.js is missing at {HLS_JS}; `make tools` installs it")
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


class Journey:
    """One page of the storefront, with its screenshots and page errors."""

    def __init__(self, page: Page, shots: Path) -> None:
        self.page = page
        self.shots = shots
        self.page_errors: list[str] = []
        self.console_errors: list[str] = []
        page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        page.on(
            "console",
            lambda message: (
                self.console_errors.append(message.text)
                if message.type == "error"
                else None
            ),
        )

    def shot(self, name: str) -> None:
        self.page.screenshot(path=self.shots / f"{name}.png")

    def js(self, expression: str) -> Any:
        return self.page.evaluate(f"() => ({expression})")

    def wait(self, expression: str, description: str) -> Any:
        """Poll ``expression`` until it is truthy; fail with the page's state."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            self.page.wait_for_timeout(50)
        self.shot(f"timeout-{description}")
        pytest.fail(f"timed out waiting for {description}: {self.state()}")

    def state(self) -> dict[str, Any]:
        return dict(
            self.js(
                "{events: window.storefront.events.filter((e) => e.name !== "
                "'fragment'), errors: window.storefront.errors, "
                "time: document.getElementById('video').currentTime, "
                "message: document.getElementById('buy-message').textContent}"
            )
        )

    def events(self, name: str) -> list[dict[str, Any]]:
        return list(
            self.js(f"window.storefront.events.filter((e) => e.name === '{name}')")
        )

    def current_time(self) -> float:
        return float(self.js("document.getElementById('video').currentTime"))

    def paused(self) -> bool:
        return bool(self.js("document.getElementById('video').paused"))

    def overlay_title(self) -> str | None:
        return self.js(  # type: ignore[no-any-return]
            "document.getElementById('overlay').hidden ? null : "
            "document.getElementById('overlay-title').textContent"
        )

    def buy(self, card: str) -> None:
        self.page.check(f"input[name=card][value={card}]")
        self.page.click("#buy-button")

    def purchase_status(self) -> str:
        return str(self.page.get_attribute("#purchases article", "data-status"))

    def latest_steps(self) -> list[str]:
        return (
            self.page.locator("#purchases article")
            .first.locator("ol.steps li")
            .all_inner_texts()
        )


@pytest.fixture(scope="module")
def shots() -> Path:
    """The screenshot directory, emptied first: it keeps the last run only.

    var/ is ignored by git, and unlike pytest's temporary directories it is
    not removed by later pytest runs.
    """
    directory = SCREENSHOTS
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


@pytest.fixture
def journey(browser: Browser, stack: RunningStack, shots: Path) -> Iterator[Journey]:
    """The storefront in a new browser context: a new viewer, no HTTP cache."""
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    page = context.new_page()
    page.goto(f"{stack.stack.origin_url}/")
    try:
        yield Journey(page, shots)
    finally:
        context.close()


def segment_paths() -> dict[str, int]:
    """Map the edge path of every segment of the sample to its start in ms."""
    return {
        f"/sample/{rendition}/{name}": start
        for rendition in ("v360", "v240", "v180", "audio")
        for name, start in segment_starts(rendition).items()
    }


def past_preview(records: list[AccessRecord]) -> list[AccessRecord]:
    starts = segment_paths()
    return [
        record
        for record in records
        if record.path in starts and starts[record.path] >= PREVIEW_MS
    ]


def test_storefront_journey(
    journey: Journey, access_log: AccessLog, capsys: Any
) -> None:
    page = journey.page
    start = access_log.mark()
    page.select_option("#speed", "4")

    # 1. The preview plays.
    journey.wait("window.storefront.events.some((e) => e.name === 'playing')", "play")
    assert page.text_content("#access") == "Preview: first 10 s"
    assert page.is_visible("#buy")
    journey.wait("document.getElementById('video').currentTime > 1", "preview progress")
    journey.shot("01-preview-playing")

    # 2. The paywall at the preview's end.
    journey.wait(
        "document.getElementById('overlay').dataset.paywall === '1'", "paywall"
    )
    journey.shot("02-paywall")
    assert journey.overlay_title() == "The preview has ended"
    assert journey.paused()
    assert PREVIEW_SECONDS - 0.6 <= journey.current_time() <= PREVIEW_SECONDS + 0.1
    access_log.settle()
    denied = past_preview(access_log.since(start, "/sample/"))
    assert denied, "no segment past the preview was requested"
    assert {(record.status, record.reason) for record in denied} == {
        (402, "preview-ended")
    }

    # 3. The declined card fails cleanly: a message, the paywall stays.
    journey.buy("pm_card_chargeDeclined")
    journey.wait("document.getElementById('buy-message').textContent", "decline")
    journey.wait(
        "document.querySelector('#purchases article')?.dataset.status", "purchase"
    )
    message = page.text_content("#buy-message")
    assert message == (
        "Payment declined: the card was declined by its issuer. Try another card."
    )
    assert "error" in str(page.get_attribute("#buy-message", "class"))
    assert journey.purchase_status() == "declined"
    assert journey.latest_steps() == [
        "payment intent succeeded",
        "authorization declined (generic_decline)",
    ]
    assert journey.overlay_title() == "The preview has ended"
    assert journey.current_time() <= PREVIEW_SECONDS + 0.1
    journey.shot("03-declined")

    # 4. The good card: playback resumes on the same page.
    page.evaluate("() => { window.samePage = true; }")
    bought = access_log.mark()
    journey.buy("pm_card_visa")
    journey.wait("window.storefront.events.some((e) => e.name === 'resumed')", "resume")
    journey.wait(
        f"document.getElementById('video').currentTime > {PREVIEW_SECONDS + 1}",
        "playback past the preview",
    )
    journey.shot("04-playing-after-purchase")
    assert journey.js("window.samePage") is True
    assert journey.js("performance.getEntriesByType('navigation').length") == 1
    assert page.text_content("#access") == "Full video"
    assert journey.overlay_title() is None
    assert not journey.paused()
    assert journey.purchase_status() == "granted"
    assert journey.latest_steps() == [
        "payment intent succeeded",
        "authorization succeeded",
        "capture succeeded",
        "grant succeeded",
    ]
    (granted,) = [e for e in journey.events("purchase") if e["status"] == "granted"]
    (resumed,) = journey.events("resumed")
    clicked = journey.events("buy")[-1]
    with capsys.disabled():
        print(f"\nstorefront screenshots: {journey.shots}")
        print(
            f"playback passed the preview {resumed['at'] - granted['at']:.0f} ms "
            "after the page read the granted purchase, "
            f"{resumed['at'] - clicked['at']:.0f} ms after the click on Buy"
        )
    access_log.settle()
    served = past_preview(access_log.since(bought, "/sample/"))
    assert any(record.status in OK for record in served)

    # 5. A refund stops playback again.
    page.select_option("#speed", "1")
    refunded = access_log.mark()
    page.click("#purchases article button[data-action=refund]")
    journey.wait("document.getElementById('overlay').dataset.paywall === '1'", "relock")
    journey.shot("05-refunded")
    assert journey.overlay_title() == "Refunded"
    assert journey.paused()
    assert journey.purchase_status() == "refunded"
    assert journey.latest_steps()[-2:] == ["refund succeeded", "revoke succeeded"]
    assert page.text_content("#access") == "Preview: first 10 s"
    access_log.settle()
    after_refund = past_preview(access_log.since(refunded, "/sample/"))
    assert (402, "preview-ended") in {(r.status, r.reason) for r in after_refund}
    stopped_at = journey.current_time()
    page.wait_for_timeout(500)
    assert journey.current_time() == stopped_at

    # 6. A card that needs 3-D Secure, approved on the issuer's page.
    journey.buy("pm_card_authenticationRequired")
    journey.wait("document.getElementById('authentication').open", "issuer page")
    frame = page.frame_locator("#authentication-frame")
    frame.locator("button[value=approve]").wait_for()
    journey.shot("06-issuer-authentication")
    frame.locator("button[value=approve]").click()
    journey.wait(
        "document.querySelector('#purchases article')?.dataset.status === 'granted'",
        "grant after authentication",
    )
    journey.wait("!document.getElementById('video').paused", "playback")
    journey.wait("!document.getElementById('authentication').open", "dialog closed")
    journey.shot("07-playing-after-authentication")
    assert journey.latest_steps() == [
        "payment intent succeeded",
        "authorization requires action (the issuer requires authentication)",
        "authentication succeeded",
        "authorization succeeded (after the viewer's authentication)",
        "capture succeeded",
        "grant succeeded",
    ]
    assert journey.overlay_title() is None

    assert journey.page_errors == []
    # The only console errors are the browser's own lines for the edge's
    # 402 responses.
    assert all("402" in line for line in journey.console_errors), journey.console_errors


def test_unreachable_origin_reads_clearly(
    journey: Journey, stack: RunningStack
) -> None:
    page = journey.page
    journey.wait("window.storefront.events.some((e) => e.name === 'playing')", "play")
    # The browser's requests to the origin's API fail as if it were down.
    page.route(f"{stack.stack.origin_url}/v1/**", lambda route: route.abort())
    journey.buy("pm_card_visa")
    journey.wait("!document.getElementById('banner').hidden", "banner")
    journey.shot("10-origin-unreachable")
    assert page.text_content("#buy-message") == (
        "The origin cannot be reached. Buying again resends the same request, "
        "so the card is charged at most once."
    )
    assert "cannot be reached" in str(page.text_content("#banner"))
    assert not journey.paused()

    key = journey.js("window.storefront.unansweredBuy.key")
    sent: list[str] = []
    page.unroute(f"{stack.stack.origin_url}/v1/**")
    page.on(
        "request",
        lambda request: (
            sent.append(request.headers.get("idempotency-key", ""))
            if request.url.endswith("/v1/purchases")
            else None
        ),
    )
    journey.buy("pm_card_visa")
    journey.wait("window.storefront.events.some((e) => e.name === 'purchase')", "buy")
    assert sent == [key]
    assert journey.js("document.getElementById('banner').hidden") is True
    assert journey.page_errors == []


def test_unreachable_edge_retries(
    browser: Browser, stack: RunningStack, shots: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 820})
    edge = f"{stack.stack.edge_url}/**"
    context.route(edge, lambda route: route.abort("connectionrefused"))
    page = context.new_page()
    journey = Journey(page, shots)
    try:
        page.goto(f"{stack.stack.origin_url}/")
        journey.wait(
            "document.getElementById('overlay-title').textContent === "
            "'Waiting for the edge'",
            "edge message",
        )
        journey.shot("11-edge-unreachable")
        text = str(page.text_content("#overlay-text"))
        assert f"The edge ({stack.stack.edge_url[7:]}) cannot be reached." in text
        assert "Retrying every 3 s." in text
        context.unroute(edge)
        journey.wait(
            "window.storefront.events.some((e) => e.name === 'playing')", "play"
        )
        assert journey.overlay_title() is None
        assert journey.page_errors == []
    finally:
        context.close()


def test_expired_session_offers_new_one(
    journey: Journey, stack: RunningStack, access_log: AccessLog
) -> None:
    page = journey.page
    settings = stack.stack.origin_app.state.origin.settings  # type: ignore[union-attr]
    lifetime = settings.playback_token_ttl
    # Sessions now last one second; the edge allows 5 s of clock leeway.
    settings.playback_token_ttl = 1
    try:
        mark = access_log.mark()
        page.reload()
        journey.wait(
            "window.storefront.events.some((e) => e.name === 'playing')", "play"
        )
        # The viewer pauses, so the player stops after its 6 s of buffer,
        # and comes back after the session expired.
        page.evaluate("() => document.getElementById('video').pause()")
        page.wait_for_timeout(7500)
    finally:
        settings.playback_token_ttl = lifetime
    page.evaluate("() => document.getElementById('video').play()")
    journey.wait(
        "document.getElementById('overlay-title').textContent === "
        "'Your playback session expired'",
        "expiry message",
    )
    journey.shot("12-session-expired")
    access_log.settle()
    expired = [
        r for r in access_log.since(mark, "/sample/") if r.reason == "token-expired"
    ]
    assert {r.status for r in expired} == {401}
    stopped_at = journey.current_time()

    page.click("#overlay-action")
    journey.wait(
        f"document.getElementById('video').currentTime > {stopped_at + 0.5}",
        "playback in a new session",
    )
    assert len(journey.events("session")) == 2
    assert journey.overlay_title() is None
    assert journey.page_errors == []


def test_failed_authentication_and_cancel(journey: Journey) -> None:
    page = journey.page
    journey.wait("window.storefront.events.some((e) => e.name === 'playing')", "play")
    frame = page.frame_locator("#authentication-frame")

    journey.buy("pm_card_authenticationRequired")
    journey.wait("document.getElementById('authentication').open", "issuer page")
    frame.locator("button[value=fail]").click()
    journey.wait(
        "document.querySelector('#purchases article')?.dataset.status === 'declined'",
        "decline after failed authentication",
    )
    journey.wait("!document.getElementById('authentication').open", "dialog closed")
    journey.shot("13-authentication-failed")
    assert page.text_content("#buy-message") == (
        "Payment declined: the bank's authentication failed. Try another card."
    )
    assert journey.latest_steps()[-1] == (
        "authentication declined (payment_intent_authentication_failure)"
    )

    journey.buy("pm_card_authenticationRequired")
    journey.wait(
        "document.querySelector('#purchases article')?.dataset.status === "
        "'requires_action'",
        "second purchase waiting",
    )
    journey.wait("document.getElementById('authentication').open", "issuer page")
    page.click("#authentication-cancel")
    journey.wait(
        "document.querySelector('#purchases article')?.dataset.status === 'canceled'",
        "cancel",
    )
    journey.shot("14-authentication-canceled")
    assert page.text_content("#buy-message") == (
        "The purchase was canceled. Nothing was charged."
    )
    assert journey.latest_steps()[-1] == "void succeeded"
    assert page.is_visible("#buy")
    assert journey.page_errors == []


def test_purchase_from_other_tab_is_listed(journey: Journey) -> None:
    page = journey.page
    journey.wait("window.storefront.events.some((e) => e.name === 'playing')", "play")
    # Another tab of the same viewer starts a purchase that this page does
    # not know about.
    other = journey.js(
        """fetch('/v1/purchases', {
          method: 'POST',
          headers: {
            Authorization: `Bearer ${window.storefront.viewer.viewer_token}`,
            'Content-Type': 'application/json',
            'Idempotency-Key': crypto.randomUUID(),
          },
          body: JSON.stringify({
            content_id: 'sample',
            payment_method: 'pm_card_authenticationRequired',
          }),
        }).then((response) => response.json())"""
    )
    assert other["status"] == "requires_action"

    journey.buy("pm_card_visa")
    journey.wait("document.getElementById('authentication').open", "issuer page")
    assert page.text_content("#buy-message") == (
        "No new purchase: a purchase of 'sample' is already running or granted."
    )
    selector = f"#purchases article[data-purchase-id='{other['purchase_id']}']"
    assert page.get_attribute(selector, "data-status") == "requires_action"

    page.frame_locator("#authentication-frame").locator("button[value=approve]").click()
    journey.wait(
        f'document.querySelector("{selector}")?.dataset.status === "granted"',
        "the other tab's purchase granted",
    )
    assert journey.page_errors == []
