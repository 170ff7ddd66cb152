"""``manage.py runserver``: Daphne's development server with the supervisor inside.

The supervisor runs as a task on the server's own event loop, so it shares the
in-memory channel layer with the pages: zero configuration in development. Set
WACONNECT_INLINE_SUPERVISOR=off to run it separately (``run_supervisor``).
"""

from __future__ import annotations

from typing import Any

from daphne.management.commands.runserver import Command as DaphneRunserver

from sessions_app import conf


class Command(DaphneRunserver):
    help = (
        DaphneRunserver.help
        + " Also runs the connection supervisor unless WACONNECT_INLINE_SUPERVISOR is off."
    )

    def inner_run(self, *args: Any, **options: Any) -> None:
        if options.get("use_asgi", True) and conf.inline_supervisor():
            from sessions_app.inline import attach_to_reactor

            attach_to_reactor()
        super().inner_run(*args, **options)
