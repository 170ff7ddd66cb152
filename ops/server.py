"""The supervisor's own HTTP port (``run_supervisor --metrics-port N``): ``/metrics``,
``/healthz`` and ``/readyz``.

A small threaded WSGI server from the standard library, in a daemon thread of the
supervisor process, with prometheus-client's WSGI app for ``/metrics``
(``prometheus_client.start_http_server`` serves metrics only). Being a thread, it
answers while the supervisor's event loop is busy; ``/readyz`` then still tells
whether the leases were renewed in time. No authentication: bind it to an address
only Prometheus reaches (``--metrics-host``, loopback by default).
"""

from __future__ import annotations

import json
import logging
import socketserver
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app

from ops.health import Checks

logger = logging.getLogger(__name__)

Readiness = Callable[[], tuple[bool, Checks]]
StartResponse = Callable[..., Any]


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every 15 s: not news
        pass


def _json(start_response: StartResponse, status: str, body: dict[str, Any]) -> Iterable[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
        ],
    )
    return [data]


def make_app(readiness: Readiness) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            return _json(start_response, "200 OK", {"status": "ok"})
        if path == "/readyz":
            try:
                ready, checks = readiness()
            except Exception as exc:  # a probe must answer, not crash the handler
                ready, checks = False, {"readiness": f"failed: {type(exc).__name__}"}
            status = "200 OK" if ready else "503 Service Unavailable"
            body = {"status": "ok" if ready else "unavailable", "checks": checks}
            return _json(start_response, status, body)
        if path == "/metrics":
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        return _json(start_response, "404 Not Found", {"status": "not found"})

    return app


class MetricsServer:
    """Serves the three endpoints from a daemon thread until :meth:`close`."""

    def __init__(self, host: str, port: int, readiness: Readiness) -> None:
        self._server = make_server(
            host,
            port,
            make_app(readiness),
            server_class=_ThreadingServer,
            handler_class=_QuietHandler,
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="waconnect-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        logger.info("metrics, /healthz and /readyz on port %d", self.port)
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_supervisor(supervisor: Any, host: str, port: int) -> MetricsServer:
    """Start the endpoints of ``supervisor``'s process; ready as it is."""
    from ops.health import supervisor_readiness

    return MetricsServer(host, port, lambda: supervisor_readiness(supervisor)).start()
