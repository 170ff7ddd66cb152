"""Start-up's objects are frozen out of the garbage collector's full passes (ops/heap.py)
in both kinds of process: the web tier (the ASGI entry point, which ``runserver``
and Daphne load) and ``run_supervisor``."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import call_command
from prometheus_client import REGISTRY

from ops import heap
from ops.heap import freeze_startup_heap, observe_pauses
from sessions_app.management.commands import run_supervisor

#: Django, Channels, ninja and the project's own modules come to well over this.
STARTUP_OBJECTS = 50_000


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test run collects as usual
    if heap._time_collection in gc.callbacks:
        gc.callbacks.remove(heap._time_collection)


def collections_timed(generation: int) -> float:
    labels = {"generation": str(generation)}
    return REGISTRY.get_sample_value("waconnect_gc_pause_seconds_count", labels) or 0.0


def test_every_collection_is_timed_once_installed() -> None:
    observe_pauses()
    observe_pauses()  # idempotent
    assert gc.callbacks.count(heap._time_collection) == 1
    before = collections_timed(2)
    gc.collect()
    assert collections_timed(2) == before + 1


def test_freezing_keeps_garbage_out_and_new_objects_collectable() -> None:
    garbage: list[Any] = []
    garbage.append(garbage)  # a cycle only the collector frees
    del garbage
    frozen = freeze_startup_heap("test")
    assert frozen == gc.get_freeze_count() > 0
    assert not any(isinstance(o, list) and len(o) == 1 and o[0] is o for o in gc.get_objects()), (
        "the cycle was collected first, not frozen"
    )
    late: list[Any] = []
    late.append(late)
    assert any(o is late for o in gc.get_objects()), "objects made afterwards are tracked"


def test_the_web_process_freezes_its_startup_heap() -> None:
    code = (
        "import gc, waconnect.asgi; "
        "from django.urls import get_resolver; "
        "print(gc.get_freeze_count())"
    )
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "waconnect.settings", "LOG_LEVEL": "WARNING"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(result.stdout.strip().splitlines()[-1]) > STARTUP_OBJECTS


def test_run_supervisor_freezes_before_it_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []

    async def serve(**options: Any) -> None:
        seen.append(gc.get_freeze_count())

    monkeypatch.setattr(run_supervisor, "serve", serve)
    # In this process, not its own: the exit it would make sure of is pytest's.
    monkeypatch.setattr(run_supervisor, "exit_within", lambda grace, status: None)
    call_command("run_supervisor")
    assert seen and seen[0] > STARTUP_OBJECTS
