"""The pages' times read as the browser's own toLocale*String would write them.

live.js keeps one ``Intl.DateTimeFormat`` per format (building one per call cost
~0.15 ms, twice per row of the events table); its text must stay what
``toLocaleTimeString`` / ``toLocaleString`` give, in every locale and time zone.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Browser

from tests.e2e.conftest import log_in

pytestmark = pytest.mark.e2e

COMPARE = """() => {
  const differ = [];
  for (let i = 0; i < 200; i++) {
    const ms = 1700000000000 + i * 7777777;
    const time = new Date(ms).toLocaleTimeString([], {
      hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
    });
    const full = new Date(ms).toLocaleString([], { hour12: false });
    const [shortText, fullText] = [waconnect.formatTime(ms), waconnect.formatDateTime(ms)];
    if (shortText !== time) differ.push([ms, shortText, time]);
    if (fullText !== full) differ.push([ms, fullText, full]);
  }
  for (const bad of [NaN, Infinity, 9e15]) {  // toLocale*String: "Invalid Date"
    const texts = [waconnect.formatTime(bad), waconnect.formatDateTime(bad)];
    if (texts.some((text) => text !== new Date(bad).toLocaleString())) differ.push([bad, texts]);
  }
  return differ;
}"""


@pytest.mark.parametrize(
    ("locale", "timezone"),
    [
        ("en-US", "America/New_York"),
        ("de-DE", "Europe/Berlin"),
        ("ja-JP", "Asia/Tokyo"),
        ("ar-EG", "Africa/Cairo"),
        ("en-IN", "Asia/Kolkata"),
    ],
)
def test_times_match_the_browsers_locale_strings(
    browser: Browser, live_server_url: str, locale: str, timezone: str
) -> None:
    context = browser.new_context(base_url=live_server_url, locale=locale, timezone_id=timezone)
    try:
        page = context.new_page()
        log_in(page)  # the sessions list: live.js is loaded
        assert page.evaluate(COMPARE) == []
    finally:
        context.close()
