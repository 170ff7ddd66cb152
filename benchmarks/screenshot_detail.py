"""Take docs/screenshot-detail.png: a session's detail page showing its QR code.

Run from the repository root::

    .venv/bin/python benchmarks/screenshot_detail.py [--out docs/screenshot-detail.png]

Starts a throwaway server like the benchmark does (``benchmarks/liveserver.py``),
creates a session through the form and captures the page once the QR is on screen.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import expect, sync_playwright

from benchmarks.bench_qr_latency import log_in
from benchmarks.liveserver import CHROMIUM, CHROMIUM_ARGS, REPO, LiveServer


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", default=str(REPO / "docs" / "screenshot-detail.png"), help="PNG to write"
    )
    parser.add_argument("--name", default="sales-team", help="the session's name")
    args = parser.parse_args(argv)

    with (
        LiveServer(timing={"first_qr_ttl": 60, "next_qr_ttl": 20}) as server,
        sync_playwright() as pw,
    ):
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                base_url=server.url, viewport={"width": 1280, "height": 900}
            )
            page = context.new_page()
            log_in(page, server.url)
            page.goto("/sessions/new/")
            page.fill("#id_name", args.name)
            page.click("#create-submit")
            page.wait_for_selector("#qr svg")
            expect(page.locator("#socket-status")).to_have_attribute("data-online", "true")
            expect(page.locator("#qr-countdown")).to_have_text("57 s", timeout=10_000)
            page.screenshot(path=args.out)
            context.close()
        finally:
            browser.close()
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
