"""A real waconnect server for browser tests and benchmarks, started from scratch.

``LiveServer`` does what an admin does: ``manage.py migrate``, ``createsuperuser``
and ``manage.py runserver --noreload`` (Daphne with the supervisor inside and the
simulated WhatsApp), all against a fresh SQLite file in a temporary directory.
Used by ``tests/e2e/conftest.py`` and ``benchmarks/bench_qr_latency.py`` so both
measure the same thing. Also home of the Chromium launch settings they share.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO

REPO = Path(__file__).resolve().parent.parent

ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "live-server-Admin-7391"

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

#: Environment a developer's shell may carry that would point the server elsewhere.
_DROPPED_ENV = ("DATABASE_URL", "REDIS_URL", "WACONNECT_DRIVER", "WACONNECT_INLINE_SUPERVISOR")


class ServerError(RuntimeError):
    """The server did not start (its output is in the message)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """``manage.py runserver`` on a free port with its own data directory.

    Use as a context manager; ``url`` is valid inside it. ``timing`` sets the
    simulated WhatsApp's cadence (``WACONNECT_SIM_*``, seconds).
    """

    def __init__(
        self,
        *,
        timing: Mapping[str, float | int] | None = None,
        extra_env: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        log_level: str = "INFO",
    ) -> None:
        self.timing = dict(timing or {})
        self.extra_env = dict(extra_env or {})
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.port = 0
        self.url = ""
        self.data_dir: Path | None = None
        self.log_path: Path | None = None
        self._log_file: IO[bytes] | None = None
        self._process: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> LiveServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.cleanup()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        assert self.data_dir is not None
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "waconnect.settings",
                "WACONNECT_DATA_DIR": str(self.data_dir),
                "WACONNECT_DRIVER": "simulated",
                "DEBUG": "true",
                "LOG_LEVEL": self.log_level,
                "PYTHONUNBUFFERED": "1",
                "DJANGO_SUPERUSER_PASSWORD": ADMIN_PASSWORD,
            }
        )
        for key, value in self.timing.items():
            env[f"WACONNECT_SIM_{key.upper()}"] = str(value)
        env.update(self.extra_env)
        return env

    def _manage(self, *args: str) -> None:
        """Run a short management command; raise with its output if it fails."""
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(
                f"manage.py {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )

    def start(self) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="waconnect-live-"))
        self.log_path = self.data_dir / "server.log"
        self._manage("migrate", "--noinput", "-v", "0")
        self._manage(
            "createsuperuser",
            "--noinput",
            "--username",
            ADMIN_USERNAME,
            "--email",
            "admin@example.com",
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.launch()

    def restart(self) -> None:
        """Stop the server process and start it again: same port, same database."""
        self.stop()
        self.launch()

    def launch(self) -> None:
        """Start the server process (after `start` prepared the database) and wait for it."""
        assert self.log_path is not None
        log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file = log_file
        self._process = subprocess.Popen(
            [sys.executable, "manage.py", "runserver", "--noreload", f"127.0.0.1:{self.port}"],
            cwd=REPO,
            env=self.env(),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """Poll (a process start has nothing to wait on) until the login page answers."""
        deadline = time.monotonic() + self.start_timeout
        last_error = "no attempt yet"
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                raise ServerError(
                    f"runserver exited with code {self._process.returncode}:\n{self.output()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                with urllib.request.urlopen(f"{self.url}/accounts/login/", timeout=5) as response:
                    if response.status == 200:
                        return
                    last_error = f"HTTP {response.status}"
            except (OSError, urllib.error.URLError) as exc:
                last_error = repr(exc)
            time.sleep(0.1)
        raise ServerError(
            f"runserver did not answer GET /accounts/login/ with 200 within "
            f"{self.start_timeout:.0f} s (last: {last_error}):\n{self.output()}"
        )

    def stop(self) -> None:
        """SIGINT (Daphne shuts down and the supervisor hands over), then kill if stuck."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        log_file, self._log_file = self._log_file, None
        if log_file is not None:
            log_file.close()

    def kill(self) -> None:
        """SIGKILL: the process ends with nothing handed over or written (a crash)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        log_file, self._log_file = self._log_file, None
        if log_file is not None:
            log_file.close()

    def cleanup(self) -> None:
        """Remove the data directory (after ``stop``)."""
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    # -- inspection ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self, tail: int = 200) -> str:
        """The last ``tail`` lines the server printed."""
        if self.log_path is None or not self.log_path.exists():
            return "(no output)"
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:]) or "(no output)"
