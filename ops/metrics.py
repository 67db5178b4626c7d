"""Prometheus metrics of the staff side: operator actions, Celery tasks, the stalled-saga
sweeper and reconciliation. The domain's are in orders/metrics.py (how several processes
add up is described there).

Celery: tasks are counted by name and state from Celery's signals (connected in
ops/apps.py), in the pool's processes; the worker's main process serves them on
CELERY_METRICS_ADDRESS (worker_init). The sweeper's last run, its open flags and the
latest reconciliation's discrepancies are read from the database at scrape time
(BackgroundStateCollector), on the web /metrics only.
"""

import os
import time

from celery import signals
from django.conf import settings
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from orders import metrics as order_metrics
from orders.metrics import LATENCY_BUCKETS, PREFIX, enabled

OPERATOR_ACTIONS = Counter(
    f"{PREFIX}_operator_actions", "Commands staff sent to sagas, by action and outcome (sent, failed: the signal "
    "could not be delivered, refused: it did not fit the order, denied: no permission).", ["action", "outcome"],
)
CELERY_TASKS = Counter(
    f"{PREFIX}_celery_tasks", "Celery tasks by name and state (started, succeeded, failed, retried).",
    ["task", "state"],
)
CELERY_TASK_DURATION = Histogram(
    f"{PREFIX}_celery_task_duration_seconds", "Run time of a Celery task, by name.", ["task"],
    buckets=(*LATENCY_BUCKETS, 60, 300, 1800),
)

LIVE_DETAIL_FRAMES = Counter(
    f"{PREFIX}_live_detail_frames", "Order-detail socket frames for a saga event, by source: message (built from "
    "the event's message on the timeline the process kept, no query) or read (from the database).", ["source"],
)


def operator_action_counted(*, action: str, outcome: str) -> None:
    if enabled():
        OPERATOR_ACTIONS.labels(action, outcome).inc()


def live_detail_frame_counted(source: str) -> None:
    if enabled():
        LIVE_DETAIL_FRAMES.labels(source).inc()


# --- Celery signals ----------------------------------------------------------------------
_task_started: dict[str, float] = {}


def _task_name(sender) -> str:
    return getattr(sender, "name", None) or str(sender)


def _on_prerun(sender=None, task_id=None, **kwargs):
    if enabled():
        _task_started[task_id] = time.perf_counter()
        CELERY_TASKS.labels(_task_name(sender), "started").inc()


def _on_postrun(sender=None, task_id=None, state=None, **kwargs):
    began = _task_started.pop(task_id, None)
    if enabled() and began is not None:
        CELERY_TASK_DURATION.labels(_task_name(sender)).observe(time.perf_counter() - began)


def _on_success(sender=None, **kwargs):
    if enabled():
        CELERY_TASKS.labels(_task_name(sender), "succeeded").inc()


def _on_failure(sender=None, **kwargs):
    if enabled():
        CELERY_TASKS.labels(_task_name(sender), "failed").inc()


def _on_retry(sender=None, **kwargs):
    if enabled():
        CELERY_TASKS.labels(_task_name(sender), "retried").inc()


def _on_worker_init(**kwargs):
    # The main process serves what its pool processes wrote (multiprocess mode).
    celery_metrics_server_start()


def _on_process_shutdown(pid=None, **kwargs):
    if order_metrics.multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())


def celery_signals_connect() -> None:
    signals.task_prerun.connect(_on_prerun, weak=False, dispatch_uid="ops.metrics.prerun")
    signals.task_postrun.connect(_on_postrun, weak=False, dispatch_uid="ops.metrics.postrun")
    signals.task_success.connect(_on_success, weak=False, dispatch_uid="ops.metrics.success")
    signals.task_failure.connect(_on_failure, weak=False, dispatch_uid="ops.metrics.failure")
    signals.task_retry.connect(_on_retry, weak=False, dispatch_uid="ops.metrics.retry")
    signals.worker_init.connect(_on_worker_init, weak=False, dispatch_uid="ops.metrics.worker_init")
    signals.worker_process_shutdown.connect(_on_process_shutdown, weak=False, dispatch_uid="ops.metrics.shutdown")


def celery_metrics_server_start():
    return order_metrics.http_server_start(settings.CELERY_METRICS_ADDRESS, default_port=9103)


# --- read at scrape time -----------------------------------------------------------------
class BackgroundStateCollector:
    """The sweeper's last finished run and open flags; the latest reconciliation's findings."""

    def collect(self):
        from django.db.models import Count

        from .models import Discrepancy, ReconciliationRun, StallFlag, SweepRun

        last_sweep = SweepRun.objects.filter(finished_at__isnull=False).order_by("-finished_at").first()
        yield GaugeMetricFamily(
            f"{PREFIX}_sweeper_last_run_timestamp_seconds", "When the stalled-saga sweeper last finished (0: never).",
            value=last_sweep.finished_at.timestamp() if last_sweep else 0.0,
        )
        flags = GaugeMetricFamily(f"{PREFIX}_sweeper_open_flags", "Sagas the sweeper has flagged, open now, by kind.",
                                  labels=["kind"])
        open_by_kind = dict(StallFlag.objects.filter(cleared_at__isnull=True).values_list("kind")
                            .annotate(n=Count("id")).values_list("kind", "n"))
        for kind in StallFlag.Kind.values:
            flags.add_metric([kind], open_by_kind.get(kind, 0))
        yield flags

        run = (ReconciliationRun.objects.filter(state=ReconciliationRun.State.FINISHED)
               .order_by("-finished_at", "-id").first())
        yield GaugeMetricFamily(
            f"{PREFIX}_reconciliation_last_run_timestamp_seconds", "When reconciliation last finished (0: never).",
            value=run.finished_at.timestamp() if run and run.finished_at else 0.0,
        )
        found = GaugeMetricFamily(
            f"{PREFIX}_reconciliation_discrepancies", "Discrepancies the latest finished reconciliation found, by kind.",
            labels=["kind"],
        )
        by_kind = {}
        if run is not None:
            by_kind = dict(Discrepancy.objects.filter(run=run).values_list("kind").annotate(n=Count("id"))
                           .values_list("kind", "n"))
            # Kinds over the stored limit: the run counts the rest.
            for kind, extra in (run.overflow or {}).items():
                by_kind[kind] = by_kind.get(kind, 0) + int(extra)
        for kind in Discrepancy.Kind.values:
            found.add_metric([kind], by_kind.get(kind, 0))
        yield found
