"""``/metrics`` (token or allowed address), ``/healthz`` and ``/readyz`` (open: they tell
nothing about sessions) on the web tier."""

from __future__ import annotations

from collections.abc import Iterable

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric

from ops import auth, health
from ops.collector import web_registry


class _Both:
    """The process's own metrics (the inline supervisor's too, in development) and the
    database-wide gauges, as one exposition."""

    def collect(self) -> Iterable[Metric]:
        yield from REGISTRY.collect()
        yield from web_registry().collect()


@never_cache
@require_GET
def metrics(request: HttpRequest) -> HttpResponse:
    verdict = auth.check(request)
    if verdict is auth.Verdict.BAD_TOKEN:
        response = HttpResponse("invalid token or no metrics:read scope\n", status=401)
        response["WWW-Authenticate"] = 'Bearer scope="metrics:read"'
        return response
    if verdict is not auth.Verdict.ALLOWED:
        return HttpResponse("not allowed: use a token or WACONNECT_METRICS_ALLOW\n", status=403)
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encoder(_Both()), content_type=content_type)


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    """The process answers HTTP; nothing else is checked."""
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
async def readyz(request: HttpRequest) -> JsonResponse:
    ready, checks = await health.web_readiness()
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )
