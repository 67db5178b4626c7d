"""Health endpoints of the web process, for load balancers and orchestrators.

Both are public (no login): a probe has no session, and they say only whether each
dependency answers (never its address or error text, which go to the log).
/healthz: the process is alive and serving (touches nothing else, so a database outage
does not get web processes restarted). /readyz: the database, Redis and Temporal answer
within HEALTH_CHECK_TIMEOUT_SECONDS each (checked at once); 503 when one does not.
"""

import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor, wait
from datetime import timedelta

import redis
from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from orders.temporal_client import run_with_client

logger = logging.getLogger(__name__)

# Threads of their own: a check stuck past its timeout must not hold up the next probe's.
_pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="readyz")


def database_check(timeout: float) -> None:
    # A connection of its own (this thread's), with the probe's connect timeout on Postgres.
    connection = connections.create_connection("default")
    if connection.vendor == "postgresql":
        options = {**connection.settings_dict.get("OPTIONS", {}), "connect_timeout": max(1, math.ceil(timeout))}
        connection.settings_dict = {**connection.settings_dict, "OPTIONS": options}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    finally:
        connection.close()


def redis_check(timeout: float) -> None:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


def temporal_check(timeout: float) -> None:
    async def check(client):
        await client.service_client.check_health(timeout=timedelta(seconds=timeout))

    run_with_client(check, timeout=timeout)


CHECKS = {"database": database_check, "redis": redis_check, "temporal": temporal_check}


def readiness(timeout: float | None = None) -> tuple[bool, dict]:
    """Run every check at once; ({name: {"ok", "ms", "error"?}}, all ok)."""
    timeout = settings.HEALTH_CHECK_TIMEOUT_SECONDS if timeout is None else timeout
    started = time.perf_counter()
    futures = {name: _pool.submit(check, timeout) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=timeout + 0.5)
    report = {}
    for name, future in futures.items():
        if not future.done():
            report[name] = {"ok": False, "error": "timeout"}
            continue
        exc = future.exception()
        if exc is None:
            report[name] = {"ok": True}
        else:
            logger.warning("readiness: %s unavailable: %s: %s", name, type(exc).__name__, exc)
            report[name] = {"ok": False, "error": type(exc).__name__}
        report[name]["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return all(r["ok"] for r in report.values()), report


# Public (no login): probes have no session; it says only "alive".
@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


# Public (no login): probes have no session; per dependency only ok or an error class name.
@never_cache
@require_GET
def readyz(request: HttpRequest) -> JsonResponse:
    ok, checks = readiness()
    return JsonResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)
