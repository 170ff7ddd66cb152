"""Django's deploy checks, with the on-loop middleware in place of Django's own.

Django's security checks find ``SecurityMiddleware``, ``CsrfViewMiddleware`` and
``XFrameOptionsMiddleware`` by their exact import paths. With waconnect's
subclasses listed instead (:mod:`waconnect.middleware`) they would report them
missing (security.W001, W002, W003) and pass every check that depends on them
without looking (HSTS, the SSL redirect, nosniff, Referrer-Policy, COOP,
X-Frame-Options, the CSRF cookie). So those three are silenced in the settings,
and :func:`middleware_dependent_checks` runs Django's checks again as if each
subclass were its parent: they report exactly what they would report for Django's
classes, and a middleware missing altogether comes out as waconnect.W001–W003.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core.checks import CheckMessage, Tags, Warning, register
from django.core.checks.security import base, csrf
from django.utils.module_loading import import_string

from messaging.dbthreads import DEFAULT_THREADS
from sessions_app.dbthread import DEFAULT_SUPERVISOR_THREADS

#: Django's checks that look for a middleware by its path (first the three that say
#: it is missing, whose ids are silenced in the settings and renamed here).
MISSING = {"security.W001", "security.W002", "security.W003"}
CHECKS: tuple[Callable[..., list[CheckMessage]], ...] = (
    base.check_security_middleware,
    base.check_xframe_options_middleware,
    csrf.check_csrf_middleware,
    base.check_sts,
    base.check_sts_include_subdomains,
    base.check_sts_preload,
    base.check_content_type_nosniff,
    base.check_ssl_redirect,
    base.check_xframe_deny,
    base.check_referrer_policy,
    base.check_cross_origin_opener_policy,
    csrf.check_csrf_cookie_secure,
)
PARENTS = (
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
)


def _as_parents(paths: Sequence[str]) -> list[str]:
    """``paths`` with each subclass of one of :data:`PARENTS` named as that parent."""
    listed = []
    for path in paths:
        cls = import_string(path)
        listed.append(
            next((p for p in PARENTS if issubclass(cls, import_string(p))), path)
            if isinstance(cls, type)
            else path
        )
    return listed


@register(Tags.security, deploy=True)
def middleware_dependent_checks(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    # Checks run once, at start-up, before any request: the override is not seen
    # by anything else. Imported here: only a process that runs the checks loads
    # Django's test utilities.
    from django.test.utils import override_settings

    with override_settings(MIDDLEWARE=_as_parents(settings.MIDDLEWARE)):
        found = [message for check in CHECKS for message in check(app_configs)]
    # Django's messages are module constants: renamed copies, never the originals.
    return [_renamed(message) if message.id in MISSING else message for message in found]


def _renamed(message: CheckMessage) -> CheckMessage:
    renamed = copy.copy(message)
    renamed.id = message.id.replace("security.", "waconnect.")
    return renamed


@register("waconnect")
def database_pool_size(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """On PostgreSQL, a supervisor's threads each hold a pooled connection while a
    call runs: its session work (``WACONNECT_SUPERVISOR_DB_THREADS``), its message
    pumps (``WACONNECT_MESSAGE_DB_THREADS``), its lease renewal and the webhook
    dispatcher; plus one to spare (an inline supervisor shares the pool with the
    pages). A pool smaller than that makes a renewal wait for a connection (up to
    ``WACONNECT_DB_POOL_TIMEOUT``), past its self-fence limit under load:
    waconnect.W010. psycopg's pool without a ``max_size`` stops at ``min_size``."""
    database = settings.DATABASES["default"]
    pool = database.get("OPTIONS", {}).get("pool")
    if "postgresql" not in database["ENGINE"] or not isinstance(pool, dict):
        return []
    needed = (
        int(getattr(settings, "WACONNECT_SUPERVISOR_DB_THREADS", DEFAULT_SUPERVISOR_THREADS))
        + int(getattr(settings, "WACONNECT_MESSAGE_DB_THREADS", DEFAULT_THREADS))
        + 3
    )
    size = int(pool.get("max_size") or pool.get("min_size", 4))
    if size >= needed:
        return []
    return [
        Warning(
            f"WACONNECT_DB_POOL_MAX is {size}; a supervisor's threads can hold {needed}"
            " connections at once, and its lease renewal would wait for one.",
            hint="Raise WACONNECT_DB_POOL_MAX, or lower WACONNECT_SUPERVISOR_DB_THREADS"
            " or WACONNECT_MESSAGE_DB_THREADS.",
            id="waconnect.W010",
        )
    ]
