"""Plain ``daphne`` as the Procfile runs it (no runserver, no static handler), on a free port.

Shared by the transport tests (SQLite) and the connection-bound test (PostgreSQL).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.liveserver import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

#: The developer's shell may point elsewhere; each test says what it wants.
_DROPPED = ("DATABASE_URL", "REDIS_URL", "DEBUG", "WACONNECT_DRIVER", "ALLOWED_HOSTS")


def procfile_web() -> str:
    """The ``web:`` command of the Procfile, as a shell line."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("web:"):
            return line.removeprefix("web:").strip()
    raise AssertionError("the Procfile has no web: line")


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED}
    env.update({"PATH": f"{BIN}:{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def manage(env: Mapping[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"manage.py {args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@contextmanager
def daphne(env: Mapping[str, str], log: Path, host: str = "127.0.0.1") -> Iterator[str]:
    """Run the Procfile's web line; yield its base URL once it answers HTTP."""
    port = free_port()
    command = re.sub(r"\$\{PORT:-\d+\}", str(port), procfile_web())
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            cwd=ROOT,
            env=dict(env),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        url = f"http://{host}:{port}"
        try:
            _wait_until_answering(process, url, log)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _wait_until_answering(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    """Poll (a process start has no event to wait on) until any HTTP answer comes back."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, f"daphne exited:\n{log.read_text(errors='replace')}"
        try:
            httpx.get(f"{url}/", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"daphne did not answer within 30 s:\n{log.read_text(errors='replace')}")
