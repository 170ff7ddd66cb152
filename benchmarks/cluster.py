"""The production shape on one machine: a simulated WhatsApp service and several
``manage.py run_supervisor`` processes on one PostgreSQL database and one Redis.

Shared by the chaos test (``tests/postgres/test_chaos.py``) and the benchmarks, so
both put the same processes under the same faults: SIGKILL, SIGSTOP/SIGCONT, a
clean SIGTERM restart. The caller owns the database (it exists and is migrated)
and talks to the service through
:class:`~sessions_app.drivers.simulated_service.ServiceControl`.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from benchmarks.faultproxy import FaultProxy, Mode, ProxyLoop

REPO = Path(__file__).resolve().parent.parent

#: Tags the supervisors' database connections, so a test can kill exactly those.
APPLICATION_NAME = "waconnect-supervisor"

_STARTING = re.compile(r"supervisor (\S+) starting")


class ClusterError(RuntimeError):
    """A process of the cluster did not start or stop as expected."""


def _with_application_name(database_url: str) -> str:
    separator = "&" if "?" in database_url else "?"
    return f"{database_url}{separator}application_name={APPLICATION_NAME}"


def _server(url: str) -> tuple[str, int]:
    """``(host, port)`` of a ``postgres://`` or ``redis://`` URL."""
    parts = urllib.parse.urlsplit(url)
    default = 6379 if parts.scheme.startswith("redis") else 5432
    return parts.hostname or "127.0.0.1", parts.port or default


def _via(url: str, proxy: FaultProxy) -> str:
    """``url`` with its host and port replaced by the proxy's (user, path, query kept)."""
    parts = urllib.parse.urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    host, port = proxy.address
    netloc = f"{user}@{host}:{port}" if user else f"{host}:{port}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class SupervisorProcess:
    """One ``run_supervisor`` process; ``owner`` is its lease owner id (from its log)."""

    def __init__(
        self,
        name: str,
        process: subprocess.Popen[bytes],
        log_path: Path,
        links: list[FaultProxy] | None = None,
    ) -> None:
        self.name = name
        self.process = process
        self.log_path = log_path
        #: Its own proxies to PostgreSQL and Redis (a partitionable cluster's).
        self.links = links or []
        self._owner = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def owner(self, timeout: float = 30.0) -> str:
        """The owner id the supervisor announced in its first log lines."""
        deadline = time.monotonic() + timeout
        while not self._owner:
            match = _STARTING.search(self.output())
            if match:
                self._owner = match.group(1)
            elif time.monotonic() > deadline or not self.alive:
                raise ClusterError(f"{self.name} never said it started:\n{self.output()}")
            else:
                time.sleep(0.05)  # a process start has nothing to wait on
        return self._owner

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (hand everything over) and wait; SIGKILL if it hangs."""
        if self.alive:
            self.process.send_signal(signal.SIGCONT)  # a frozen one could not hear it
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                stacks = self.stacks()
                self.process.kill()
                self.process.wait(10)
                raise ClusterError(
                    f"{self.name} did not stop within {timeout:.0f}s of SIGTERM; its threads:\n"
                    f"{stacks}\nthe end of its log:\n{self.tail()}"
                ) from None
        return int(self.process.returncode)

    def stacks(self, timeout: float = 5.0) -> str:
        """Every thread's stack, as the process prints it on SIGUSR1 (faulthandler)."""
        if not self.alive:
            return "(not running)"
        before = len(self.output())
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        seen = ""
        while time.monotonic() < deadline:
            time.sleep(0.1)  # another process writing its log: nothing to await
            dump = self.output()[before:]
            if "(most recent call first)" in dump and dump == seen:
                break  # written, and no longer growing
            seen = dump
        return self.output()[before:] or "(no dump)"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def partition(self, mode: Mode = Mode.BLACKHOLE) -> None:
        """Cut it off from PostgreSQL and Redis (not from WhatsApp): its connections
        hang (``blackhole``) or are reset (``reset``); everyone else is unaffected."""
        assert self.links, "start the cluster with partitionable=True"
        for link in self.links:
            link.set_mode(mode)

    def heal(self) -> None:
        """End the partition: held bytes flow on, new connections go through."""
        for link in self.links:
            link.set_mode(Mode.PASS)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


class Cluster:
    """Start the service and supervisors; everything stops on ``close``.

    ``settings`` are extra environment variables for every process (lease timings,
    ``WACONNECT_SIM_*`` cadence); ``auto_scan`` makes every QR round scan itself;
    ``client_timeout`` is how long the service keeps a silent client's connection;
    ``partitionable`` gives each supervisor its own fault proxies to PostgreSQL and
    Redis (:meth:`SupervisorProcess.partition`).
    """

    def __init__(
        self,
        *,
        database_url: str,
        redis_url: str,
        log_dir: Path,
        settings: Mapping[str, str] | None = None,
        auto_scan: float | None = 0.05,
        client_timeout: float | None = None,
        log_level: str = "INFO",
        partitionable: bool = False,
    ) -> None:
        self.database_url = database_url
        self.redis_url = redis_url
        self.log_dir = log_dir
        self.settings = dict(settings or {})
        self.auto_scan = auto_scan
        self.client_timeout = client_timeout
        self.log_level = log_level
        self.address = ""
        self.supervisors: list[SupervisorProcess] = []
        self._service: subprocess.Popen[bytes] | None = None
        self._count = 0
        self._proxies: ProxyLoop | None = ProxyLoop() if partitionable else None

    def __enter__(self) -> Cluster:
        try:
            self.start_service()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "waconnect.settings",
                "DATABASE_URL": _with_application_name(self.database_url),
                "REDIS_URL": self.redis_url,
                "WACONNECT_DRIVER": "simulated",
                "WACONNECT_SIM_SERVICE": self.address,
                "WACONNECT_DATA_DIR": str(self.log_dir),
                "LOG_LEVEL": self.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.settings)
        return env

    def start_service(self, timeout: float = 30.0) -> str:
        args = [sys.executable, "manage.py", "simulated_whatsapp", "--port", "0"]
        if self.client_timeout is not None:  # else WACONNECT_SIM_CLIENT_TIMEOUT
            args += ["--client-timeout", str(self.client_timeout)]
        if self.auto_scan is not None:
            args += ["--auto-scan", str(self.auto_scan)]
        log = (self.log_dir / "simulated-whatsapp.log").open("wb")
        self._service = subprocess.Popen(
            args,
            cwd=REPO,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        assert self._service.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._service.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise ClusterError("the simulated WhatsApp service did not start in time")
        line = self._service.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise ClusterError(f"the simulated WhatsApp service said {line!r}")
        self.address = line.removeprefix("listening on ").strip()
        return self.address

    def start_supervisor(self, *args: str) -> SupervisorProcess:
        """One more ``run_supervisor`` (extra command-line ``args`` passed on)."""
        assert self.address, "start the service first"
        self._count += 1
        name = f"supervisor-{self._count}"
        log_path = self.log_dir / f"{name}.log"
        env = self.env()
        links = []
        if self._proxies is not None:
            for var in ("DATABASE_URL", "REDIS_URL"):
                link = self._proxies.proxy(_server(env[var]), f"{name} {var}")
                env[var] = _via(env[var], link)
                links.append(link)
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "manage.py", "run_supervisor", *args],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        supervisor = SupervisorProcess(name, process, log_path, links)
        self.supervisors.append(supervisor)
        return supervisor

    @property
    def alive(self) -> list[SupervisorProcess]:
        return [s for s in self.supervisors if s.alive]

    def close(self) -> None:
        for supervisor in self.supervisors:
            if supervisor.alive:
                with contextlib.suppress(ClusterError):
                    supervisor.terminate()
        if self._service is not None and self._service.poll() is None:
            self._service.send_signal(signal.SIGTERM)
            try:
                self._service.wait(10)
            except subprocess.TimeoutExpired:
                self._service.kill()
                self._service.wait(10)
        if self._service is not None and self._service.stdout is not None:
            self._service.stdout.close()
        if self._proxies is not None:
            self._proxies.close()
            self._proxies = None

    def logs(self) -> str:
        """Every process's log, for a failing test's report."""
        parts = [f"--- {s.name} (pid {s.pid}) ---\n{s.output()}" for s in self.supervisors]
        service_log = self.log_dir / "simulated-whatsapp.log"
        if service_log.exists():
            parts.append(f"--- simulated WhatsApp ---\n{service_log.read_text(errors='replace')}")
        return "\n".join(parts)
