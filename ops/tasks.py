"""Celery tasks for background operations: thin, idempotent, retried on transient failures.

Each loads by id (or takes nothing) and calls one service in ops.stalls, ops.reconciliation,
ops.bulk or ops.alerts; those never import this module (they queue work by name, see ops.jobs).
Tasks that must not overlap hold a Redis lock that expires on its own, so a worker that
dies mid-task never blocks the next run for long.
"""

import contextlib
import logging

import redis
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from orders.services.returns import return_sagas_restart

from . import bulk, jobs, reconciliation
from .alerts import services as alerts
from .models import ReconciliationRun
from .stalls import services as stalls
from .stalls.inspect import TemporalUnavailable

logger = logging.getLogger(__name__)

# Failures worth retrying: the database or Redis went away for a moment, Temporal is down.
TRANSIENT = (OperationalError, InterfaceError, redis.ConnectionError, redis.TimeoutError, TemporalUnavailable)

_redis_client = None


def _redis() -> redis.Redis:
    global _redis_client
    if _redis_client is None:
        _redis_client = redis.Redis.from_url(settings.REDIS_URL)
    return _redis_client


@contextlib.contextmanager
def single_flight(name: str, ttl: float):
    """Yield a held lock, or None when another worker holds it."""
    lock = _redis().lock(f"ordersite:task-lock:{name}", timeout=ttl, blocking=False)
    if not lock.acquire(blocking=False):
        yield None
        return
    try:
        yield lock
    finally:
        with contextlib.suppress(redis.exceptions.LockError):
            lock.release()


class LockBusy(Exception):
    """Another worker is running the same operation; this delivery retries later."""


@shared_task(name=jobs.STALLED_SAGA_SWEEP, autoretry_for=TRANSIENT, retry_backoff=5, retry_backoff_max=60,
             max_retries=3)
def stalled_saga_sweep() -> dict:
    # Overlapping sweeps would describe the same workflows twice: skip if one is running.
    with single_flight("stalled-saga-sweep", ttl=max(settings.SWEEPER_INTERVAL_SECONDS * 5, 120)) as lock:
        if lock is None:
            return {"skipped": "another sweep is running"}
        result = stalls.stalled_saga_sweep().as_dict()
        # Returns whose saga never started (Temporal down when opened): start them now.
        result["returns_restarted"] = return_sagas_restart(quiet_seconds=settings.SWEEPER_INTERVAL_SECONDS)
        return result


@shared_task(name=jobs.RECONCILIATION_NIGHTLY, autoretry_for=TRANSIENT, retry_backoff=30, retry_backoff_max=600,
             max_retries=5)
def reconciliation_nightly() -> int:
    return reconciliation.reconciliation_run_queue(trigger=ReconciliationRun.Trigger.SCHEDULE).pk


@shared_task(name=jobs.RECONCILIATION_RUN, autoretry_for=TRANSIENT + (LockBusy,), retry_backoff=10,
             retry_backoff_max=600, max_retries=8)
def reconciliation_run(run_id: int) -> dict:
    with single_flight(f"reconciliation-{run_id}", ttl=3600) as lock:
        if lock is None:
            raise LockBusy(f"reconciliation run {run_id} is being executed elsewhere")
        run = reconciliation.reconciliation_run_execute(run_id=run_id)
        return {"run": run.pk, "state": run.state, "discrepancies": run.discrepancy_count}


@shared_task(name=jobs.BULK_OPERATION_RUN, autoretry_for=TRANSIENT + (LockBusy,), retry_backoff=5,
             retry_backoff_max=120, max_retries=20)
def bulk_operation_run(operation_id: int) -> dict:
    # The lock expires a minute after the last order sent, so a lost worker's redelivered
    # task picks up where it stopped.
    with single_flight(f"bulk-{operation_id}", ttl=60) as lock:
        if lock is None:
            raise LockBusy(f"bulk operation {operation_id} is being executed elsewhere")
        operation = bulk.bulk_operation_execute(operation_id=operation_id, heartbeat=lock.reacquire)
        return {"operation": operation.pk, "done": operation.done, "failed": operation.failed}


@shared_task(name=jobs.ALERTS_CHECK, autoretry_for=(OperationalError, InterfaceError), retry_backoff=5,
             retry_backoff_max=30, max_retries=2)
def alerts_check() -> dict:
    if not settings.ALERTS_ENABLED:
        return {"skipped": "ALERTS_ENABLED is off"}
    # Two checks at once could both find an incident due; the outbox then has it once per
    # check. The lock outlives a check slowed by a webhook timing out on every channel.
    with single_flight("alerts-check", ttl=max(settings.ALERTS_INTERVAL_SECONDS * 5, 300)) as lock:
        if lock is None:
            return {"skipped": "another alerts check is running"}
        return alerts.alerts_check().as_dict()
