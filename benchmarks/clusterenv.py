"""What the cluster benchmarks need around :mod:`benchmarks.cluster`: their own
PostgreSQL database and Redis database, Django in the benchmark process, and a
look at the processes' logs afterwards.

Each benchmark creates a database of its own (dropped at the end, even on failure)
and flushes one Redis database (db 12 by default), so it never touches the test
database or another benchmark's data on a shared machine.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psycopg
import redis
from psycopg import sql

from benchmarks.cluster import REPO, Cluster

PG_SERVER = "postgres://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379/12"

_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback")
_NOISE = re.compile(r"^\S+ \S+ |\d+")  # timestamps, ids, numbers


class BenchError(RuntimeError):
    """A step of a benchmark's set-up failed (its output is in the message)."""


def log(text: str) -> None:
    """Progress on stderr; the report goes to stdout."""
    print(text, file=sys.stderr, flush=True)


def manage(env: Mapping[str, str], *args: str, timeout: float = 300) -> str:
    """Run a management command with ``env``; its output, or BenchError."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise BenchError(
            f"manage.py {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


def _admin(server: str) -> psycopg.Connection:
    return psycopg.connect(f"{server}/postgres", autocommit=True)


def drop_database(server: str, name: str) -> None:
    with _admin(server) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@contextlib.contextmanager
def bench_database(name: str, server: str = PG_SERVER, *, keep: bool = False) -> Iterator[str]:
    """A fresh, migrated database ``name``; yields its URL; dropped on exit unless ``keep``."""
    drop_database(server, name)
    with _admin(server) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{server}/{name}"
    try:
        env = {**os.environ, "DJANGO_SETTINGS_MODULE": "waconnect.settings", "DATABASE_URL": url}
        manage(env, "migrate", "--noinput", "-v", "0")
        yield url
    finally:
        close_django_connections()
        if keep:
            log(f"kept the database {name}; drop it with: dropdb -h 127.0.0.1 -U postgres {name}")
        else:
            drop_database(server, name)


@contextlib.contextmanager
def log_directory(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A directory for the processes' logs: removed at the end, unless ``keep`` or
    the benchmark failed (then its path is printed)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        log(f"the processes' logs are in {path}")
        raise
    if keep:
        log(f"the processes' logs are in {path}")
    else:
        shutil.rmtree(path, ignore_errors=True)


def flush_redis(url: str = REDIS_URL) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def setup_django(database_url: str, redis_url: str) -> None:
    """Django in this process, on the benchmark's database and Redis (for ``intents``)."""
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "waconnect.settings",
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "WACONNECT_DRIVER": "simulated",
            "LOG_LEVEL": "WARNING",
        }
    )
    import django

    django.setup()


def close_django_connections() -> None:
    """Close this process's database connections, if Django was set up."""
    if "django.db" not in sys.modules:
        return
    from django.conf import settings

    if not settings.configured:
        return
    from django.db import connections

    connections.close_all()


def log_problems(cluster: Cluster, limit: int = 8, extra: Sequence[Path] = ()) -> list[str]:
    """Warnings, errors and tracebacks in every process's log (the cluster's and
    ``extra`` files), counted by kind."""
    counts: collections.Counter[str] = collections.Counter()
    examples: dict[str, str] = {}
    sources = [(s.name, s.output()) for s in cluster.supervisors]
    for path in (cluster.log_dir / "simulated-whatsapp.log", *extra):
        if path.exists():
            sources.append((path.stem, path.read_text(errors="replace")))
    for name, text in sources:
        for line in text.splitlines():
            if _PROBLEM.search(line):
                key = f"{name.rstrip('-0123456789')}: " + _NOISE.sub("#", line)[:160]
                counts[key] += 1
                examples.setdefault(key, f"{name}: {line[:240]}")
    return [f"{count}× {examples[key]}" for key, count in counts.most_common(limit)]


def child_pid(needle: str) -> int:
    """The pid of this process's child whose command line contains ``needle``."""
    me = str(os.getpid())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            ppid = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if ppid == me and needle in cmdline:
                return int(proc.name)
    raise BenchError(f"no child process runs {needle!r}")


def message_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of the benchmarks that send ``--messages`` one at a time over
    ``--sessions`` after a ``--warmup``, with ``--json`` for the results."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--json", type=Path, help="write the results here too")
    return parser


def cluster_arguments(parser: argparse.ArgumentParser, database: str) -> None:
    """Add the production shape's ``--supervisors``, ``--database`` and ``--redis``."""
    parser.add_argument("--supervisors", type=int, default=2)
    parser.add_argument("--database", default=database)
    parser.add_argument("--redis", default=REDIS_URL)
