"""waconnect's own settings, read when asked for (never at import time).

Every setting is prefixed ``WACONNECT_`` and has a default here, so a bare
``settings.py`` runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django.conf import settings


def _get(name: str, default: Any) -> Any:
    return getattr(settings, f"WACONNECT_{name}", default)


def driver_name() -> str:
    """``neonize`` (real WhatsApp) or ``simulated``."""
    return str(_get("DRIVER", "neonize"))


def is_simulated() -> bool:
    return driver_name() == "simulated"


def inline_supervisor() -> bool:
    """Whether ``runserver`` runs the supervisor inside the web process."""
    return bool(_get("INLINE_SUPERVISOR", True))


@dataclasses.dataclass(frozen=True)
class SupervisorConfig:
    """Lease and loop timings, in seconds; see docs/architecture.md for why."""

    lease_ttl: float = 15.0
    renew_interval: float = 5.0
    self_fence_margin: float = 2.0
    reconcile_interval: float = 10.0
    max_sessions: int = 1000
    claim_batch: int = 50
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    stop_timeout: float = 5.0
    reconnect_watch: float = 60.0  # a driver reconnecting by itself gets this long

    def __post_init__(self) -> None:
        if not 0 < self.renew_interval < self.lease_ttl - self.self_fence_margin:
            raise ValueError(
                "WACONNECT_RENEW_INTERVAL must be positive and shorter than "
                "WACONNECT_LEASE_TTL minus WACONNECT_SELF_FENCE_MARGIN"
            )


def supervisor_config(**overrides: Any) -> SupervisorConfig:
    values = {
        field.name: _get(field.name.upper(), field.default)
        for field in dataclasses.fields(SupervisorConfig)
    }
    values.update(overrides)
    return SupervisorConfig(**values)


def simulated_timing() -> dict[str, float]:
    """Overrides for :class:`~sessions_app.drivers.simulated.SimulatedTiming`."""
    return dict(_get("SIMULATED_TIMING", {}))


def simulated_service() -> str:
    """``host:port`` of the simulated WhatsApp service, or "" for one in process."""
    return str(_get("SIM_SERVICE", ""))


def simulated_keepalive() -> float:
    """Seconds between the simulated driver's keep-alive pings to the service."""
    return float(_get("SIM_KEEPALIVE", 5.0))


def neonize_store() -> str:
    """Where neonize keeps device credentials: beside the app's own database.

    PostgreSQL: the same database (whatsmeow's own tables); SQLite: a file in the
    data directory.
    """
    explicit = _get("NEONIZE_STORE", "")
    if explicit:
        return str(explicit)
    db = settings.DATABASES["default"]
    if "postgresql" in db["ENGINE"]:
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        auth = f"{user}{password}@" if user else ""
        host = db.get("HOST") or "localhost"
        port = f":{db['PORT']}" if db.get("PORT") else ""
        return f"postgres://{auth}{host}{port}/{db['NAME']}"
    return str(settings.DATA_DIR / "whatsmeow.sqlite3")


def worker_config() -> Any:
    from sessions_app.drivers.neonize_driver import WorkerConfig

    return WorkerConfig(
        store=neonize_store(),
        warm=int(_get("WARM_WORKERS", 2)),
        heartbeat=float(_get("WORKER_HEARTBEAT", 2.0)),
        deadline=float(_get("WORKER_DEADLINE", 10.0)),
        ask_grace=float(_get("WORKER_ASK_GRACE", 1.0)),
        term_grace=float(_get("WORKER_TERM_GRACE", 1.0)),
        log_level=str(_get("WORKER_LOG_LEVEL", "WARNING")),
    )


def api_rate() -> str:
    """Requests one API token may make (ninja throttle syntax: ``600/m``; per process)."""
    return str(_get("API_RATE", "600/m"))


def api_max_wait() -> float:
    """Longest a long poll (``GET /api/v1/sessions/{id}?wait=``) is held open, in seconds."""
    return float(_get("API_MAX_WAIT", 30.0))
