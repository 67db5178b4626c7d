"""The web process's metrics: requests counted by route, and /metrics for Prometheus.

/metrics answers only `Authorization: Bearer <METRICS_TOKEN>`; with no token configured (or
metrics off) it does not exist (404). It is outside the staff login on purpose: Prometheus
has no session, and the token is its credential. What it serves: every web process's
samples (multiprocess mode, see orders/metrics.py) and what the database says now
(stuck sagas, follow-ups, the sweeper's flags, reconciliation findings).
"""

import hmac
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.core.exceptions import MiddlewareNotUsed
from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ops.metrics import BackgroundStateCollector
from orders import metrics
from orders.metrics import Exposition, SagaStateCollector

UNMATCHED_ROUTE = "unmatched"


def _route(request: HttpRequest) -> str:
    # The URL pattern's name, never the raw path: /orders/1/, /orders/2/... are one route,
    # and a scanner's random paths cannot create series.
    match = getattr(request, "resolver_match", None)
    if match is None:
        return UNMATCHED_ROUTE
    return match.view_name or match.route or UNMATCHED_ROUTE


class RequestMetricsMiddleware:
    """Counts and times every request (after whitenoise: static files are not counted)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        if not settings.METRICS_ENABLED:
            raise MiddlewareNotUsed
        self.get_response = get_response
        self.async_mode = iscoroutinefunction(get_response)
        if self.async_mode:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.async_mode:
            return self._acall(request)
        started = time.perf_counter()
        response = self.get_response(request)
        self._observe(request, response, started)
        return response

    async def _acall(self, request):
        started = time.perf_counter()
        response = await self.get_response(request)
        self._observe(request, response, started)
        return response

    @staticmethod
    def _observe(request, response, started: float) -> None:
        method = request.method if request.method in _METHODS else "other"
        metrics.http_request_observe(route=_route(request), method=method, status=response.status_code,
                                     seconds=time.perf_counter() - started)


_METHODS = {"GET", "POST", "HEAD", "PUT", "PATCH", "DELETE", "OPTIONS"}


def _token_ok(request: HttpRequest) -> bool:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), settings.METRICS_TOKEN.encode())


# Public URL (no staff login): Prometheus authenticates with the bearer token instead.
@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not (settings.METRICS_ENABLED and settings.METRICS_TOKEN):
        raise Http404("metrics are off")
    if not _token_ok(request):
        response = HttpResponse("A valid bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = generate_latest(Exposition(SagaStateCollector(), BackgroundStateCollector()))
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)
