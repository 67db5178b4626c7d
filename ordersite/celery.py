import logging.config
import os

from celery import Celery, bootsteps
from celery.signals import (
    setup_logging,
    task_failure,
    task_prerun,
    task_rejected,
    task_retry,
    task_revoked,
    task_success,
    task_unknown,
    worker_process_init,
)
from django_structlog.celery.receivers import CeleryReceiver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")

app = Celery("ordersite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


class TaskLogContext(bootsteps.Step):
    """django-structlog's worker receivers: each task's lines carry its id and the context
    of whatever queued it. (Its DjangoStructLogInitStep would also connect the publish
    receivers, which the app already connects in every process, DJANGO_STRUCTLOG_CELERY_ENABLED:
    a task queued from a worker was logged twice.)"""

    def __init__(self, parent, **kwargs):
        super().__init__(parent, **kwargs)
        self.receiver = receiver = CeleryReceiver()  # kept: the signals hold weak references
        task_prerun.connect(receiver.receiver_task_prerun)
        task_retry.connect(receiver.receiver_task_retry)
        task_success.connect(receiver.receiver_task_success)
        task_failure.connect(receiver.receiver_task_failure)
        task_revoked.connect(receiver.receiver_task_revoked)
        task_unknown.connect(receiver.receiver_task_unknown)
        task_rejected.connect(receiver.receiver_task_rejected)


app.steps["worker"].add(TaskLogContext)


@setup_logging.connect
def _logging_as_the_rest_of_the_app(**kwargs):
    # Connected, this keeps Celery from installing its own root handler and format: its
    # lines go through the same structlog pipeline as web's and the worker's.
    from django.conf import settings

    logging.config.dictConfig(settings.LOGGING)


@worker_process_init.connect
def _tracing_in_each_pool_process(**kwargs):
    # After the fork: a span exporter's thread does not survive one.
    from ordersite import tracing

    tracing.tracing_start(service="celery")
