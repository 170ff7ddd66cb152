"""Browser tests against a real server: ``manage.py runserver`` with the simulated WhatsApp.

The server runs as a subprocess on a free port with its own SQLite file (see
``benchmarks/liveserver.py``, shared with the QR latency benchmark) and Chromium
is driven through Playwright's sync API. When a test fails, the server's output
is attached to the report.
"""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from benchmarks.liveserver import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    CHROMIUM,
    CHROMIUM_ARGS,
    LiveServer,
)

#: A long first QR code keeps the main flow deterministic: no rotation mid-test.
STEADY_TIMING = {"first_qr_ttl": 30, "next_qr_ttl": 30, "qr_count": 6, "pair_delay": 0.2}
#: Codes that rotate every 1.5 s, for the test that watches them rotate.
FAST_TIMING = {"first_qr_ttl": 1.5, "next_qr_ttl": 1.5, "qr_count": 6, "pair_delay": 0.2}

TIMEOUT_MS = 15_000

_servers: list[LiveServer] = []


def _start(timing: dict[str, float]) -> LiveServer:
    server = LiveServer(timing=timing)
    server.__enter__()
    _servers.append(server)
    return server


def _stop(server: LiveServer) -> None:
    _servers.remove(server)
    server.__exit__(None, None, None)


@pytest.fixture(scope="package")
def waconnect_server() -> Iterator[LiveServer]:
    """The server most tests share (steady QR cadence)."""
    server = _start(STEADY_TIMING)
    yield server
    _stop(server)


@pytest.fixture(scope="package")
def live_server_url(waconnect_server: LiveServer) -> str:
    """Base URL of the shared server, e.g. ``http://127.0.0.1:41234``."""
    return waconnect_server.url


@pytest.fixture(scope="package")
def fast_qr_server_url() -> Iterator[str]:
    """A second server whose QR codes rotate every 1.5 s."""
    server = _start(FAST_TIMING)
    yield server.url
    _stop(server)


@pytest.fixture
def own_server() -> Iterator[LiveServer]:
    """A server for one test alone (it may stop and restart it)."""
    server = _start(STEADY_TIMING)
    yield server
    _stop(server)


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        expect.set_options(timeout=TIMEOUT_MS)
        yield pw


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()


@pytest.fixture
def context(browser: Browser, live_server_url: str) -> Iterator[BrowserContext]:
    """A fresh browser profile (no cookies) per test."""
    context = browser.new_context(base_url=live_server_url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(TIMEOUT_MS)
    yield context
    context.close()


def watch_csp(page: Page) -> list[str]:
    """The Content-Security-Policy violations Chromium reports on ``page`` (console errors)."""
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    return violations


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page that fails its test if anything on it breaks the CSP (an inline script, a style)."""
    page = context.new_page()
    violations = watch_csp(page)
    yield page
    assert not violations, f"Content-Security-Policy violations: {violations}"


def log_in(page: Page, base_url: str = "") -> None:
    """Log in as the staff user through the login form."""
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", ADMIN_USERNAME)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("form.form button[type=submit]")
    page.wait_for_url(re.compile(r"/sessions/$"))


@pytest.fixture
def logged_in_page(page: Page) -> Page:
    """A page logged in as staff, on the sessions list."""
    log_in(page)
    return page


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the servers' output to a failed test's report."""
    report = yield
    if report.failed:
        for server in _servers:
            report.sections.append((f"waconnect server {server.url} output", server.output()))
    return report
