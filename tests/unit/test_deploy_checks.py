"""Django's deploy checks still see the middleware they look for by path, now that
the settings list waconnect's on-loop subclasses (waconnect/checks.py)."""

from __future__ import annotations

from typing import Any

from django.core.checks import Tags, run_checks


def _reported(**kwargs: Any) -> set[str]:
    messages = run_checks(include_deployment_checks=True, tags=[Tags.security])
    return {m.id for m in messages if not m.is_silenced()}


def test_the_checks_that_depend_on_the_middleware_still_run(settings: Any) -> None:
    """Found by Django's path only, the subclasses made these pass without looking."""
    settings.SECURE_HSTS_SECONDS = 0
    settings.X_FRAME_OPTIONS = "SAMEORIGIN"
    settings.CSRF_COOKIE_SECURE = False
    settings.SECURE_CONTENT_TYPE_NOSNIFF = False
    reported = _reported()
    assert {"security.W004", "security.W019", "security.W016", "security.W006"} <= reported
    assert not reported & {"security.W001", "security.W002", "security.W003"}


def test_a_middleware_left_out_is_still_reported(settings: Any) -> None:
    settings.MIDDLEWARE = [
        path
        for path in settings.MIDDLEWARE
        if not path.endswith(
            ("SecurityMiddleware", "CsrfViewMiddleware", "XFrameOptionsMiddleware")
        )
    ]
    assert {"waconnect.W001", "waconnect.W002", "waconnect.W003"} <= _reported()


def test_the_production_settings_pass(settings: Any) -> None:
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_SSL_REDIRECT = True
    settings.SESSION_COOKIE_SECURE = True
    settings.CSRF_COOKIE_SECURE = True
    reported = _reported()
    assert not {m for m in reported if m.startswith(("security.W00", "waconnect."))} - {
        "security.W009"
    }, reported
