"""/readyz of a real web process (Daphne) whose database or Redis is unreachable: the
settings point at a port nobody listens on, as after an outage or a bad deploy."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from benchmarks.liveserver import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]
DROPPED = ("DATABASE_URL", "REDIS_URL", "WACONNECT_DRIVER", "TEST_DATABASE_NAME")


def base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DROPPED}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "waconnect.settings",
            "WACONNECT_DATA_DIR": str(data_dir),
            "WACONNECT_DRIVER": "simulated",
            "DEBUG": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite database for the web processes that should reach theirs."""
    path = tmp_path_factory.mktemp("readyz")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=base_env(path),
        check=True,
        timeout=120,
    )
    return path


def get(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def web(data_dir: Path) -> Iterator[Callable[..., str]]:
    processes: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    def start(**env: str) -> str:
        port = free_port()
        log = (data_dir / f"daphne-{port}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
            + ["waconnect.asgi:application"],
            cwd=ROOT,
            env=base_env(data_dir) | env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        processes.append((proc, log))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # a process start has nothing to wait on
            assert proc.poll() is None, (data_dir / f"daphne-{port}.log").read_text()
            try:
                if get(f"{url}/healthz")[0] == 200:
                    return url
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("daphne did not answer /healthz")

    yield start
    for proc, log in processes:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_a_web_process_with_its_database_and_layer_is_ready(web: Callable[..., str]) -> None:
    url = web()
    assert get(f"{url}/readyz") == (
        200,
        {"status": "ok", "checks": {"database": "ok", "migrations": "ok", "channel_layer": "ok"}},
    )


def test_readyz_fails_while_postgresql_is_unreachable(web: Callable[..., str]) -> None:
    url = web(DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/waconnect")
    status, body = get(f"{url}/readyz")
    assert status == 503
    assert body["status"] == "unavailable"
    checks = body["checks"]
    # The pool retries a refused connection until its timeout; the check gives up
    # at its own, sooner, and answers without waiting for the pool.
    assert checks["database"] in ("failed: OperationalError", "failed: TimeoutError")
    assert checks["migrations"] == "skipped: no database"
    assert get(f"{url}/healthz") == (200, {"status": "ok"})  # alive all the same


def test_readyz_fails_while_redis_is_unreachable(web: Callable[..., str]) -> None:
    url = web(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    status, body = get(f"{url}/readyz")
    assert status == 503
    checks = body["checks"]
    assert checks["database"] == "ok" and checks["migrations"] == "ok"
    assert checks["channel_layer"].startswith("failed: ")
