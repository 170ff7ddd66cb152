"""The garbage collector's share of the tail latency: the start-up heap, frozen.

CPython's full (generation 2) collection walks every object the collector
tracks, and stops the whole process meanwhile: the event loop, the database
threads, everything. After start-up most of those objects are modules, classes,
Django's URLconf and model metadata, django-ninja's schemas, Channels' and
Daphne's machinery: alive for the life of the process, never garbage. In the
one-process server under ``benchmarks/bench_qr_latency.py`` such collections took
88–174 ms each (four in 100 s, measured with ``gc.callbacks``; see
docs/benchmarks.md), which is the p99 of every latency aim.

:func:`freeze_startup_heap` moves everything alive at that moment into the
permanent generation, which collections skip (``gc.freeze``, CPython ≥ 3.7; the
technique Instagram described for its Django servers). Garbage made afterwards is
collected as before; only the start-up objects are no longer re-examined.

:func:`observe_pauses` times every collection into
``waconnect_gc_pause_seconds{generation}``, so an operator sees these pauses beside
the latencies they lengthen.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from ops import metrics

logger = logging.getLogger(__name__)


def freeze_startup_heap(where: str) -> int:
    """Collect once, then freeze every surviving object; returns how many are frozen.

    Call it once start-up is over (``where`` names the process for the log), before
    the process starts serving. Calling it again freezes what was added since.
    """
    gc.collect()  # no garbage is made immortal
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%s: %d start-up objects frozen out of garbage collection", where, frozen)
    return frozen


_collection_started = 0.0


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    # Collections never nest and run with the GIL held: one start time is enough.
    global _collection_started
    if phase == "start":
        _collection_started = time.perf_counter()
    elif _collection_started:
        pause = time.perf_counter() - _collection_started
        metrics.gc_pause.labels(str(info["generation"])).observe(pause)


def observe_pauses() -> None:
    """Time every garbage collection of this process into ``waconnect_gc_pause_seconds``
    (idempotent)."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)
