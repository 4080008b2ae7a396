"""The status page in a real headless Chromium against a live ``gateway serve``: webhooks posted while the
page is open appear on it without a reload, with and without a read-API token. Screenshots are saved to
``test-artifacts/`` at the repository root (gitignored; CI keeps them as artefacts)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import SECRET, LiveServer, completed_blog, completed_image, progress

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page, Route

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "status-page.png"
"""The picture of the status page in the README and the docs, taken by this module: a run with
``UPDATE_SCREENSHOTS=1`` writes it there (commit it when it changes); other runs write ``test-artifacts/``."""
TOKEN = "status-page-token-0123456789"
HOSTILE = '<img src=x onerror="window.pwned = true">Quota exceeded & <b>retry</b>'


def post(server: LiveServer, payload: dict[str, Any], kind: str = "image") -> None:
    response = httpx.post(
        f"{server.url}/api/webhooks/{kind}-completion", json=payload, headers={"X-Webhook-Secret": SECRET}
    )
    assert response.status_code == 200, response.text


def failed_with(job_id: str, message: str) -> dict[str, Any]:
    return {"job_id": job_id, "status": "failed", "timestamp": "2025-10-21T16:45:00Z", "error_message": message}


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One open gateway for the module's pages (a start costs a second or two); each test posts its own jobs."""
    server = LiveServer(tmp_path_factory.mktemp("status-page"), {"WEBHOOK_SECRET": SECRET})
    yield server
    server.stop()


def stats(server: LiveServer) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/api/jobs/stats")
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own cookies) that records script errors and CSP violations."""
    context = browser.new_context(viewport={"width": 1200, "height": 780})
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    # A 401 the page expects still logs "Failed to load resource"; anything else at error level is a bug.
    opened.on(
        "console",
        lambda message: (
            message.type == "error" and "Failed to load resource" not in message.text and problems.append(message.text)
        ),
    )
    opened.set_default_timeout(10_000)  # generous: CI machines are shared
    yield opened
    context.close()
    assert problems == []


def test_a_webhook_posted_while_the_page_is_open_appears_without_reload(page: Page, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    post(live_server, progress("generating", job_id="job-before-the-page"))
    before = stats(live_server)
    answer = page.goto(f"{live_server.url}/")
    assert answer is not None
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#job-rows tr", has_text="job-before-the-page").locator(".badge")).to_have_text("generating")
    page.evaluate("window.loadedOnce = true")  # gone if the page reloads

    post(live_server, completed_image(job_id="job-live-1"))
    post(live_server, completed_blog("blog-live-2"), kind="blog")
    post(live_server, failed_with("job-live-3", HOSTILE))
    post(live_server, progress("saving", job_id="job-before-the-page", timestamp="2025-10-21T16:44:30Z"))

    completed = page.locator("#job-rows tr", has_text="job-live-1")
    expect(completed.locator(".badge")).to_have_text("completed")
    expect(completed).to_contain_text("image")
    expect(completed).to_contain_text("model gemini-2.0-flash-exp")  # the backend's metadata, once reloaded
    expect(completed).to_contain_text("generation 12.5 s")
    # Its first event was its last: the gateway never saw it run, and says so rather than "0.0 s".
    expect(completed.locator(".elapsed")).to_have_text("finished when first seen")
    expect(page.locator("#job-rows tr", has_text="blog-live-2")).to_contain_text("blog")
    expect(page.locator("#job-rows tr", has_text="job-before-the-page").locator(".badge")).to_have_text("saving")
    # An error message from outside is shown as text: no element of it is ever created.
    failed = page.locator("#job-rows tr", has_text="job-live-3")
    expect(failed.locator(".badge")).to_have_text("failed")
    expect(failed.locator(".job-error")).to_have_text(HOSTILE)
    assert failed.locator("img, b").count() == 0
    assert page.evaluate("window.pwned") is None
    # The newest first, and the last hour's counts: 2 more completed, 1 more failed, 3 more created.
    expect(page.locator("#job-rows tr").first).to_contain_text("job-live-3")
    completed_count, failed_count = before["completed"] + 2, before["failed"] + 1
    expect(page.locator("#stat-completed")).to_have_text(str(completed_count))
    expect(page.locator("#stat-failed")).to_have_text(str(failed_count))
    ratio = 100 * failed_count / (completed_count + failed_count)
    expect(page.locator("#stat-ratio")).to_have_text(f"{ratio:.1f} %")
    expect(page.locator("#stat-created")).to_have_text(str(sum(before["created"].values()) + 3))
    assert page.evaluate("window.loadedOnce") is True

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "status-page.png", full_page=True)


def test_with_a_token_the_page_signs_in_through_its_form(
    page: Page, tmp_path: Path, stopping: list[LiveServer]
) -> None:
    from playwright.sync_api import expect

    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET, "GATEWAY_API_TOKEN": TOKEN})
    stopping.append(server)
    post(server, completed_image(job_id="job-signed-1"))
    page.goto(f"{server.url}/status")

    token = page.get_by_label("API token")
    expect(token).to_be_visible()
    expect(page.locator("#dashboard")).to_be_hidden()
    token.fill("not-the-token-at-all")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#sign-in-error")).to_have_text("Wrong token.")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "status-page-sign-in.png")

    token.fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#job-rows tr", has_text="job-signed-1")).to_be_visible()
    [cookie] = [cookie for cookie in page.context.cookies() if cookie["name"] == "gateway_session"]
    assert cookie["httpOnly"] is True
    assert page.evaluate("document.cookie") == ""  # the script cannot read the session

    post(server, completed_image(job_id="job-signed-2"))
    expect(page.locator("#job-rows tr", has_text="job-signed-2").locator(".badge")).to_have_text("completed")

    page.get_by_role("button", name="Sign out").click()
    expect(token).to_be_visible()
    assert [cookie for cookie in page.context.cookies() if cookie["name"] == "gateway_session"] == []

    # A session that ends while the page is open (here: the cookie is gone) brings the form back.
    token.fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#job-rows tr", has_text="job-signed-2")).to_be_visible()
    page.context.clear_cookies()
    post(server, progress("generating", job_id="job-signed-3"))
    expect(token).to_be_visible()
    expect(page.locator("#sign-in-error")).to_have_text("Your session ended: sign in again.")


def test_the_page_fits_a_narrow_screen(browser: Browser, live_server: LiveServer) -> None:
    from playwright.sync_api import expect

    post(live_server, failed_with("a-rather-long-job-id-0123456789-abcdefghij", "Clé API Google invalide"))
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        narrow = context.new_page()
        narrow.set_default_timeout(10_000)
        narrow.goto(f"{live_server.url}/")
        expect(narrow.locator("#connection")).to_have_text("Live")
        expect(narrow.locator("#job-rows tr", has_text="a-rather-long-job-id")).to_be_visible()
        width = narrow.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the page scrolls sideways: {width}"
        ARTIFACTS.mkdir(exist_ok=True)
        narrow.screenshot(path=ARTIFACTS / "status-page-narrow.png", full_page=True)
    finally:
        context.close()


def test_the_list_says_loading_until_its_first_answer(page: Page, tmp_path: Path, stopping: list[LiveServer]) -> None:
    """While the job list is on its way the page says so; "No jobs yet" only once the gateway said there are none."""
    from playwright.sync_api import expect

    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET})
    stopping.append(server)
    held: list[Route] = []
    holding = [True]
    # The list's answer waits until the test lets it through.
    page.route(
        lambda url: "/api/jobs?" in url,
        lambda route: held.append(route) if holding[0] else route.continue_(),
    )
    page.goto(f"{server.url}/")
    expect(page.locator("#connection")).to_have_text("Live")
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    assert held, "the page never asked for the job list"
    expect(page.locator("#loading")).to_have_text("Loading jobs…")
    expect(page.locator("#empty")).to_be_hidden()

    holding[0] = False
    for route in held:
        route.continue_()
    expect(page.locator("#empty")).to_contain_text("No jobs yet")
    expect(page.locator("#loading")).to_be_hidden()


def test_the_api_docs_render_from_the_gateway_alone(page: Page, live_server: LiveServer) -> None:
    """The status page's "API docs" link: Swagger UI renders the webhook routes, and the browser asks no
    host but the gateway for anything (no CDN, no web fonts), so it works offline and leaks nothing."""
    from playwright.sync_api import expect

    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(f"{live_server.url}/")
    page.get_by_role("link", name="API docs (OpenAPI)").click()
    expect(page).to_have_url(f"{live_server.url}/schema")
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("gateway")
    expect(page.locator(".opblock-summary-path", has_text="/api/webhooks/image-completion")).to_be_visible()
    hosts = {urlsplit(url).netloc for url in asked if urlsplit(url).scheme in ("http", "https")}
    assert hosts == {f"127.0.0.1:{live_server.port}"}


def test_a_screenshot_of_the_status_page_for_the_docs(page: Page, tmp_path: Path, stopping: list[LiveServer]) -> None:
    """The README's picture: a fresh gateway with a few jobs in every state, as a visitor sees it."""
    from playwright.sync_api import expect

    server = LiveServer(tmp_path, {"WEBHOOK_SECRET": SECRET})
    stopping.append(server)
    for job_id, kind, user in (
        ("img-20251021-7f3a", "image", "u-1042"),
        ("blog-launch-notes", "blog", "u-2210"),
        ("img-20251021-7f1e", "image", "u-1042"),
    ):
        response = httpx.post(
            f"{server.url}/api/jobs", json={"job_id": job_id, "kind": kind, "user_id": user, "organization_id": "acme"}
        )
        assert response.status_code == 201, response.text
        post(server, progress("generating", job_id=job_id), kind=kind)
    post(server, progress("pending", job_id="img-20251021-7f52"))
    time.sleep(1.5)  # for the picture only: finished jobs show a duration the eye can read
    post(server, completed_image(job_id="img-20251021-7f3a"))
    post(server, completed_blog("blog-launch-notes"), kind="blog")
    post(server, failed_with("img-20251021-7f1e", "Upstream model timed out after 120 s"))
    post(server, progress("saving", job_id="img-20251021-7f52"))
    post(server, completed_image(job_id="img-20251021-7f60"))
    post(server, {**progress("canceled", job_id="img-20251021-7f71"), "error_message": "Canceled by the user"})

    page.goto(f"{server.url}/")
    expect(page.locator("#connection")).to_have_text("Live")
    expect(page.locator("#job-rows tr")).to_have_count(6)
    expect(page.locator("#job-rows tr", has_text="img-20251021-7f3a")).to_contain_text("model gemini-2.0-flash-exp")
    expect(page.locator("#stat-completed")).to_have_text("3")
    target = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOTS") == "1" else ARTIFACTS / SCREENSHOT.name
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=target)
    assert target.read_bytes().startswith(b"\x89PNG")
    assert target.stat().st_size > 10_000
