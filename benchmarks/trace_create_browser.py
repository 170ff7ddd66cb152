"""Where the browser's main thread goes between "create" and the QR code: a Chromium trace.

Run from the repository root::

    .venv/bin/python benchmarks/trace_create_browser.py      # --creates 4 --min-ms 0.7

Starts a throwaway server like ``bench_qr_latency.py`` (``benchmarks/liveserver.py``),
logs in, creates ``--creates`` sessions over the create page's socket as an admin
would (the last one traced with ``devtools.timeline``), and prints the page's own
timestamps of that create (ms after the click) and every main-thread trace event of
at least ``--min-ms`` in the 160 ms after the click: start (ms after the click),
duration (ms), name, and the JavaScript function or event type where there is one.
Nested events are printed each (a ``Layout`` inside ``UpdateStyleAndLayout``).
This is how the SVG favicon and the forced layout of ``window.scrollTo`` were found
(docs/benchmarks.md). Not a test, not a benchmark: one sample, to read.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import sync_playwright

from benchmarks.bench_qr_latency import FIRST_QR_SHOWN, METRICS, log_in
from benchmarks.liveserver import CHROMIUM, CHROMIUM_ARGS, LiveServer

WINDOW_MS = 160.0


def main_thread_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The complete ("X") events of the renderer's main thread."""
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    main = {key for key, name in names.items() if name == "CrRendererMain"}
    return [e for e in trace["traceEvents"] if (e["pid"], e["tid"]) in main and e.get("ph") == "X"]


def describe(event: dict[str, Any]) -> str:
    data = (event.get("args") or {}).get("data") or {}
    return str(data.get("functionName") or data.get("type") or "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--creates", type=int, default=4, help="creates; the last is traced")
    parser.add_argument("--min-ms", type=float, default=0.7, help="shortest event printed")
    args = parser.parse_args(argv)

    with LiveServer(timing={"first_qr_ttl": 60}) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context().new_page()
            log_in(page, server.url)
            raw = b""
            for n in range(args.creates):
                page.goto(f"{server.url}/sessions/new/")
                page.wait_for_selector("#create-form[data-socket=ready]")
                page.fill("#id_name", f"trace-{uuid.uuid4().hex[:8]}")
                traced = n == args.creates - 1
                if traced:
                    browser.start_tracing(page=page, categories=["devtools.timeline"])
                page.click("#create-submit")
                page.wait_for_function(FIRST_QR_SHOWN, polling=50)
                if traced:
                    raw = browser.stop_tracing()
            measured = page.evaluate(METRICS)
        finally:
            browser.close()

    clicked = measured["createClickedAt"]
    marks = {
        key: round(value - clicked, 1)
        for key, value in measured["metrics"].items()
        if isinstance(value, int | float) and value > 1e12
    }
    print("page's timestamps, ms after the click:", marks)
    events = main_thread_events(json.loads(raw))
    clicks = [e for e in events if e["name"] == "EventDispatch" and describe(e) == "click"]
    start = clicks[0]["ts"] if clicks else min(e["ts"] for e in events)
    print(f"{'start':>7} {'ms':>6}  event")
    for event in sorted(events, key=lambda e: e["ts"]):
        at = (event["ts"] - start) / 1000
        if -2 <= at <= WINDOW_MS and event.get("dur", 0) / 1000 >= args.min_ms:
            print(f"{at:7.1f} {event['dur'] / 1000:6.2f}  {event['name']} {describe(event)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
