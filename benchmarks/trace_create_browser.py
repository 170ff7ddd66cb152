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

With ``--samples N`` it traces N creates instead (after ``--creates`` untraced ones)
and prints, per process and thread of Chromium, the CPU time (the trace's thread
time of its top-level tasks, in proportion to their part in the window) spent
between the click and the first QR code on screen, p50 over the samples, next to
the window's length: how much of the machine's two CPUs the browser itself takes
while the server makes the code. And how often the socket's first message, and
the one that drew the first code, reached the page's script in a task that started
within a millisecond of the end of a main-thread task that rendered (style,
layout, paint): likely queued behind it. The trace's own overhead makes every
number larger than untraced: compare them with each other, not with the
benchmarks'.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
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
#: Categories of the --samples mode: thread times ("tdur") and the main thread's work.
SAMPLES_CATEGORIES = ["devtools.timeline", "toplevel", "v8.execute"]
#: A top-level task of a Chromium thread (its children are inside its time).
TOP_LEVEL = {"ThreadControllerImpl::RunTask", "ThreadPool_RunTask"}
RENDERING = {"UpdateLayoutTree", "Layout", "Paint", "PrePaint", "UpdateLayerTree"}


def main_thread_events(trace: dict[str, Any]) -> list[dict[str, Any]]:
    """The complete ("X") events of the renderer's main thread."""
    names = {
        (e["pid"], e["tid"]): e["args"]["name"]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    main = {key for key, name in names.items() if name == "CrRendererMain"}
    return [e for e in trace["traceEvents"] if (e["pid"], e["tid"]) in main and e.get("ph") == "X"]


def thread_names(trace: dict[str, Any]) -> dict[tuple[int, int], str]:
    """``(pid, tid)`` → "process / thread" (Chromium's own names)."""
    meta = [e for e in trace["traceEvents"] if e.get("ph") == "M"]
    processes = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    return {
        (e["pid"], e["tid"]): f"{processes.get(e['pid'], e['pid'])} / {e['args']['name']}"
        for e in meta
        if e["name"] == "thread_name"
    }


def window_cpu(
    trace: dict[str, Any], windows: Sequence[tuple[float, float]]
) -> tuple[list[dict[str, float]], int]:
    """Per window ``(start, end)`` (trace µs): "process / thread" → CPU ms of that
    thread's outermost top-level tasks in the window, each task's thread time
    ("tdur") counted in proportion to the part of its wall time ("dur") inside the
    window (a task nested in another is inside its time). Threads of one kind
    (pool workers) are added up. Also: how many tasks overlapping a window had no
    "tdur" and were left out."""
    names = thread_names(trace)
    by_thread: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for event in trace["traceEvents"]:
        if event.get("ph") == "X" and event.get("name") in TOP_LEVEL:
            by_thread.setdefault((event["pid"], event["tid"]), []).append(event)
    out: list[dict[str, float]] = [{} for _ in windows]
    untimed = 0
    for key, events in by_thread.items():
        thread = re.sub(r"\d+$", "", names.get(key, "?"))
        for task in outermost_tasks(events):
            begin, dur = task["ts"], task.get("dur", 0)
            for index, (start, end) in enumerate(windows):
                inside = min(end, begin + dur) - max(start, begin)
                if inside < 0 or (inside == 0 and not start <= begin <= end):
                    continue
                if "tdur" not in task:
                    untimed += 1
                    continue
                share = inside / dur if dur > 0 else 1.0
                out[index][thread] = out[index].get(thread, 0.0) + task["tdur"] * share / 1000
    return out, untimed


def outermost_tasks(events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The top-level tasks of one thread's ``events`` that no other contains, by
    start (of two starting together, the longer contains the other)."""
    out: list[dict[str, Any]] = []
    ordered = sorted(
        (e for e in events if e["name"] in TOP_LEVEL), key=lambda e: (e["ts"], -e.get("dur", 0))
    )
    for task in ordered:
        if out and task["ts"] < out[-1]["ts"] + out[-1].get("dur", 0):
            continue  # nested in the last one
        out.append(task)
    return out


def started_after_rendering(
    events: Sequence[dict[str, Any]], tasks: Sequence[dict[str, Any]], at: float
) -> bool | None:
    """Whether the task running at ``at`` (trace µs) started within 1 ms of the end
    of a task that rendered (style, layout, paint): likely queued behind it. None
    when no task of ``tasks`` runs at ``at``."""
    running = [t for t in tasks if t["ts"] <= at <= t["ts"] + t.get("dur", 0)]
    if not running:
        return None
    start = running[0]["ts"]
    before = [t for t in tasks if t["ts"] + t.get("dur", 0) <= start]
    if not before or start - (before[-1]["ts"] + before[-1].get("dur", 0)) > 1000:
        return False
    end = before[-1]["ts"] + before[-1].get("dur", 0)
    return any(e["name"] in RENDERING and before[-1]["ts"] <= e["ts"] <= end for e in events)


def report_samples(raw: bytes, measured: Sequence[dict[str, Any]]) -> None:
    """Print the --samples mode's table (see the module's docstring)."""
    trace = json.loads(raw)
    events = main_thread_events(trace)
    clicks = sorted(
        (e for e in events if e["name"] == "EventDispatch" and describe(e) == "click"),
        key=lambda e: e["ts"],
    )
    if len(clicks) != len(measured):  # each create's window starts at its click
        raise SystemExit(f"{len(clicks)} clicks in the trace for {len(measured)} creates")
    page_threads = {(e["pid"], e["tid"]) for e in clicks}
    events = [e for e in events if (e["pid"], e["tid"]) in page_threads]  # the page's own
    tasks = outermost_tasks(events)
    windows: list[tuple[float, float]] = []
    found = {"the first socket message": [], "the first code's message": []}
    for click, sample in zip(clicks, measured, strict=True):
        clicked, metrics = sample["createClickedAt"], sample["metrics"]
        at = {
            "the first socket message": metrics.get("firstMessageAt"),
            "the first code's message": metrics["firstQrShownAt"],
        }
        windows.append(
            (click["ts"], click["ts"] + (at["the first code's message"] - clicked) * 1000)
        )
        for label, wall in at.items():
            if wall is not None:
                found[label].append(
                    started_after_rendering(events, tasks, click["ts"] + (wall - clicked) * 1000)
                )
    cpu, untimed = window_cpu(trace, windows)
    threads = sorted({t for w in cpu for t in w}, key=lambda t: -sum(w.get(t, 0) for w in cpu))
    window = statistics.median((end - start) / 1000 for start, end in windows)
    print(f"{len(windows)} traced creates; click → QR on screen, p50 {window:.1f} ms")
    print(f"{'CPU ms, p50':>12}  Chromium process / thread (its tasks' time in the window)")
    for thread in threads:
        print(f"{statistics.median(w.get(thread, 0.0) for w in cpu):12.1f}  {thread}")
    total = statistics.median(sum(w.values()) for w in cpu)
    print(f"{total:12.1f}  all of Chromium (p50 of the per-window sums; not the column's sum)")
    if untimed:
        print(f"({untimed} tasks in the windows had no thread time and are not counted)")
    for label, outcomes in found.items():
        seen = [o for o in outcomes if o is not None]
        print(
            f"{label}: its task started ≤ 1 ms after a rendering task (style, layout, paint) "
            f"in {sum(seen)} of {len(seen)}"
            + (
                f" ({len(outcomes) - len(seen)} not found in a task)"
                if len(seen) < len(outcomes)
                else ""
            )
        )


def describe(event: dict[str, Any]) -> str:
    data = (event.get("args") or {}).get("data") or {}
    return str(data.get("functionName") or data.get("type") or "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--creates",
        type=int,
        default=4,
        help="creates; the last is traced (with --samples: untraced ones first)",
    )
    parser.add_argument("--min-ms", type=float, default=0.7, help="shortest event printed")
    parser.add_argument(
        "--samples", type=int, default=0, help="trace this many creates and sum them up"
    )
    parser.add_argument(
        "--save", metavar="PATH", help="--samples: also write the trace (for Perfetto's UI)"
    )
    args = parser.parse_args(argv)
    if args.samples:
        return sample_mode(args.creates, args.samples, args.save)

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


def sample_mode(untraced: int, samples: int, save: str | None = None) -> int:
    """--samples: ``untraced`` creates, then ``samples`` traced ones, then the table."""
    measured: list[dict[str, Any]] = []
    with LiveServer(timing={"first_qr_ttl": 60}) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
            log_in(page, server.url)
            for n in range(untraced + samples):
                if n == untraced:
                    browser.start_tracing(page=page, categories=SAMPLES_CATEGORIES)
                page.goto(f"{server.url}/sessions/new/")
                page.wait_for_selector("#create-form[data-socket=ready]")
                page.fill("#id_name", f"trace-{uuid.uuid4().hex[:8]}")
                page.click("#create-submit")
                page.wait_for_function(FIRST_QR_SHOWN, polling=50)
                if n >= untraced:  # (its next code comes in 60 s: no load meanwhile)
                    measured.append(page.evaluate(METRICS))
            raw = browser.stop_tracing()
        finally:
            browser.close()
    if save:
        Path(save).write_bytes(raw)
    report_samples(raw, measured)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
