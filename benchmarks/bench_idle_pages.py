"""What a live page left open costs the browser: Chromium's CPU with the page at rest.

Run from the repository root::

    .venv/bin/python benchmarks/bench_idle_pages.py      # --windows 10 [--reduced-motion]

Starts the one-process server (``benchmarks/liveserver.py``, the simulated WhatsApp,
QR codes that live ten minutes so none rotates while measured), logs in in headless
Chromium and leaves each page open and untouched: the sessions list, the create
page (its socket open), a session's page showing its QR code, and that session
once the simulated phone scanned it. For each page, ``--windows`` windows of one
second each (after a second to settle): the CPU time of all of Chromium's
processes (``/proc/<pid>/stat``, utime + stime) over the window, as a percentage of
one core; p50/p95/p99 over the windows. ``--reduced-motion`` asks the page for
``prefers-reduced-motion: reduce`` (our CSS then stops every animation): the
floor to compare with. Not a test; tests/e2e/test_idle_pages.py checks the cause
(no endless animation on these pages) without timing anything.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.bench_qr_latency import FIRST_QR_SHOWN, log_in
from benchmarks.liveserver import CHROMIUM, CHROMIUM_ARGS, LiveServer
from benchmarks.stats import CLK_TCK, load_average, summary, table

#: Codes that outlive the measurement: nothing rotates while a page is measured.
TIMING = {
    "first_qr_ttl": 600,
    "next_qr_ttl": 600,
    "qr_count": 2,
    "connect_delay": 0,
    "pair_delay": 0.2,
}


def _processes() -> dict[int, tuple[int, bytes, int]]:
    """Every process: pid → (parent pid, program, utime + stime in ticks)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # Chromium rewrites its children's command lines as one string (spaces, no NULs).
            program = (entry / "cmdline").read_bytes().replace(b"\0", b" ").split(b" ", 1)[0]
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        found[int(entry.name)] = (int(fields[1]), program, int(fields[11]) + int(fields[12]))
    return found


def chromium_cpu_s() -> float:
    """CPU seconds (utime + stime) of this benchmark's Chromium, summed over its
    processes: those named ``chromium`` among this process's descendants (Debian's
    ``/usr/bin/chromium`` is a script that runs ``/usr/lib/chromium/chromium``, which
    starts the others), so another browser on the machine is not counted. A process
    that ends within a window takes its CPU time with it (a window may read low)."""
    processes = _processes()
    ours = {os.getpid()}
    grew = True
    while grew:  # descendants, however deep
        more = {pid for pid, (parent, _, _) in processes.items() if parent in ours} - ours
        ours |= more
        grew = bool(more)
    ticks = sum(
        t
        for pid, (_, program, t) in processes.items()
        if pid in ours and os.path.basename(program) == b"chromium"
    )
    return ticks / CLK_TCK


def at_rest(windows: int) -> list[float]:
    """Chromium's CPU in each of ``windows`` one-second windows, % of one core."""
    time.sleep(1.0)  # let the page settle (fonts, first frames)
    shares = []
    for _ in range(windows):
        before, started = chromium_cpu_s(), time.monotonic()
        time.sleep(1.0)
        shares.append(100 * (chromium_cpu_s() - before) / (time.monotonic() - started))
    return shares


def pages(base_url: str, name: str) -> list[tuple[str, Callable[[Page], None]]]:
    """(label, how to bring the page to rest), in the order they are visited."""

    def session_list(page: Page) -> None:
        page.goto(f"{base_url}/sessions/")
        page.wait_for_selector("#socket-status[data-online=true]")

    def create(page: Page) -> None:
        page.goto(f"{base_url}/sessions/new/")
        page.wait_for_selector("#create-form[data-socket=ready]")

    def qr(page: Page) -> None:
        page.fill("#id_name", name)
        page.click("#create-submit")
        page.wait_for_function(FIRST_QR_SHOWN, polling=50)

    def connected(page: Page) -> None:
        page.click("button[data-action=simulate-scan]")
        page.wait_for_selector("#state[data-state=connected]")

    return [
        ("sessions list", session_list),
        ("create page, socket open", create),
        ("session page, QR code shown", qr),
        ("session page, connected", connected),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--windows", type=int, default=10, help="one-second windows per page (10)")
    parser.add_argument(
        "--reduced-motion", action="store_true", help="prefers-reduced-motion: reduce (the floor)"
    )
    args = parser.parse_args(argv)
    load_before = load_average()
    rows = []
    with LiveServer(timing=TIMING) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(
                viewport={"width": 1280, "height": 900},
                reduced_motion="reduce" if args.reduced_motion else "no-preference",
            )
            page = context.new_page()
            log_in(page, server.url)
            for label, bring in pages(server.url, f"idle-{os.getpid()}"):
                bring(page)
                shares = at_rest(args.windows)
                print(f"  {label}: {', '.join(f'{v:.0f}' for v in shares)} %", file=sys.stderr)
                rows.append((label, summary(shares)))
        finally:
            browser.close()
    motion = "reduce" if args.reduced_motion else "no-preference"
    print(
        f"\nChromium's CPU with a page open and untouched, % of one core per 1 s window "
        f"(all its processes; headless, software compositing; prefers-reduced-motion: {motion}); "
        f"{os.cpu_count()} CPUs\n"
    )
    print(table(rows, label="page at rest"))
    print(f"\nload average before: {load_before}, after: {load_average()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
