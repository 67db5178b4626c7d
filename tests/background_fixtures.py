"""Fixtures for the background-operation tests, loaded as a plugin by each of them
(`pytest_plugins = ["tests.background_fixtures"]`) so that session fixtures exist once:
imported into two modules, a session fixture would run once per module.

- `celery_worker`: a real Celery worker (threads pool) in this process, consuming a queue
  no other test session uses, on the real Redis broker. Tasks see the test database
  because they run in-process with the same settings; tests that use it need
  django_db(transaction=True) so the worker's connections see committed rows.
- `orders_only_env`: Temporal workers for the saga's orders queue only, so charges (on the
  payments queue) wait with no worker polling: a saga "whose payments worker is stopped".
"""

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
from celery.contrib.testing.worker import start_worker
from temporalio.client import Client

from orders.saga.worker import build_workers
from tests.temporal_server import end_open_workflows
from ordersite.celery import app as celery_app

# A queue of our own, set when this plugin loads (at collection, before any task is sent):
# a developer's `make run` worker on the same Redis never takes these tests' tasks, and
# these tests never take theirs.
celery_app.conf.task_default_queue = f"test-background-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def celery_worker(django_db_setup, django_db_blocker):
    app = celery_app
    with django_db_blocker.unblock(), start_worker(app, pool="threads", concurrency=4, perform_ping_check=False,
                                                   shutdown_timeout=60, loglevel="WARNING") as worker:
        yield worker


@dataclass
class WorkerEnv:
    client: Client
    orders_queue: str
    payments_queue: str
    executor: ThreadPoolExecutor
    runs: list = field(default_factory=list)
    workers: list = field(default_factory=list)

    def start(self, queues: tuple[str, ...]) -> None:
        """Start workers for more queues mid-test (the payments worker coming back)."""
        workers = build_workers(self.client, orders_queue=self.orders_queue, payments_queue=self.payments_queue,
                                queues=queues, executor=self.executor)
        self.workers += workers
        self.runs += [asyncio.create_task(w.run()) for w in workers]


@pytest.fixture
async def orders_only_env(transactional_db, temporal_server, settings):
    suffix = uuid.uuid4().hex[:8]
    settings.SAGA_TASK_QUEUE = f"orders-{suffix}"
    settings.PAYMENTS_TASK_QUEUE = f"payments-{suffix}"
    client = await Client.connect(temporal_server.address)
    env = WorkerEnv(client, settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE,
                    ThreadPoolExecutor(max_workers=32, thread_name_prefix="test-activity"))
    env.start(("orders",))
    try:
        yield env
    finally:
        await end_open_workflows(client)
        await asyncio.gather(*(w.shutdown() for w in env.workers), return_exceptions=True)
        await asyncio.gather(*env.runs, return_exceptions=True)
        env.executor.shutdown(wait=True)
