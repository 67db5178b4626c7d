import logging.config
import os

from celery import Celery
from celery.signals import setup_logging, worker_process_init
from django_structlog.celery.steps import DjangoStructLogInitStep

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ordersite.settings")

app = Celery("ordersite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Binds each task's id (and the context of the request that queued it) to its log lines.
app.steps["worker"].add(DjangoStructLogInitStep)


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
