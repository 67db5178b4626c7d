"""Prometheus metrics of the domain: web requests and live sockets, the saga, the outside world.

Staff-side metrics (Celery tasks, the sweeper, reconciliation, operator actions) are in
ops/metrics.py; ordersite/observability.py serves them all.

Several processes: web runs several uvicorn workers and Celery forks its pool, so every
process writes its samples to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode) and whoever is scraped adds them up. One directory per process kind
(web, worker, celery), emptied by the launch command before the processes start
(docker-compose.yml, Procfile.dev): the library reads the variable when it is imported, so
no code of ours could empty it in time. Without the variable (tests, one process) the
samples stay in this process's default registry.

Off (settings.METRICS_ENABLED false) every helper here returns at once: the benchmark
bench/instrumentation_cost.py compares the saga both ways.

Collected at scrape time from the database (SagaStateCollector): what is stuck and for how
long, open follow-ups. Only the web /metrics endpoint runs it, so one scrape is one query
set however many processes there are.
"""

import functools
import logging
import os
import time

from django.conf import settings
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

PREFIX = "ordersite"

# Seconds: fast database steps and page renders sit in the low buckets, gateway calls above.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# A saga from its order to its end: seconds when all goes well, minutes or hours when an
# operator had to step in.
SAGA_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


def enabled() -> bool:
    return settings.METRICS_ENABLED


def multiprocess_dir() -> str:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


# --- web -----------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    f"{PREFIX}_http_requests", "HTTP requests by route (the URL pattern's name), method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    f"{PREFIX}_http_request_duration_seconds", "Time to answer an HTTP request, by route and method.",
    ["route", "method"], buckets=LATENCY_BUCKETS,
)
WEBSOCKETS_OPEN = Gauge(
    f"{PREFIX}_websockets_open", "Live-page sockets open now, by consumer.", ["consumer"],
    multiprocess_mode="livesum",
)
WEBSOCKET_FRAMES = Counter(f"{PREFIX}_websocket_frames_sent", "Frames sent to live pages, by consumer.", ["consumer"])
COMMIT_TO_FRAME = Histogram(
    f"{PREFIX}_websocket_commit_to_frame_seconds",
    "From the commit of a saga event to the frame that shows it leaving the web process.",
    ["consumer"], buckets=LATENCY_BUCKETS,
)
BROADCAST_FAILURES = Counter(f"{PREFIX}_broadcast_publish_failures", "Channel-layer publishes that failed.")
BROADCAST_DROPS = Counter(f"{PREFIX}_broadcast_dropped", "Broadcasts dropped because the publish queue was full.")
BROADCAST_DELAY = Histogram(
    f"{PREFIX}_broadcast_commit_to_publish_seconds",
    "From the commit of a saga event to its message published on the channel layer (the web's "
    "commit-to-frame histogram includes this).",
    buckets=LATENCY_BUCKETS,
)

# --- the saga ------------------------------------------------------------------------
SAGAS_FINISHED = Counter(f"{PREFIX}_sagas_finished", "Sagas that ended, by outcome.", ["outcome"])
SAGA_DURATION = Histogram(
    f"{PREFIX}_saga_duration_seconds", "From the order's creation to the saga's end, by outcome.",
    ["outcome"], buckets=SAGA_BUCKETS,
)
STEP_ATTEMPTS = Counter(
    f"{PREFIX}_saga_step_attempts",
    "Attempts of each step (kind=step) or compensation (kind=compensation), by outcome: succeeded, failed, "
    "infrastructure (our database or Redis), circuit_open, cancelled.",
    ["step", "kind", "outcome"],
)
STEP_DURATION = Histogram(
    f"{PREFIX}_saga_step_duration_seconds", "Time of one attempt of a step or compensation, by outcome.",
    ["step", "kind", "outcome"], buckets=LATENCY_BUCKETS,
)
COMPENSATIONS = Counter(
    f"{PREFIX}_saga_compensations", "Compensation attempts, by the step they undo and outcome.", ["step", "outcome"],
)
SAGAS_STUCK = Counter(
    f"{PREFIX}_sagas_stuck", "Times a saga started waiting for an operator, by step and saga status "
    "(stuck, compensation_stuck, needs_followup).", ["step", "saga_status"],
)
OPERATOR_ANSWERS = Counter(
    f"{PREFIX}_saga_operator_answers", "The saga's answers to operator commands, by action and outcome "
    "(applied, ignored).", ["action", "outcome"],
)

# --- the outside world -----------------------------------------------------------------
OUTSIDE_CALLS = Counter(
    f"{PREFIX}_outside_calls", "Calls to the payment gateway and the carrier, by operation.", ["service", "operation"],
)
OUTSIDE_ERRORS = Counter(
    f"{PREFIX}_outside_call_errors", "Calls to the gateway and the carrier that raised, by operation and error class.",
    ["service", "operation", "error"],
)
OUTSIDE_LATENCY = Histogram(
    f"{PREFIX}_outside_call_duration_seconds", "Time of a gateway or carrier call, by operation.",
    ["service", "operation"], buckets=LATENCY_BUCKETS,
)


# --- recording helpers (each a no-op with metrics off) ----------------------------------
def http_request_observe(*, route: str, method: str, status: int, seconds: float) -> None:
    if not enabled():
        return
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_LATENCY.labels(route, method).observe(seconds)


def websocket_opened(consumer: str) -> None:
    if enabled():
        WEBSOCKETS_OPEN.labels(consumer).inc()


def websocket_closed(consumer: str) -> None:
    if enabled():
        WEBSOCKETS_OPEN.labels(consumer).dec()


def websocket_frame_sent(consumer: str, committed_at: float | None) -> None:
    if not enabled():
        return
    WEBSOCKET_FRAMES.labels(consumer).inc()
    if committed_at is not None:
        COMMIT_TO_FRAME.labels(consumer).observe(max(time.time() - committed_at, 0.0))


def broadcast_failed() -> None:
    if enabled():
        BROADCAST_FAILURES.inc()


def broadcast_dropped() -> None:
    if enabled():
        BROADCAST_DROPS.inc()


def broadcast_published(committed_at: float | None) -> None:
    if enabled() and committed_at is not None:
        BROADCAST_DELAY.observe(max(time.time() - committed_at, 0.0))


def step_attempt_observe(*, step: str, compensation: bool, outcome: str, seconds: float) -> None:
    if not enabled():
        return
    kind = "compensation" if compensation else "step"
    STEP_ATTEMPTS.labels(step, kind, outcome).inc()
    STEP_DURATION.labels(step, kind, outcome).observe(seconds)
    if compensation:
        COMPENSATIONS.labels(step, outcome).inc()


def saga_finished(*, outcome: str, seconds: float) -> None:
    if not enabled():
        return
    SAGAS_FINISHED.labels(outcome).inc()
    SAGA_DURATION.labels(outcome).observe(max(seconds, 0.0))


def saga_stuck(*, step: str, saga_status: str) -> None:
    if enabled():
        SAGAS_STUCK.labels(step or "none", saga_status).inc()


def operator_answer(*, action: str, outcome: str) -> None:
    if enabled():
        OPERATOR_ANSWERS.labels(action, outcome).inc()


class Instrumented:
    """An adapter whose public methods are counted and timed (service, operation = method)."""

    def __init__(self, adapter, service: str):
        self._adapter = adapter
        self._service = service

    def __getattr__(self, name: str):
        attr = getattr(self._adapter, name)
        if name.startswith("_") or not callable(attr) or not enabled():
            return attr

        @functools.wraps(attr)
        def timed(*args, **kwargs):
            OUTSIDE_CALLS.labels(self._service, name).inc()
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            except Exception as exc:
                OUTSIDE_ERRORS.labels(self._service, name, type(exc).__name__).inc()
                raise
            finally:
                OUTSIDE_LATENCY.labels(self._service, name).observe(time.perf_counter() - started)

        return timed

    def __repr__(self) -> str:
        return f"Instrumented({self._adapter!r}, {self._service})"


# --- read at scrape time -----------------------------------------------------------------
class SagaStateCollector:
    """What waits for staff now, from the database: stuck sagas and open follow-ups, with the
    age of the oldest of each (0 when there is none)."""

    def collect(self):
        from django.db.models import Count, Min
        from django.utils import timezone

        from .models import FollowUp, Order
        from .status import STUCK_SAGA_STATUSES, SagaStatus

        now = timezone.now()
        followups = FollowUp.objects.filter(state=FollowUp.State.OPEN).aggregate(n=Count("id"), since=Min("created_at"))
        waiting = [*sorted(STUCK_SAGA_STATUSES), SagaStatus.NEEDS_FOLLOWUP.value]
        counts = GaugeMetricFamily(f"{PREFIX}_sagas_waiting", "Sagas waiting for an operator now, by saga status.",
                                   labels=["saga_status"])
        oldest = GaugeMetricFamily(f"{PREFIX}_saga_stuck_oldest_age_seconds",
                                   "Age of the oldest wait for an operator, by saga status (0: none).",
                                   labels=["saga_status"])
        rows = {
            row["saga_status"]: row
            for row in Order.objects.filter(saga_status__in=waiting).values("saga_status")
            .annotate(n=Count("id"), since=Min("stuck_since"))
        }
        for status in waiting:
            row = rows.get(status)
            counts.add_metric([status], row["n"] if row else 0)
            # A stuck saga's wait starts at stuck_since; a follow-up's when it was opened.
            since = followups["since"] if status == SagaStatus.NEEDS_FOLLOWUP else (row and row["since"])
            oldest.add_metric([status], (now - since).total_seconds() if row and since else 0.0)
        yield counts
        yield oldest

        yield GaugeMetricFamily(f"{PREFIX}_followups_open", "Open follow-ups (customers not notified).",
                                value=followups["n"])
        yield GaugeMetricFamily(
            f"{PREFIX}_followup_oldest_age_seconds", "Age of the oldest open follow-up (0: none).",
            value=(now - followups["since"]).total_seconds() if followups["since"] else 0.0,
        )


# --- exposition --------------------------------------------------------------------------
class Exposition:
    """What one scrape returns: this process's samples (or, in multiprocess mode, every
    process's of its kind, added up) and the collectors given."""

    def __init__(self, *collectors):
        self.collectors = collectors

    def collect(self):
        if multiprocess_dir():
            from prometheus_client import multiprocess

            yield from multiprocess.MultiProcessCollector(None).collect()
        else:
            yield from REGISTRY.collect()
        if not self.collectors:
            return
        # Read from the database: when it is down, the process's own samples still go out,
        # and ordersite_scrape_collector_up says which part is missing.
        up = GaugeMetricFamily(f"{PREFIX}_scrape_collector_up",
                               "1 when a collector read at scrape time (from the database) worked.",
                               labels=["collector"])
        for collector in self.collectors:
            name = type(collector).__name__
            try:
                families = list(collector.collect())
            except Exception:
                logger.warning("metrics: %s failed; its metrics are left out of this scrape", name, exc_info=True)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


def parse_address(address: str, default_port: int) -> tuple[str, int]:
    """'127.0.0.1:9101', ':9101' (every interface) or '9101' (loopback) as (host, port)."""
    host, _, port = address.strip().rpartition(":")
    if not _:
        host, port = "127.0.0.1", address.strip()
    return host or "0.0.0.0", int(port or default_port)


def http_server_start(address: str, *collectors, default_port: int):
    """Serve this process's metrics on `address` (worker and Celery processes); '' is off.
    Returns the server (its port in server.server_port) or None."""
    if not (enabled() and address):
        return None
    from prometheus_client import start_http_server

    host, port = parse_address(address, default_port)
    try:
        server, _thread = start_http_server(port, addr=host, registry=Exposition(*collectors))
    except OSError as exc:
        # A second process on one machine with the default port (make run with two
        # workers, the test suite's worker processes): it runs on, unscraped, loudly.
        logger.error("metrics: cannot listen on %s:%s (%s); this process's metrics are not served", host, port, exc)
        return None
    logger.info("metrics served on http://%s:%s/metrics", host, server.server_port)
    return server
