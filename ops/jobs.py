"""Background jobs by name, and how a service queues one once its transaction commits.

Dependencies run one way: ops.tasks (the only module that defines Celery tasks) imports
the services it calls (ops.stalls, ops.reconciliation, ops.bulk); those services never
import ops.tasks. A service that must start background work after its commit (a bulk
operation, a reconciliation run asked for by staff) queues it here by the task's name,
as Celery beat does with settings.CELERY_BEAT_SCHEDULE. The names are declared once,
here, and ops.tasks registers each task under its constant.
"""

from celery import current_app
from django.db import transaction

STALLED_SAGA_SWEEP = "ops.tasks.stalled_saga_sweep"
RECONCILIATION_NIGHTLY = "ops.tasks.reconciliation_nightly"
RECONCILIATION_RUN = "ops.tasks.reconciliation_run"
BULK_OPERATION_RUN = "ops.tasks.bulk_operation_run"
ALERTS_CHECK = "ops.tasks.alerts_check"


def job_enqueue_on_commit(task_name: str, *args) -> None:
    """Queue the task once the current transaction commits (at once outside one), so the
    worker finds the rows the job is about; nothing is queued if the transaction rolls back."""
    transaction.on_commit(lambda: current_app.send_task(task_name, args=args))
