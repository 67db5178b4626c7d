"""Exactly once at the boundaries we own (issue 7, cases 2 and 3).

Emails: a notify step whose worker dies after the email went out, before or after our
commit, does not email again. Bookkeeping: a local activity run again (retried, or
replayed by another worker after a real process death) writes no second event and does not
re-apply its state change; a status already gone past is a no-op; bookkeeping that keeps
failing is bounded, visible, and picked up again.
"""

import asyncio
import threading
import uuid
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.db import transaction
from temporalio import activity
from temporalio.client import Client

from orders.adapters.base import Notification, message_id_header
from orders.adapters.email import EmailNotifier
from orders.locks import lock_order
from orders.models import EmailHandoff, NotificationAttempt, Order, SagaEvent
from sandbox.adapters import SandboxNotifier
from sandbox.models import SandboxEmail
from orders.saga import activities
from orders.saga import search_attributes as sa
from orders.saga.shared import SagaTransition, StepInput, StepResult
from orders.services import notifications
from orders.services.events import saga_event_record
from orders.services.saga import saga_transition_record
from orders.status import OrderStatus, SagaStatus

from .conftest import order_state
from .emails import confirmations
from .factories import make_order
from .invariants import assert_invariants
from .temporal_server import end_open_workflows
from .worker_processes import start_worker_process, stop, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

SANDBOX_NOTIFIER = "sandbox.adapters.SandboxNotifier"
EMAIL_NOTIFIER = "orders.adapters.email.EmailNotifier"


class WorkerDied(Exception):
    """Stands for the worker process dying at that point (nothing after it runs)."""


def kinds(order_id: int, step: str | None = None) -> list[tuple[str, str, int]]:
    events = SagaEvent.objects.filter(order_id=order_id).order_by("id")
    if step is not None:
        events = events.filter(step=step)
    return [(e.step, e.kind, e.attempt) for e in events]


# --- case 2: customers are emailed once ------------------------------------------------------


@activity.defn(name="notify_customer")
def notify_dies_after_send_before_commit(inp: StepInput) -> StepResult:
    """First attempt: the email goes out, then the worker dies before our ledger commits."""
    if activity.info().attempt == 1:
        with mock.patch.object(notifications, "lock_order", side_effect=WorkerDied("died before our commit")):
            return activities.notify_customer(inp)
    return activities.notify_customer(inp)


@activity.defn(name="notify_customer")
def notify_dies_after_commit(inp: StepInput) -> StepResult:
    """First attempt: everything committed, then the worker dies before reporting it."""
    result = activities.notify_customer(inp)
    if activity.info().attempt == 1:
        raise WorkerDied("died after our commit")
    return result


def sent_messages(order: Order) -> list[str]:
    return [m.extra_headers["Message-ID"] for m in confirmations() if order.number in m.subject]


async def _assert_emailed_once(saga_env, notifier: str, settings):
    settings.CUSTOMER_NOTIFIER = notifier
    order = await sync_to_async(make_order)()
    assert await saga_env.result(order) == "completed"
    key = f"{order.workflow_id}:notify:confirmed"
    assert sent_messages(order) == [message_id_header(key, settings.DEFAULT_FROM_EMAIL)]
    ledger = await sync_to_async(
        lambda: list(NotificationAttempt.objects.filter(order=order).values_list("idempotency_key", "succeeded"))
    )()
    assert ledger.count((key, True)) == 1
    events = await sync_to_async(kinds)(order.pk, "notify")
    assert [k for _, k, _ in events].count("succeeded") == 1
    assert ("notify", "retrying", 2) in events  # the step really ran a second time
    if notifier == SANDBOX_NOTIFIER:
        assert await sync_to_async(SandboxEmail.objects.filter(message_id=key).count)() == 1
    else:
        handoff = await sync_to_async(EmailHandoff.objects.get)(message_id=key)
        assert handoff.handed_at is not None


@pytest.mark.parametrize("notifier", [SANDBOX_NOTIFIER, EMAIL_NOTIFIER])
@pytest.mark.activity_overrides(notify_customer=notify_dies_after_send_before_commit)
async def test_email_sent_once_when_the_worker_dies_before_our_commit(saga_env, notifier, settings):
    await _assert_emailed_once(saga_env, notifier, settings)


@pytest.mark.parametrize("notifier", [SANDBOX_NOTIFIER, EMAIL_NOTIFIER])
@pytest.mark.activity_overrides(notify_customer=notify_dies_after_commit)
async def test_email_sent_once_when_the_worker_dies_after_our_commit(saga_env, notifier, settings):
    await _assert_emailed_once(saga_env, notifier, settings)


def _notification(order: Order, key: str) -> Notification:
    return Notification(order_id=order.pk, to=order.customer_email, subject=f"Order {order.number}", body="Hello",
                        idempotency_key=key)


def test_sandbox_mailer_sends_a_key_once():
    order = make_order(start_saga=False)
    notifier = SandboxNotifier()
    assert not notifier.sent_lookup("k-1")
    notifier.send(_notification(order, "k-1"))
    notifier.send(_notification(order, "k-1"))
    assert notifier.sent_lookup("k-1")
    assert SandboxEmail.objects.filter(message_id="k-1").count() == 1
    assert len(mail.outbox) == 1 and mail.outbox[0].extra_headers["Message-ID"].startswith("<k-1@")


def test_email_adapter_resends_only_an_interrupted_hand_over():
    order = make_order(start_saga=False)
    notifier = EmailNotifier()
    # We died while talking to the mail server: the hand-over began but was never confirmed.
    EmailHandoff.objects.create(message_id="k-2", recipient=order.customer_email)
    assert not notifier.sent_lookup("k-2")
    notifier.send(_notification(order, "k-2"))
    assert notifier.sent_lookup("k-2")
    notifier.send(_notification(order, "k-2"))  # confirmed: nothing goes out again
    assert len(mail.outbox) == 1


def test_failed_attempts_never_block_a_later_send():
    order = make_order(start_saga=False, fault_plan={"notify": "transient:1"})
    with pytest.raises(Exception, match="unavailable"):
        notifications.customer_notify(order_id=order.pk, idempotency_key=f"{order.workflow_id}:notify", attempt=1)
    notifications.customer_notify(order_id=order.pk, idempotency_key=f"{order.workflow_id}:notify", attempt=2)
    assert notifications.customer_notify(
        order_id=order.pk, idempotency_key=f"{order.workflow_id}:notify", attempt=3) == "already emailed"
    assert list(order.notifications.values_list("succeeded", flat=True)) == [False, True]
    assert len(mail.outbox) == 1


# --- case 3: bookkeeping exactly once ---------------------------------------------------------


def test_keyed_event_is_written_and_applied_once():
    order = make_order(start_saga=False)
    for _ in range(2):
        with transaction.atomic():
            saga_event_record(lock_order(order.pk), kind="started", step="validate", key="k-started",
                              status=OrderStatus.PROCESSING)
    assert kinds(order.pk) == [("validate", "started", 1)]


def test_completed_re_applied_after_delivered_is_a_no_op():
    order = make_order(start_saga=False)
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.DELIVERED, saga_status=SagaStatus.COMPLETED)
    finished = SagaTransition(order_id=order.pk, kind="finished", detail="Order completed", saga_status="completed")
    saga_transition_record(finished)  # no key: a history from before keys
    assert saga_transition_record(SagaTransition(**{**finished.__dict__, "key": "k-finished"}))
    assert not saga_transition_record(SagaTransition(**{**finished.__dict__, "key": "k-finished"}))
    assert order_state(order.pk).status == OrderStatus.DELIVERED
    assert [k for _, k, _ in kinds(order.pk)] == ["finished", "finished"]  # the unkeyed one, then the keyed one


_retried = set()


@activity.defn(name="record_transition")
def record_transition_retried_after_commit(transition: SagaTransition) -> None:
    """Every transition is committed, then its first run 'dies' and the local activity runs again."""
    activities.record_transition(transition)
    if transition.key not in _retried:
        _retried.add(transition.key)
        raise WorkerDied("died after the bookkeeping commit")


@activity.defn(name="validate_order")
def validate_retried_after_commit(inp: StepInput) -> StepResult:
    result = activities.validate_order(inp)
    if inp.idempotency_key not in _retried:
        _retried.add(inp.idempotency_key)
        raise WorkerDied("died after the step committed")
    return result


@pytest.mark.activity_overrides(record_transition=record_transition_retried_after_commit)
async def test_rerun_bookkeeping_writes_one_finished_event(saga_env):
    order = await sync_to_async(make_order)(fault_plan={"inventory": "fail"})
    assert await saga_env.result(order) == "compensated"
    events = await sync_to_async(kinds)(order.pk, "")
    assert [k for _, k, _ in events] == ["finished"]
    assert (await sync_to_async(order_state)(order.pk)).status == OrderStatus.FAILED


def _wait_for_line(process, wanted: str) -> str:
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.strip() == wanted:
            return wanted
    return "".join(seen)


async def _run_until_crash(temporal_server, settings, order_factory, crash_after: str):
    """Start a saga on a worker process that dies right after `crash_after` commits; then
    finish it on in-process workers, which replay the task and re-run its local activities."""
    from orders.saga.worker import build_workers

    suffix = uuid.uuid4().hex[:8]
    settings.SAGA_TASK_QUEUE, settings.PAYMENTS_TASK_QUEUE = f"orders-{suffix}", f"payments-{suffix}"
    env = worker_env(temporal_address=temporal_server.address, orders_queue=settings.SAGA_TASK_QUEUE,
                     payments_queue=settings.PAYMENTS_TASK_QUEUE, CRASH_AFTER=crash_after)
    process = start_worker_process(["tests/crash_worker.py"], env)
    try:
        assert await asyncio.to_thread(_wait_for_line, process, "ready") == "ready"
        order = await sync_to_async(order_factory)()
        died = await asyncio.to_thread(_wait_for_line, process, f"dying after {crash_after.replace(':', ' ')}")
        assert died.startswith("dying"), died
        assert await asyncio.to_thread(process.wait, 30) == 137
    finally:
        stop(process)
    client = await Client.connect(temporal_server.address)
    workers = build_workers(client)
    runs = [asyncio.create_task(w.run()) for w in workers]
    try:
        result = await asyncio.wait_for(client.get_workflow_handle(order.workflow_id).result(), 90)
    finally:
        await end_open_workflows(client)
        await asyncio.gather(*(w.shutdown() for w in workers), return_exceptions=True)
        await asyncio.gather(*runs, return_exceptions=True)
    await sync_to_async(assert_invariants)()
    return order, result


async def test_replayed_step_after_a_worker_death_writes_no_second_started(temporal_server, settings):
    order, result = await _run_until_crash(temporal_server, settings, make_order, "validate_order")
    assert result == "completed"
    assert await sync_to_async(kinds)(order.pk, "validate") == [("validate", "started", 1),
                                                                 ("validate", "succeeded", 1)]


async def test_replayed_finish_after_a_worker_death_writes_no_second_finished(temporal_server, settings):
    order, result = await _run_until_crash(temporal_server, settings, make_order, "record_transition:finished")
    assert result == "completed"
    assert [k for _, k, _ in await sync_to_async(kinds)(order.pk, "")] == ["finished"]


@pytest.mark.activity_overrides(validate_order=validate_retried_after_commit)
async def test_rerun_local_step_writes_started_once_per_attempt(saga_env):
    order = await sync_to_async(make_order)()
    assert await saga_env.result(order) == "completed"
    assert await sync_to_async(kinds)(order.pk, "validate") == [
        ("validate", "started", 1), ("validate", "succeeded", 1), ("validate", "retrying", 2),
    ]


_bookkeeping_healed = threading.Event()
_finish_calls = []


@activity.defn(name="record_transition")
def record_transition_failing_until_healed(transition: SagaTransition) -> None:
    if transition.kind == "finished" and not _bookkeeping_healed.is_set():
        _finish_calls.append(activity.info().attempt)
        raise RuntimeError("database is not accepting connections")
    activities.record_transition(transition)


@pytest.mark.activity_overrides(record_transition=record_transition_failing_until_healed)
async def test_bookkeeping_failure_is_bounded_and_visible(saga_env):
    from orders.saga.policies import BOOKKEEPING_MAX_ATTEMPTS

    _bookkeeping_healed.clear()
    _finish_calls.clear()
    order = await sync_to_async(make_order)()
    handle = saga_env.handle(order)

    async def failing_visibly():
        state = await handle.query("state")
        attributes = (await handle.describe()).typed_search_attributes
        return state["bookkeeping_error"] and attributes.get(sa.SAGA_STATUS) == "bookkeeping_failing"

    for _ in range(300):
        if await failing_visibly():
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("a failing bookkeeping activity never became visible")
    state = await handle.query("state")
    assert "database is not accepting connections" in state["bookkeeping_error"]
    # Bounded: the local activity gave up after its attempts and the saga paused.
    assert max(_finish_calls) == BOOKKEEPING_MAX_ATTEMPTS
    _bookkeeping_healed.set()
    assert await saga_env.result(order) == "completed"
    assert (await handle.describe()).typed_search_attributes.get(sa.SAGA_STATUS) == "completed"
    assert (await handle.query("state"))["bookkeeping_error"] == ""
    assert [k for _, k, _ in await sync_to_async(kinds)(order.pk, "")] == ["finished"]
