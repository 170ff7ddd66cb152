from __future__ import annotations

from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: Prometheus metrics, health checks, JSON logs, the Grafana dashboard."""

    name = "ops"
    verbose_name = "Operations"

    def ready(self) -> None:
        # Every metric is registered once, at start, so each is exported from the
        # first scrape on (a counter at 0 rather than missing).
        from ops import metrics  # noqa: F401
