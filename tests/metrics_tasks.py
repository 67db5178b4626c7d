"""A Celery task for tests/test_metrics_multiprocess.py, loaded by the worker it starts
(`celery worker --include tests.metrics_tasks`): says which pool process ran it."""

import os
import time

from celery import shared_task


@shared_task(name="tests.metrics_pid")
def metrics_pid(pause: float = 0.2) -> int:
    time.sleep(pause)  # long enough that the pool hands the next task to another process
    return os.getpid()
