"""ASGI entry point: HTTP through Django, WebSockets through Channels.

WebSockets pass the origin check (scheme, host and port: the site's own origin or
CSRF_TRUSTED_ORIGINS, see sessions_app/origins.py) and the session authentication
before they reach a consumer; the consumers then require staff with the permission
to see sessions.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "waconnect.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import get_resolver  # noqa: E402

from ops.heap import freeze_startup_heap, observe_pauses  # noqa: E402
from sessions_app.origins import OriginValidator  # noqa: E402
from sessions_app.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

# The URLconf imports every view, the API and its schemas: load it now, then take
# all of start-up out of the garbage collector's full passes (ops/heap.py).
get_resolver().url_patterns  # noqa: B018
freeze_startup_heap("web process")
observe_pauses()
