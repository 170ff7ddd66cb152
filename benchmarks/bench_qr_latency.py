"""How fast an admin sees a QR code: after pressing "create", and after WhatsApp rotates it.

Run from the repository root::

    .venv/bin/python benchmarks/bench_qr_latency.py --sessions 50 [--json results.json]

It starts its own server exactly like the e2e tests (``benchmarks/liveserver.py``:
fresh SQLite, ``manage.py runserver --noreload`` with the supervisor inside and the
simulated WhatsApp on a fast cadence), logs in with headless Chromium and, for each
session, in one tab, one after another:

1. opens the create page, fills a unique name and submits. The page stores
   ``createClickedAt`` (``performance.timeOrigin + performance.now()``) in
   ``sessionStorage`` on submit;
2. waits on the detail page until ``window.waconnectMetrics.firstQrShownAt`` is
   set (the QR SVG is in the DOM, rendered server-side or from a socket push).
   With JavaScript the create page posts with fetch, opens the new session's
   socket and puts the detail page's markup in place of the form (no second page
   load; the URL becomes the detail page's); ``firstQrShownAt`` is only set once
   that markup is in the document and the SVG is in its ``#qr``.
   **create → QR visible** = ``firstQrShownAt - createClickedAt``: POST, detail
   markup, WebSocket connect and the supervisor's work, whichever comes last;
3. stays on the page until ``--swaps`` more codes were swapped in.
   **new QR → image swapped** = ``shownAt - issuedAt`` per swap, where ``issuedAt``
   is the server's ``qr_issued_at`` (wall clock, set when the supervisor handles
   WhatsApp's QR event) and ``shownAt`` the browser's wall clock right after the
   ``innerHTML`` swap. Both clocks are this machine's system clock.

Not a test: nothing is asserted; see docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.sync_api import Page, sync_playwright

from benchmarks.liveserver import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    CHROMIUM,
    CHROMIUM_ARGS,
    LiveServer,
)
from benchmarks.stats import percentile
from benchmarks.wsprobe import QrProbe

OLD_SYSTEM_BOUND_MS = 30_000.0
TARGETS_MS = {"create_to_qr": 60.0, "swap": 12.0}  # p99 (issue 14)
PIPELINE_FLOOR = "6.5 ms p50 / 8.8 ms p99"

FIRST_QR_SHOWN = "() => window.waconnectMetrics && window.waconnectMetrics.firstQrShownAt !== null"
METRICS = """() => ({
    createClickedAt: Number(sessionStorage.getItem('waconnect.createClickedAt')),
    metrics: window.waconnectMetrics,
    nav: (() => {
        const n = performance.getEntriesByType('navigation')[0];
        return n ? n.toJSON() : null;
    })(),
    timeOrigin: performance.timeOrigin,
})"""


def summary(values: Sequence[float]) -> dict[str, float | int]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def log_in(page: Page, base_url: str) -> None:
    page.goto(f"{base_url}/accounts/login/")
    page.fill("#id_username", ADMIN_USERNAME)
    page.fill("#id_password", ADMIN_PASSWORD)
    page.click("form.form button[type=submit]")
    page.wait_for_url(f"{base_url}/sessions/")


def clock_offset_ms(page: Page, samples: int = 15) -> tuple[float, float]:
    """Browser wall clock minus Python's, from the tightest of several round trips.

    Returns (offset, uncertainty = half that round trip); the offset should be ~0
    because both read this machine's system clock.
    """
    best: tuple[float, float] | None = None
    for _ in range(samples):
        before = time.time() * 1000
        browser_now = page.evaluate("() => performance.timeOrigin + performance.now()")
        after = time.time() * 1000
        rtt = after - before
        if best is None or rtt / 2 < best[1]:
            best = (float(browser_now - (before + after) / 2), rtt / 2)
    assert best is not None
    return best


def measure_session(
    page: Page,
    base_url: str,
    name: str,
    swaps: int,
    timeout_ms: float,
    stop: bool,
    probe: QrProbe | None = None,
    wait_socket: bool = True,
) -> dict[str, Any]:
    page.goto(f"{base_url}/sessions/new/")
    page.fill("#id_name", name)
    if wait_socket:
        # An admin types a name for a second or more: the page's socket is open by then.
        page.wait_for_selector("#create-form[data-socket=ready]", timeout=timeout_ms)
    page.click("#create-submit")
    # Poll every 50 ms, not every frame: the page records its own timestamps, so
    # polling only paces this script and should not steal the renderer's CPU.
    page.wait_for_function(FIRST_QR_SHOWN, timeout=timeout_ms, polling=50)
    if probe is not None:
        probe.watch(int(page.url.rstrip("/").rsplit("/", 1)[1]))
    swapped = f"() => window.waconnectMetrics.swaps.length >= {swaps}"
    page.wait_for_function(swapped, timeout=timeout_ms, polling=50)
    data = page.evaluate(METRICS)
    if stop:
        # Stop the session so its remaining codes don't load the next measurement.
        page.click("button[data-action=stop]")
        page.wait_for_selector("#state[data-state=stopped]", timeout=timeout_ms)
    if probe is not None:
        probe.unwatch()
    metrics = data["metrics"]
    nav = data["nav"] or {}
    clicked = data["createClickedAt"]
    shown = metrics["firstQrShownAt"]
    origin = data["timeOrigin"]
    return {
        "name": name,
        "url": page.url,
        "create_to_qr_ms": shown - clicked,
        "first_qr_from": metrics.get("firstQrFrom"),
        "created_via": metrics.get("createdVia"),
        # Breakdown of create → QR, all relative to the click:
        "click_to_issued_ms": (metrics.get("firstQrIssuedAt") or math.nan) - clicked,
        "issued_to_shown_ms": shown - (metrics.get("firstQrIssuedAt") or math.nan),
        # In-place path (create.js): the POST's answer and the detail markup swapped in;
        # after a full navigation (no script): the detail page's response and DOMContentLoaded.
        "in_place": metrics.get("detailShownAt") is not None,
        "click_to_response_ms": (
            metrics["createRespondedAt"] - clicked
            if metrics.get("detailShownAt") is not None
            else origin + nav.get("responseEnd", math.nan) - clicked
        ),
        "click_to_dom_ready_ms": (
            metrics["detailShownAt"] - clicked
            if metrics.get("detailShownAt") is not None
            else origin + nav.get("domContentLoadedEventEnd", math.nan) - clicked
        ),
        "click_to_socket_message_ms": (metrics.get("firstMessageAt") or math.nan) - clicked,
        "swaps_ms": [s["shownAt"] - s["issuedAt"] for s in metrics["swaps"]],
        "swap_received_ms": [s["receivedAt"] - s["issuedAt"] for s in metrics["swaps"]],
        "swap_render_ms": [s["shownAt"] - s["receivedAt"] for s in metrics["swaps"]],
        "swap_probe_ms": [
            (probe.received_at(s["issuedAt"]) or math.nan) - s["issuedAt"]
            for s in metrics["swaps"]
            if probe is not None
        ],
    }


def fmt(value: float) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:,.1f}"
    )


def table(rows: list[tuple[str, dict[str, float | int]]]) -> str:
    head = f"| {'measure':<44} | {'count':>5} | {'p50':>8} | {'p95':>8} | {'p99':>8} | {'max':>8} |"
    sep = f"|{'-' * 46}|{'-' * 6}:|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|{'-' * 9}:|"
    lines = [head, sep]
    for label, s in rows:
        lines.append(
            f"| {label:<44} | {s['count']:>5} | {fmt(s['p50']):>8} | {fmt(s['p95']):>8} "
            f"| {fmt(s['p99']):>8} | {fmt(s['max']):>8} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50, help="sessions to create (default 50)")
    parser.add_argument(
        "--swaps", type=int, default=2, help="QR swaps to wait for per session (default 2)"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="sessions run first and not counted (default 1)"
    )
    parser.add_argument(
        "--first-qr-ttl", type=float, default=1.0, help="simulated first QR lifetime, s"
    )
    parser.add_argument(
        "--next-qr-ttl", type=float, default=1.0, help="simulated next QR lifetime, s"
    )
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="leave each measured session rotating its codes (default: stop it), "
        "so later measurements run next to a few busy sessions",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="also watch each session with a bare Python WebSocket client, to split "
        "'new QR → swapped' into server + TCP and browser",
    )
    parser.add_argument(
        "--no-wait-socket",
        action="store_true",
        help="press create as soon as the page is loaded, without waiting for its socket "
        "(the create then goes by POST whenever the socket is not open yet)",
    )
    parser.add_argument("--qr-count", type=int, default=6, help="simulated codes per QR round")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write the results (with samples) as JSON ('-' = stdout)",
    )
    args = parser.parse_args(argv)
    if args.swaps >= args.qr_count:
        parser.error("--swaps must be smaller than --qr-count")

    timing = {
        "first_qr_ttl": args.first_qr_ttl,
        "next_qr_ttl": args.next_qr_ttl,
        "qr_count": args.qr_count,
        "connect_delay": 0,
        "pair_delay": 0.2,
    }
    wait_ms = 1000 * (args.first_qr_ttl + args.swaps * args.next_qr_ttl) + 15_000
    run_id = uuid.uuid4().hex[:6]
    started = time.monotonic()
    load_before = os.getloadavg()
    results: list[dict[str, Any]] = []
    warmups: list[dict[str, Any]] = []

    print(
        f"starting the server (simulated WhatsApp, QR every {args.next_qr_ttl:g} s) …",
        file=sys.stderr,
    )
    with LiveServer(timing=timing) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            log_in(page, server.url)
            offset, offset_error = clock_offset_ms(page)
            probe = None
            if args.probe:
                cookie = next(c["value"] for c in context.cookies() if c["name"] == "sessionid")
                probe = QrProbe("127.0.0.1", server.port, cookie)
            total = args.warmup + args.sessions
            for index in range(total):
                name = f"bench-{run_id}-{index:03d}"
                try:
                    result = measure_session(
                        page,
                        server.url,
                        name,
                        args.swaps,
                        wait_ms,
                        stop=not args.keep_running,
                        probe=probe,
                        wait_socket=not args.no_wait_socket,
                    )
                except Exception:
                    print(server.output(80), file=sys.stderr)
                    raise
                (warmups if index < args.warmup else results).append(result)
                swaps_text = ", ".join(f"{v:.1f}" for v in result["swaps_ms"])
                print(
                    f"  {index + 1:>3}/{total} {name}: "
                    f"create→QR {result['create_to_qr_ms']:7.1f} ms "
                    f"({result['first_qr_from']}), swaps {swaps_text} ms"
                    + ("  [warm-up, not counted]" if index < args.warmup else ""),
                    file=sys.stderr,
                )
            if probe is not None:
                probe.close()
            context.close()
        finally:
            browser.close()
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()

    create = [r["create_to_qr_ms"] for r in results]
    swaps = [v for r in results for v in r["swaps_ms"]]
    breakdown = {
        "click → create answered (socket or POST)": [r["click_to_response_ms"] for r in results],
        "click → detail markup in the page": [r["click_to_dom_ready_ms"] for r in results],
        "click → first socket message": [r["click_to_socket_message_ms"] for r in results],
        "click → first QR issued (server clock)": [r["click_to_issued_ms"] for r in results],
        "first QR issued → visible": [r["issued_to_shown_ms"] for r in results],
    }
    swap_breakdown = {
        "QR issued → socket message received": [v for r in results for v in r["swap_received_ms"]],
        "socket message received → image swapped": [
            v for r in results for v in r["swap_render_ms"]
        ],
    }
    if args.probe:
        probe_ms = [v for r in results for v in r["swap_probe_ms"] if not math.isnan(v)]
        browser_ms = [
            received - probed
            for r in results
            for received, probed in zip(r["swap_received_ms"], r["swap_probe_ms"], strict=True)
            if not math.isnan(probed)
        ]
        swap_breakdown = {
            "QR issued → bare Python client received": probe_ms,
            "  … → Chromium page received (browser share)": browser_ms,
            **swap_breakdown,
        }
    report = {
        "sessions": args.sessions,
        "warmup": args.warmup,
        "timing": timing,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average_before": load_before,
        "load_average_after": load_after,
        "sessions_stopped_after_measuring": not args.keep_running,
        "probe": args.probe,
        "clock_offset_ms": offset,
        "clock_offset_uncertainty_ms": offset_error,
        "elapsed_s": elapsed,
        "create_to_qr": summary(create),
        "swap": summary(swaps),
        "breakdown": {k: summary(v) for k, v in breakdown.items()},
        "swap_breakdown": {k: summary(v) for k, v in swap_breakdown.items()},
        "first_qr_from": {
            src: sum(1 for r in results if r["first_qr_from"] == src) for src in ("page", "socket")
        },
        "detail_shown_in_place": sum(1 for r in results if r["in_place"]),
        "created_via": {
            via: sum(1 for r in results if r["created_via"] == via) for via in ("socket", "post")
        },
        "old_system_bound_ms": OLD_SYSTEM_BOUND_MS,
        "targets_p99_ms": TARGETS_MS,
        "samples": results,
        "warmup_samples": warmups,
    }

    print()
    print(
        f"QR latency: {args.sessions} sessions (+{args.warmup} warm-up), {len(swaps)} swaps, "
        f"{os.cpu_count()} CPUs, headless Chromium, simulated WhatsApp; all times in ms"
    )
    print()
    print(
        table(
            [
                ("create → QR visible (page load included)", report["create_to_qr"]),
                ("new QR → image swapped", report["swap"]),
            ]
        )
    )
    print(
        f"| {'old system (polling): new QR visible after':<44} | {'':>5} | {'':>8} | {'':>8} | "
        f"{'':>8} | {'≤ 30,000':>8} |"
    )
    print()
    print("create → QR, where the time goes (from the click):")
    print()
    print(table(list(report["breakdown"].items())))
    print()
    print("new QR → swap, where the time goes:")
    print()
    print(table(list(report["swap_breakdown"].items())))
    print()
    sources = report["first_qr_from"]
    print(
        f"first QR came from: server-rendered page {sources['page']}×, "
        f"socket {sources['socket']}×; detail page shown in place (no reload) "
        f"{report['detail_shown_in_place']}/{len(results)}; created over the page's socket "
        f"{report['created_via']['socket']}×, by POST {report['created_via']['post']}×; "
        f"browser−server clock offset "
        f"{offset:+.2f} ± {offset_error:.2f} ms; run took {elapsed:.0f} s"
    )
    print(
        "load average (1/5/15 min) before: "
        + " ".join(f"{v:.2f}" for v in load_before)
        + ", after: "
        + " ".join(f"{v:.2f}" for v in load_after)
        + ("" if args.keep_running else "; each session was stopped once measured")
    )
    verdicts = []
    for key, label in (("create_to_qr", "create → QR"), ("swap", "new QR → swap")):
        p99 = report[key]["p99"]
        ok = p99 < TARGETS_MS[key]
        verdict = "met" if ok else "MISSED"
        verdicts.append(
            f"{label} p99 {p99:.1f} ms {'<' if ok else '≥'} {TARGETS_MS[key]:g} ms: {verdict}"
        )
    print("targets: " + "; ".join(verdicts) + f" (pipeline floor: {PIPELINE_FLOOR})")

    if args.json:
        text = json.dumps(report, indent=2, default=float)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
