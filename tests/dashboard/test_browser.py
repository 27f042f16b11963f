"""The dashboard in headless Chromium (Debian's package) driven by Playwright: sign-in with
the keyboard, a job's progress advancing live while its page is open, its certificate,
every page on a desktop and on a phone-sized screen, and the lists without JavaScript.
Screenshots of each page go to ``artifacts/screenshots/``.

Skipped when Playwright or Chromium is missing, except under ``CI``, where that fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sqlalchemy import update

from app.db.base import utcnow
from app.db.models import ErasureRequest, UnlearningJob
from app.db.session import session_scope
from tests.dashboard import support

CHROMIUM = os.environ.get("LETHE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
TIMEOUT_MS = 15_000


def expect(locator: Any) -> Any:
    """Playwright's auto-retrying assertions (they poll without eval, which the
    dashboard's Content-Security-Policy forbids)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install playwright)"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the browser tests")
        pytest.skip(reason)
    from playwright.sync_api import expect as playwright_expect
    from playwright.sync_api import sync_playwright

    playwright_expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(app, world) -> Iterator[str]:
    """The app on a real socket (uvicorn in a thread), sharing the tests' database."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def shots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS


class Tab:
    """A page in its own browser context, collecting console errors and failed requests
    (a CSP violation or a script error shows up there)."""

    def __init__(self, browser: Any, base: str, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.base = base
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def go(self, path: str) -> Any:
        response = self.page.goto(self.base + path)
        assert response is not None and response.ok, (path, response and response.status)
        return response

    def sign_in(self, key: str, path: str = "/dashboard") -> None:
        self.page.goto(self.base + path)
        assert "/dashboard/login" in self.page.url
        self.page.fill("#api_key", key)
        self.page.press("#api_key", "Enter")  # the form submits from the keyboard
        self.page.wait_for_url(self.base + path)

    def shot(self, shots: Path, name: str) -> None:
        self.page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    def no_horizontal_scroll(self) -> None:
        overflow = self.page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{self.page.url} scrolls sideways by {overflow}px"

    def close(self) -> None:
        self.context.close()  # first: its open event streams end with it
        assert not self.errors, self.errors


@pytest.fixture
def tab(browser, server) -> Iterator[Any]:
    tabs: list[Tab] = []

    def make(**context: Any) -> Tab:
        t = Tab(browser, server, **{"viewport": DESKTOP, **context})
        tabs.append(t)
        return t

    yield make
    for t in tabs:
        t.close()


def test_sign_in_with_the_keyboard_and_the_overview(tab, world, shots):
    t = tab()
    t.go("/dashboard/login")
    t.shot(shots, "desktop-01-sign-in")
    t.page.fill("#api_key", "lethe_wrong_key")
    t.page.press("#api_key", "Enter")
    assert "not valid" in t.page.inner_text("[role=alert]")
    t.errors.clear()  # the browser logs that answer's 401 status as an error
    t.sign_in(world.a.read)
    page = t.page
    assert page.inner_text("h1").startswith("Overview")
    # the first Tab reaches the skip link, which shows itself and jumps to the content
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    box = page.locator(".skip-link").bounding_box()
    assert box is not None and box["y"] >= 0
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"
    # the throughput chart is drawn in the browser from the page's JSON
    page.wait_for_selector("[data-chart=bars] svg rect.chart-bar", state="attached")
    assert page.locator("[data-chart=bars] svg rect.chart-bar").count() == 30
    page.keyboard.press("Tab")  # nothing traps focus: the next stop is in the content
    t.shot(shots, "desktop-02-overview")


def test_job_progress_advances_live_and_its_certificate_opens(tab, world, shots):
    job_id = world.queued_job
    with session_scope() as session:
        session.execute(
            update(UnlearningJob)
            .where(UnlearningJob.id == job_id)
            .values(status="queued", step=0, total_steps=0, loss=None)
        )
    t = tab()
    t.sign_in(world.a.read, f"/dashboard/jobs/{job_id}")
    page = t.page
    page.wait_for_selector(".live-state--on")
    page.evaluate("window.__noReload = true")
    steps, losses = 6, [2.4, 1.9, 1.5, 1.2, 0.95, 0.8]
    for step, loss in enumerate(losses, start=1):
        support.set_progress(job_id, step, steps, loss)
        expect(page.locator("#job-step")).to_have_text(str(step))
        expect(page.locator("#job-loss")).to_have_text(f"{loss:.4f}")
    assert page.evaluate("window.__noReload") is True  # updated in place, never reloaded
    assert page.inner_text("#job-total") == str(steps)
    assert page.inner_text("#job-eta") != "—"
    assert page.get_attribute("#job-progress", "value") == str(steps)
    # the loss curve holds every step seen, drawn as one SVG path
    expect(page.locator("#loss-chart")).to_have_attribute("data-points", str(steps))
    path = page.get_attribute("#loss-chart path.chart-line", "d")
    assert path is not None and path.count("L") == steps - 1
    t.shot(shots, "desktop-03-job-running")

    # verification, certificate, publication: the page follows without a reload
    with session_scope() as session:
        session.execute(
            update(UnlearningJob)
            .where(UnlearningJob.id == job_id)
            .values(status="verifying", heartbeat_at=utcnow())
        )
    expect(page.locator("#job-status")).to_have_text("verifying")
    certificate = support.issue_certificate(job_id)
    support.publish(job_id)
    expect(page.locator("#job-status")).to_have_text("completed")
    page.wait_for_selector("#verification table.metrics")
    page.wait_for_selector(
        "#verification [data-metric=accuracy] svg rect.chart-bar", state="attached"
    )
    assert "0.930" in page.inner_text("#verification")
    page.wait_for_selector(".live-state--off")
    assert page.evaluate("window.__noReload") is True
    assert page.inner_text("#job-eta") == "—"
    t.shot(shots, "desktop-04-job-completed")

    page.click("#job-certificate a")
    page.wait_for_url(f"{t.base}/dashboard/certificates/{certificate}")
    assert page.inner_text("#signature-result").startswith("valid")
    t.shot(shots, "desktop-05-certificate")


def test_every_page_renders(tab, world, shots):
    t = tab()
    t.sign_in(world.a.read)
    request_id = world.a.request_ids[1]
    pages = [
        ("desktop-06-requests", "/dashboard/requests"),
        ("desktop-07-request", f"/dashboard/requests/{request_id}"),
        ("desktop-08-report", f"/dashboard/requests/{request_id}/report"),
        ("desktop-09-models", "/dashboard/models"),
        ("desktop-10-jobs", "/dashboard/jobs"),
        ("desktop-11-certificates", "/dashboard/certificates"),
        ("desktop-12-job-done", f"/dashboard/jobs/{world.done_job}"),
    ]
    for name, path in pages:
        t.go(path)
        text = t.page.inner_text("body")
        assert not any(secret in text for secret in world.a.pii), path
        t.shot(shots, name)
    # dark colour scheme: the same page, drawn from the dark palette
    dark = tab(color_scheme="dark")
    dark.sign_in(world.a.read, f"/dashboard/jobs/{world.done_job}")
    dark.page.wait_for_selector("#verification svg rect.chart-bar", state="attached")
    dark.shot(shots, "desktop-13-job-dark")
    # the lineage shows three versions, the newest in production
    t.go("/dashboard/models")
    assert t.page.locator(".lineage__node").count() >= 3
    assert "production" in t.page.inner_text(".lineage__node--production .version")


def test_phone_sized_screen(tab, world, shots):
    t = tab(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    t.sign_in(world.a.read)
    for name, path in [
        ("phone-01-overview", "/dashboard"),
        ("phone-02-requests", "/dashboard/requests"),
        ("phone-03-request", f"/dashboard/requests/{world.done_request}"),
        ("phone-04-job", f"/dashboard/jobs/{world.done_job}"),
        ("phone-05-certificate", f"/dashboard/certificates/{world.certificate}"),
        ("phone-06-models", "/dashboard/models"),
    ]:
        t.go(path)
        t.no_horizontal_scroll()
        t.shot(shots, name)
    # charts are drawn at the phone's width, not squeezed from a desktop drawing
    t.go(f"/dashboard/jobs/{world.done_job}")
    width = t.page.evaluate("document.querySelector('#verification svg').getAttribute('width')")
    assert int(width) <= PHONE["width"]


def test_lists_work_without_javascript(tab, world, shots):
    t = tab(java_script_enabled=False)
    t.sign_in(world.a.read)
    t.go("/dashboard/requests")
    t.page.select_option("#f-status", "completed")
    t.page.click("text=Apply")
    t.page.wait_for_url("**/dashboard/requests?status=completed**")
    rows = t.page.locator("table.requests tbody tr")
    assert rows.count() >= 1
    with session_scope() as session:
        completed = {
            r.id
            for r in session.query(ErasureRequest).filter(
                ErasureRequest.tenant_id == world.a.id, ErasureRequest.status == "completed"
            )
        }
    for i in range(rows.count()):
        href = rows.nth(i).locator("td a").first.get_attribute("href")
        assert href.rsplit("/", 1)[1] in completed
    t.shot(shots, "nojs-01-requests-filtered")
    t.page.click("button:has-text('Sign out')")
    t.page.wait_for_url("**/dashboard/login")
