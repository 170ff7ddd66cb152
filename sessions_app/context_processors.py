"""Template context every page needs."""

from __future__ import annotations

from django.http import HttpRequest

from sessions_app import conf


def waconnect(request: HttpRequest) -> dict[str, object]:
    """Whether the simulated driver is in use: the UI must say so on every page."""
    return {"simulated_driver": conf.is_simulated(), "driver_name": conf.driver_name()}
