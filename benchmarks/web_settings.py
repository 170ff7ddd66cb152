"""Production settings for a benchmark's Daphne, with static files collected elsewhere.

The web tier runs as in production (README: ``DEBUG=off``, ``collectstatic``,
``daphne waconnect.asgi:application``), and ServeStatic serves the collected files.
Only ``STATIC_ROOT`` differs: ``collectstatic`` writes into a directory of the
benchmark's own (``WACONNECT_BENCH_STATIC_ROOT``) instead of the checkout's
``staticfiles/``. Plain Daphne never serves static files with ``DEBUG`` on (only
``runserver`` does), so ``DEBUG=off`` is the only way to get the pages' scripts.
"""

from __future__ import annotations

import os
from pathlib import Path

from waconnect.settings import *  # noqa: F403

STATIC_ROOT = Path(os.environ["WACONNECT_BENCH_STATIC_ROOT"])
