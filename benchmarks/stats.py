"""Numbers the benchmarks share: percentiles, summary rows, tables, and /proc readings.

``percentile`` and ``summary`` compute what ``bench_qr_latency.py`` computes (linear
interpolation between closest ranks, numpy's default), so the tables in
docs/benchmarks.md compare like with like. The /proc readers measure a process
from outside: CPU time (all threads) and memory (RSS, and PSS, which divides
shared pages between the processes that map them).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

Summary = dict[str, float]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default 'linear')."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(values: Sequence[float]) -> Summary:
    """count, p50, p95, p99 and max of ``values``."""
    return {
        "count": float(len(values)),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else math.nan,
    }


def fmt(value: float | None, digits: int = 1) -> str:
    """``1,234.5``; a dash for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def table(rows: Iterable[tuple[str, Summary]], *, label: str = "measure", digits: int = 1) -> str:
    """A Markdown table: one row per (label, summary), count/p50/p95/p99/max."""
    rows = list(rows)
    width = max([len(label), *(len(name) for name, _ in rows)])
    lines = [
        f"| {label:<{width}} | count |      p50 |      p95 |      p99 |      max |",
        f"|{'-' * (width + 2)}|------:|---------:|---------:|---------:|---------:|",
    ]
    for name, s in rows:
        cells = " | ".join(f"{fmt(s[k], digits):>8}" for k in ("p50", "p95", "p99", "max"))
        lines.append(f"| {name:<{width}} | {int(s['count']):>5} | {cells} |")
    return "\n".join(lines)


# -- a process, seen from /proc --------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mib(pid: int) -> dict[str, float]:
    """RSS and PSS of a process in MiB (``/proc/<pid>/smaps_rollup``)."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss"):
            values[key.lower()] = int(rest.split()[0]) / 1024
    return values


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def load_average() -> str:
    """The 1/5/15-minute load averages, for the report's caveats."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())
