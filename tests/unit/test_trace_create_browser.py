"""The --samples arithmetic of benchmarks/trace_create_browser.py, on hand-made traces."""

from __future__ import annotations

from typing import Any

from benchmarks.trace_create_browser import (
    outermost_tasks,
    started_after_rendering,
    window_cpu,
)

RUN = "ThreadControllerImpl::RunTask"
POOL = "ThreadPool_RunTask"


def meta(pid: int, tid: int, process: str, thread: str) -> list[dict[str, Any]]:
    return [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": process}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": thread}},
    ]


def task(name: str, ts: float, dur: float, tdur: float | None = None, **at: int) -> dict:
    event = {"ph": "X", "name": name, "ts": ts, "dur": dur, "pid": at.get("pid", 1)}
    event["tid"] = at.get("tid", 10)
    if tdur is not None:
        event["tdur"] = tdur
    return event


def test_window_cpu_counts_outermost_tasks_once_and_adds_up_pool_workers() -> None:
    trace = {
        "traceEvents": [
            *meta(1, 10, "Renderer", "CrRendererMain"),
            *meta(1, 11, "Renderer", "ThreadPoolForegroundWorker"),
            *meta(1, 12, "Renderer", "ThreadPoolForegroundWorker"),
            task(RUN, 1_000, 4_000, 3_000),
            task(RUN, 2_000, 1_000, 900),  # nested in the one above: inside its 3 ms
            task(RUN, 9_000, 1_000, 500),  # after the window
            task(POOL, 1_500, 2_000, 2_000, tid=11),
            task(POOL, 1_500, 2_000, 1_000, tid=12),
            task(POOL, 4_000, 1_000, tid=12),  # no thread time: left out, counted
        ]
    }
    cpu, untimed = window_cpu(trace, [(0, 5_000)])
    assert cpu == [{"Renderer / CrRendererMain": 3.0, "Renderer / ThreadPoolForegroundWorker": 3.0}]
    assert untimed == 1


def test_window_cpu_counts_the_part_of_a_task_inside_the_window() -> None:
    trace = {
        "traceEvents": [
            *meta(1, 10, "Renderer", "CrRendererMain"),
            task(RUN, 0, 4_000, 2_000),  # half of it inside: 1 ms of its 2
            task(RUN, 4_000, 2_000, 2_000),  # all inside
            task(RUN, 8_000, 4_000, 4_000),  # a quarter inside: 1 ms
        ]
    }
    cpu, _ = window_cpu(trace, [(2_000, 9_000)])
    assert cpu == [{"Renderer / CrRendererMain": 4.0}]


def test_outermost_tasks_drops_the_nested_ones() -> None:
    outer, nested, later = task(RUN, 0, 10), task(RUN, 5, 2), task(RUN, 10, 1)
    assert outermost_tasks([later, nested, outer]) == [outer, later]
    same_start = task(RUN, 0, 3)  # starts with ``outer``, ends inside it
    assert outermost_tasks([same_start, outer]) == [outer]


def test_a_message_right_after_a_layout_task_started_behind_it() -> None:
    layout_task = task(RUN, 0, 10_000)
    message_task = task(RUN, 10_300, 2_000)
    events = [layout_task, task("Layout", 2_000, 5_000), message_task]
    tasks = outermost_tasks(events)
    assert started_after_rendering(events, tasks, 11_000) is True


def test_a_message_after_an_idle_gap_or_a_task_without_rendering_did_not() -> None:
    script_task = task(RUN, 0, 10_000)
    events = [script_task, task("FunctionCall", 1_000, 5_000), task(RUN, 10_300, 2_000)]
    assert started_after_rendering(events, outermost_tasks(events), 11_000) is False
    idle_gap = [task(RUN, 0, 10_000), task("Layout", 1_000, 5_000), task(RUN, 15_000, 2_000)]
    assert started_after_rendering(idle_gap, outermost_tasks(idle_gap), 16_000) is False
    assert started_after_rendering(idle_gap, outermost_tasks(idle_gap), 12_000) is None
