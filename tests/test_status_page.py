"""The origin's status page in headless Chromium, updating after a purchase.

The page is opened with a read-only status token in its URL fragment, as
an operator would bookmark it. A viewer then previews and buys the sample,
and the page, which polls ``GET /v1/status``, must show the new numbers
without a reload. A screenshot of the updated page is saved as
``status-page.png`` in the test's temporary directory.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness import RunningStack, Viewer, running_stack
from tests.test_browser_playback import browser  # noqa: F401 - a fixture

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="the playwright package is missing; `make test` installs the test extra",
)

pytestmark = pytest.mark.browser

STATUS_TOKEN = "status-page-" + uuid.uuid4().hex
UPDATE_TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def status_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    with running_stack(
        tmp_path_factory.mktemp("status-page"),
        origin_options={"admin_tokens": f"status:{STATUS_TOKEN}"},
    ) as running:
        yield running


@pytest.fixture
def status_page(
    browser: Browser,  # noqa: F811 - the fixture imported above
    status_stack: RunningStack,
) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{status_stack.stack.origin_url}/status#token={STATUS_TOKEN}")
    try:
        yield page
    finally:
        context.close()


def cell(page: Page, selector: str) -> str:
    return page.locator(selector).inner_text().strip()


def test_status_page_updates_after_purchase(
    status_page: Page, status_stack: RunningStack, tmp_path: Path
) -> None:
    page = status_page
    page.wait_for_selector("#panels:not([hidden])", timeout=UPDATE_TIMEOUT_MS)
    before_granted = cell(page, ".count-granted")
    before_previews = cell(page, "#funnel-preview-sessions")

    viewer = Viewer(status_stack.stack.origin_url)
    try:
        viewer.session()
        viewer.purchase()
    finally:
        viewer.close()
    # expect() polls without evaluating strings, which the page's
    # Content-Security-Policy forbids.
    expect = sync_api.expect
    expect(page.locator(".count-granted")).to_have_text("1", timeout=UPDATE_TIMEOUT_MS)
    expect(page.locator("#funnel-conversion")).to_have_text(
        "100.0 %", timeout=UPDATE_TIMEOUT_MS
    )
    screenshot = tmp_path / "status-page.png"
    page.screenshot(path=str(screenshot), full_page=True)

    assert before_granted == "0"
    assert before_previews == "0"
    assert cell(page, "#funnel-preview-sessions") == "1"
    assert cell(page, "#funnel-purchases-after-preview") == "1"
    assert cell(page, "#funnel-conversion") == "100.0 %"
    assert "current" in cell(page, "#keys")
    assert status_stack.stack.edge_url in cell(page, "#edges")
    assert "token=" not in page.url
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_status_page_reports_rejected_token(
    browser: Browser,  # noqa: F811 - the fixture imported above
    status_stack: RunningStack,
) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{status_stack.stack.origin_url}/status#token=not-a-token")
        page.wait_for_selector("#state.error", timeout=UPDATE_TIMEOUT_MS)

        assert "not valid" in cell(page, "#state")
        assert page.locator("#panels").is_hidden()
    finally:
        context.close()
