"""Liveness and readiness, for load balancers and orchestrators.

The web tier is ready when its database answers, every migration is applied and
its channel layer (Redis in production) answers. A supervisor is ready when it has
made its first pass (listening, claimed what was waiting), is not self-fenced, and
renewed its leases within the lease TTL on its own monotonic clock.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor

logger = logging.getLogger(__name__)

#: A check that takes longer than this counts as failed.
CHECK_TIMEOUT = 3.0

PROBE_GROUP = "waconnect.readyz"

Checks = dict[str, str]

_migrated = False  # once all were applied, this process's code has none left to wait for


def _database() -> None:
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    finally:
        connection.close()  # back to the pool: this thread is not the request's


def _migrations() -> None:
    global _migrated
    if _migrated:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        executor = MigrationExecutor(connection)
        plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    finally:
        connection.close()
    if plan:
        raise RuntimeError(f"{len(plan)} migrations not applied")
    _migrated = True


async def _channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    # A send to a group nobody is in: on channels-redis, two Redis round trips.
    await layer.group_send(PROBE_GROUP, {"type": "readyz.probe"})


async def _run(name: str, check: Any, checks: Checks) -> None:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check()
    except Exception as exc:
        logger.warning("readiness: %s failed", name, exc_info=True)
        checks[name] = f"failed: {type(exc).__name__}"
        return
    checks[name] = "ok"


async def web_readiness() -> tuple[bool, Checks]:
    """(ready, the outcome of each check); the database checks come first, in order."""
    checks: Checks = {}
    # Off the request's own database thread: a down server holds a call for the
    # pool's whole timeout, and the request's end (closing its connections) would
    # wait behind it although the check gave up after CHECK_TIMEOUT.
    await _run("database", sync_to_async(_database, thread_sensitive=False), checks)
    if checks["database"] == "ok":
        await _run("migrations", sync_to_async(_migrations, thread_sensitive=False), checks)
    else:
        checks["migrations"] = "skipped: no database"
    await _run("channel_layer", _channel_layer, checks)
    return all(value == "ok" for value in checks.values()), checks


def supervisor_readiness(supervisor: Any) -> tuple[bool, Checks]:
    """(ready, checks) of a running :class:`~sessions_app.supervisor.Supervisor`.

    Safe to call from another thread: it only reads flags and its clock.
    """
    checks: Checks = {}
    checks["started"] = "ok" if supervisor.ready.is_set() else "failed: first pass not done"
    checks["fence"] = "failed: self-fenced" if supervisor.fenced else "ok"
    since = supervisor.clock() - supervisor._last_renewal
    ttl = supervisor.config.lease_ttl
    checks["leases"] = (
        "ok" if since <= ttl else f"failed: last renewal {since:.1f}s ago (TTL {ttl:g}s)"
    )
    return all(value == "ok" for value in checks.values()), checks
