"""waconnect's own settings, read when asked for (never at import time).

Every setting is prefixed ``WACONNECT_`` and has a default here, so a bare
``settings.py`` runs.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


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
    # Connection attempts per session a minute, by any path: above what failovers,
    # hand-overs and a rolling deploy need in a minute, far below a reconnect storm.
    connect_limit: int = 10
    qr_round_limit: float = 160.0  # WhatsApp's QR round: 60 s + 5 × 20 s

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


def stop_grace() -> float:
    """Seconds from SIGTERM (or SIGINT) until ``run_supervisor`` has exited, however
    its stop is going (``WACONNECT_STOP_GRACE``, 25 s: under Kubernetes' default
    30 s grace period). Exiting is as safe as a SIGKILL: the connections die with
    the process, and the leases it still holds expire.

    Raises ImproperlyConfigured if not positive."""
    seconds = float(_get("STOP_GRACE", 25.0))
    if seconds <= 0:
        raise ImproperlyConfigured(f"WACONNECT_STOP_GRACE must be positive; got {seconds:g} s")
    return seconds


def simulated_timing() -> dict[str, float]:
    """Overrides for :class:`~sessions_app.drivers.simulated.SimulatedTiming`."""
    return dict(_get("SIMULATED_TIMING", {}))


def simulated_service() -> str:
    """``host:port`` of the simulated WhatsApp service, or "" for one in process."""
    return str(_get("SIM_SERVICE", ""))


def simulated_state_file() -> Path:
    """Where the in-process simulated WhatsApp keeps its linked devices (data dir)."""
    return Path(settings.DATA_DIR) / "simulated-whatsapp.json"


def simulated_keepalive() -> float:
    """Seconds between the simulated driver's keep-alive pings to the service."""
    return float(_get("SIM_KEEPALIVE", 5.0))


def simulated_client_timeout() -> float:
    """Seconds of silence after which the simulated WhatsApp service drops a client."""
    return float(_get("SIM_CLIENT_TIMEOUT", 8.0))


def check_gives_up_before_lease_passes(setting: str, seconds: float) -> None:
    """Refuse a silence limit that could outlast a frozen supervisor's leases.

    A neonize worker (``WACONNECT_WORKER_DEADLINE``) and the simulated WhatsApp
    service (``WACONNECT_SIM_CLIENT_TIMEOUT``) cut the connections of a supervisor
    that fell silent; they must do it before its leases can pass to another
    supervisor. A supervisor frozen just before a renewal holds leases that expire
    ``WACONNECT_LEASE_TTL`` minus ``WACONNECT_RENEW_INTERVAL`` after it froze, so the
    limit is that, less ``WACONNECT_SELF_FENCE_MARGIN`` (the margin a live
    supervisor keeps for itself): 15 − 5 − 2 = 8 s with the defaults.
    """
    leases = supervisor_config()
    limit = leases.lease_ttl - leases.renew_interval - leases.self_fence_margin
    if not 0 < seconds <= limit:
        raise ImproperlyConfigured(
            f"{setting} must be positive and at most WACONNECT_LEASE_TTL minus "
            f"WACONNECT_RENEW_INTERVAL minus WACONNECT_SELF_FENCE_MARGIN ({limit:g} s), or "
            f"the connections of a supervisor frozen just before a renewal could stay "
            f"open after another supervisor took their sessions; got {seconds:g} s"
        )


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


def send_timeout() -> float:
    """Seconds a driver waits for WhatsApp's ack of a sent message before its outcome
    is unknown (whatsmeow's own limit is 75 s; the supervisor sends one message at
    a time per session, so a hung send holds the session's queue this long)."""
    return float(_get("SEND_TIMEOUT", 20.0))


def worker_config() -> Any:
    from sessions_app.drivers.neonize_driver import WorkerConfig

    return WorkerConfig(
        store=neonize_store(),
        warm=int(_get("WARM_WORKERS", 2)),
        heartbeat=float(_get("WORKER_HEARTBEAT", 2.0)),
        deadline=float(_get("WORKER_DEADLINE", 6.0)),
        ask_grace=float(_get("WORKER_ASK_GRACE", 1.0)),
        term_grace=float(_get("WORKER_TERM_GRACE", 1.0)),
        log_level=str(_get("WORKER_LOG_LEVEL", "WARNING")),
        send_timeout=send_timeout(),
    )


def metrics_allow() -> list[str]:
    """CIDRs whose clients may read the web tier's ``/metrics`` without a token."""
    return [str(cidr) for cidr in _get("METRICS_ALLOW", ["127.0.0.0/8", "::1/128"])]


def metrics_token_verifier() -> str:
    """Dotted path of ``verify(token, scope) -> bool`` for ``/metrics`` bearer tokens;
    empty: the API app's ``api.auth.verify_token`` if it is installed."""
    return str(_get("METRICS_TOKEN_VERIFIER", ""))


def api_rate() -> str:
    """Requests one API token may make (ninja throttle syntax: ``600/m``; per process)."""
    return str(_get("API_RATE", "600/m"))


def api_max_wait() -> float:
    """Longest a long poll (``GET /api/v1/sessions/{id}?wait=``) is held open, in seconds."""
    return float(_get("API_MAX_WAIT", 30.0))
