"""Fixtures for the real services: a Temporal dev server, the database, Redis.

The dev server is started once per session on a free port; each saga test runs its own
workers on fresh task queues, so no test can pick up another's work.
"""

import asyncio
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from temporalio.client import Client, WorkflowFailureError

from orders.models import Order
from orders.saga.worker import build_workers

from .db_threads import close_connections_of_other_threads
from .invariants import assert_invariants, assert_no_open_tracker_for_closed_order
from .temporal_server import DevServer, end_open_workflows


@pytest.fixture(scope="session", autouse=True)
def _close_thread_connections_at_end(django_db_setup, django_db_blocker):
    """Set up after (so torn down before) the test database: closes what other threads hold."""
    yield
    with django_db_blocker.unblock():
        close_connections_of_other_threads()


@pytest.fixture(scope="session")
def temporal_server():
    server = DevServer().start()
    # The app's own client (orders.temporal_client) reads the address from settings.
    settings.TEMPORAL_ADDRESS = server.address
    os.environ["TEMPORAL_ADDRESS"] = server.address
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _fast_and_quiet(settings, tmp_path):
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    settings.SANDBOX_FAULTS_ENABLED = True
    settings.SAGA_RETRY_INITIAL_SECONDS = 0.05


@pytest.fixture(autouse=True)
def _cache_cleared():
    """Each test starts with an empty cache: the dashboard's figures are cached under the
    newest row ids (ops.dashboard), and a rolled-back test can leave the next one the same
    ids over different rows (SQLite reuses them)."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(autouse=True)
def _breakers_closed():
    """Every test starts with the gateway's and the carrier's circuit breakers closed (they live in Redis)."""
    from orders.circuit_breaker import BREAKERS

    for breaker in BREAKERS.values():
        breaker.reset()
    yield
    for breaker in BREAKERS.values():
        breaker.reset()


@dataclass
class SagaEnv:
    client: Client
    orders_queue: str
    payments_queue: str

    async def result(self, order: Order, timeout: float = 60) -> str:
        handle = self.client.get_workflow_handle(order.workflow_id)
        try:
            return await asyncio.wait_for(handle.result(), timeout)
        except WorkflowFailureError as err:
            chain, cause = [], err.cause
            while cause is not None:
                chain.append(f"{type(cause).__name__}: {cause}")
                cause = getattr(cause, "cause", None)
            raise AssertionError("saga failed: " + " <- ".join(chain)) from err

    def handle(self, order: Order):
        return self.client.get_workflow_handle(order.workflow_id)


async def wait_for(predicate, timeout: float = 30, interval: float = 0.05, message: str = "condition"):
    """Poll a sync predicate (run in a thread, it may use the ORM) until it returns truthy."""
    check = sync_to_async(predicate, thread_sensitive=False)
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def order_state(order_id: int) -> Order:
    return Order.objects.get(pk=order_id)


@pytest.fixture
async def saga_env(request, transactional_db, temporal_server, settings):
    """Workers for both saga task queues, on queues no other test uses.

    `@pytest.mark.activity_overrides(name=fn, ...)` swaps in activities registered under
    that name (to simulate a crash, say). Depends on transactional_db so it is torn down
    (workers stopped, invariants checked) before the database is flushed.
    """
    marker = request.node.get_closest_marker("activity_overrides")
    suffix = uuid.uuid4().hex[:8]
    settings.SAGA_TASK_QUEUE = f"orders-{suffix}"
    settings.PAYMENTS_TASK_QUEUE = f"payments-{suffix}"
    client = await Client.connect(temporal_server.address)
    executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="test-activity")
    workers = build_workers(
        client, orders_queue=settings.SAGA_TASK_QUEUE, payments_queue=settings.PAYMENTS_TASK_QUEUE, executor=executor,
        activity_overrides=marker.kwargs if marker else None,
    )
    runs = [asyncio.create_task(w.run()) for w in workers]
    env = SagaEnv(client, settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE)
    try:
        yield env
        await assert_no_open_tracker_for_closed_order(client)
    finally:
        await end_open_workflows(client)
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)
        executor.shutdown(wait=True)
    await sync_to_async(assert_invariants)()


@pytest.fixture
def operator_user(transactional_db):
    from ops.roles import OPERATOR, staff_user_create

    return staff_user_create(username=f"op-{uuid.uuid4().hex[:6]}", password="operator-pass", role=OPERATOR)


@pytest.fixture
def staff_user(db):
    """Make a staff user in a role: staff_user("operator")."""
    from ops.roles import staff_user_create

    def make(role: str, username: str | None = None):
        return staff_user_create(username=username or f"{role}-{uuid.uuid4().hex[:6]}", password="staff-pass-123", role=role)

    return make


@pytest.fixture
def client_as(client, staff_user):
    """A Django test client signed in as a new user of the role: client_as("viewer")."""

    def sign_in(role: str):
        client.force_login(staff_user(role))
        return client

    return sign_in
