"""Issue 7, cases 5-8: the saga's control flow at its boundaries, on a real Temporal dev
server, database and Redis.

- A crash is not a step failure: attempts lost to a dead worker, and our own database
  failing, never make a healthy order stuck or open a follow-up.
- One cancellation rule, from the app and from Temporal, at every step: before shipping
  everything done is undone (the step in flight included), after shipping nothing is.
- Compensations are bounded: one that cannot complete leaves the saga compensation_stuck,
  the others still run, and retry_compensation finishes the job.
- Keys carry a random per-order part: a restored database reusing order numbers gets new
  workflow ids and keys, and the gateway books a new charge.

One module (over 400 lines) because every case runs on the same troubled activities below:
gates that hold a step while a cancel lands, and faults injected into compensations.

Money and stock are checked straight in SQL after each (our ledger and the sandbox's own
books), and saga_env checks tests/invariants.py at teardown.
"""

import asyncio
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.db import OperationalError, connection
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import CancelledError, is_cancelled_exception

from ops.services import (
    ActionNotAllowed,
    order_cancel,
    saga_retry,
    saga_retry_compensation,
)
from orders.errors import GatewayUnavailable, InventoryFailure
from orders.models import (
    FollowUp,
    NotificationAttempt,
    Order,
    OrderLine,
    Payment,
    Product,
    Reservation,
    SagaEvent,
    Shipment,
    StockMovement,
)
from orders.saga import activities
from orders.saga import search_attributes as sa
from orders.saga.shared import StepInput, StepResult
from orders.services.saga import saga_input_for
from orders.status import OrderStatus, SagaStatus

from sandbox.adapters import sandbox_outage_set
from sandbox.models import SandboxPaymentRecord

from .conftest import order_state, wait_for
from .emails import confirmations
from .factories import make_order, make_product

# --- activity overrides: the real activities, with test-controlled trouble in front ----

# (order id, step) -> Gate: the step's next attempt waits until the test releases it.
GATES: dict[tuple[int, str], "Gate"] = {}
# (order id, activity name) -> {"mode": "fail" | "transient", "left": n}: compensations that fail.
UNDO_FAULTS: dict[tuple[int, str], dict] = {}
# order id -> charge attempts still to be "lost" (the worker stops heartbeating and dies).
LOSE_CHARGE: dict[int, int] = {}
# order id -> notify attempts still to fail on our own database.
DATABASE_DOWN_IN_NOTIFY: dict[int, int] = {}
_lock = threading.Lock()


class Gate:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        # Set when a cancel from Temporal reached the held step (raised in its thread).
        self.cancel_reached = threading.Event()


def _take(counter: dict, key) -> bool:
    with _lock:
        if counter.get(key, 0) > 0:
            counter[key] -= 1
            return True
    return False


def _not_accepting_connections(attempt: int) -> str:
    raise OperationalError("connection failed: FATAL: the database system is not accepting connections")


def _warehouse_error(mode: str) -> str:
    if mode == "fail":
        raise InventoryFailure("warehouse system refused the stock move (test fault)")
    raise GatewayUnavailable("warehouse system timed out (test fault)")


def _troubled(name: str, real):

    def run(inp: StepInput) -> StepResult:
        if name == "charge_payment" and _take(LOSE_CHARGE, inp.order_id):
            # The worker hangs (or died): no heartbeat, no answer, until Temporal gives up on it.
            threading.Event().wait(7)
            return StepResult(detail="lost")
        if name == "notify_customer" and _take(DATABASE_DOWN_IN_NOTIFY, inp.order_id):
            return activities._recorded(inp, _not_accepting_connections)
        gate = GATES.pop((inp.order_id, inp.step.value), None) if not name.startswith(("release", "refund", "restock", "cancel_")) else None
        if gate is not None:
            gate.entered.set()
            local = activity.info().is_local
            try:
                while not gate.release.wait(0.2):
                    if not local:
                        activity.heartbeat()  # alive; a cancel from Temporal reaches us here
            except CancelledError:
                gate.cancel_reached.set()
                raise
        fault = UNDO_FAULTS.get((inp.order_id, name))
        if fault is not None and (fault["mode"] == "fail" or _take(fault, "left")):
            # Through the activities' own recording, as a real warehouse error would go.
            return activities._recorded(inp, lambda attempt: _warehouse_error(fault["mode"]), compensation=True,
                                        own_database_only=True)
        return real(inp)

    run.__name__ = name
    return activity.defn(name=name)(run)


_REGISTERED = {**activities.ORDERS_QUEUE_ACTIVITIES, **activities.PAYMENTS_QUEUE_ACTIVITIES}
OVERRIDES = {
    name: _troubled(name, _REGISTERED[name]) for name in (
        "validate_order", "reserve_inventory", "charge_payment", "confirm_inventory", "arrange_shipping",
        "notify_customer", "release_reservation", "restock_inventory",
    )
}

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.activity_overrides(**OVERRIDES)]


@pytest.fixture(autouse=True)
def _clear_trouble():
    yield
    for table in (GATES, UNDO_FAULTS, LOSE_CHARGE, DATABASE_DOWN_IN_NOTIFY):
        table.clear()


# --- helpers -------------------------------------------------------------------------------


@sync_to_async
def create(stock: int = 5, quantity: int = 2, **kwargs) -> tuple[Order, Product]:
    product = make_product(stock=stock)
    return make_order(products=[(product, quantity)], start_saga=False, **kwargs), product


async def start(env, order: Order) -> None:
    """Start the saga as saga_start does, with a short workflow task timeout: a signal or a
    cancel then reaches a saga whose local activity is running after ~1.6 s (Temporal
    heartbeats the workflow task at 80% of it), not after 8 s as with the default."""
    await env.client.start_workflow(
        "OrderSaga", saga_input_for(order), id=order.workflow_id, task_queue=env.orders_queue,
        task_timeout=timedelta(seconds=2),
    )


async def started(env, **kwargs) -> tuple[Order, Product]:
    order, product = await create(**kwargs)
    await start(env, order)
    return order, product


def gate(order: Order, step: str) -> Gate:
    GATES[(order.pk, step)] = g = Gate()
    return g


async def cancel_seen_by_workflow(handle) -> bool:
    """True once a workflow task completed after the cancel request: the saga has seen it."""
    async def seen():
        requested = False
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCEL_REQUESTED:
                requested = True
            elif requested and event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                return True
        return False

    for _ in range(300):
        if await seen():
            return True
        await asyncio.sleep(0.1)
    raise AssertionError("the saga never processed the cancel request")


async def ended_cancelled_in_temporal(env, order: Order) -> None:
    with pytest.raises(WorkflowFailureError) as failure:
        await asyncio.wait_for(env.handle(order).result(), 60)
    assert is_cancelled_exception(failure.value.cause), failure.value.cause


def net_money(order: Order) -> tuple[Decimal, Decimal]:
    """(our ledger, the gateway's books) charged minus refunded, for this order's keys."""
    def net(rows):
        return sum((a if k == "charge" else -a for k, a in rows), Decimal(0))

    ours = net(Payment.objects.filter(order_id=order.pk).values_list("kind", "amount"))
    theirs = net(SandboxPaymentRecord.objects.filter(idempotency_key__startswith=f"{order.workflow_id}:")
                 .values_list("kind", "amount"))
    return ours, theirs


def stock_of(product: Product) -> tuple[int, int, int]:
    product.refresh_from_db()
    return product.on_hand, product.reserved, product.sold


def kinds(order: Order, *wanted: str) -> list[tuple[str, str]]:
    return list(SagaEvent.objects.filter(order_id=order.pk, kind__in=wanted).order_by("id").values_list("step", "kind"))


@sync_to_async
def assert_rolled_back(order: Order, product: Product, status: str = OrderStatus.CANCELLED,
                       stuck: int = 0) -> None:
    state = order_state(order.pk)
    assert (state.status, state.saga_status) == (status, status if status != OrderStatus.FAILED else "compensated")
    assert net_money(order) == (0, 0)
    assert stock_of(product) == (5, 0, 0)
    assert not set(Reservation.objects.filter(order=order).values_list("state", flat=True)) & {"held", "confirmed"}
    assert len(kinds(order, "stuck")) == stuck
    assert not FollowUp.objects.filter(order=order).exists()


# --- case 6: one cancellation rule --------------------------------------------------------


@pytest.mark.parametrize("source", ["app", "temporal"])
@pytest.mark.parametrize("step", ["validate", "reserve", "charge", "confirm"])
async def test_cancel_before_shipping_undoes_everything_including_the_step_in_flight(
    saga_env, operator_user, step, source
):
    order, product = await create()
    held = gate(order, step)
    await start(saga_env, order)
    await wait_for(held.entered.is_set, message=f"{step} running")
    if source == "app":
        await sync_to_async(order_cancel)(order_id=order.pk, actor=operator_user, reason="customer changed their mind")
        await wait_for(lambda: SagaEvent.objects.filter(order_id=order.pk, kind="signal").exists(), message="cancel accepted")
        held.release.set()
        assert await saga_env.result(order) == "cancelled"
    else:
        await saga_env.handle(order).cancel()
        await cancel_seen_by_workflow(saga_env.handle(order))
        held.release.set()
        await ended_cancelled_in_temporal(saga_env, order)
    await assert_rolled_back(order, product)
    assert not await sync_to_async(Shipment.objects.filter(order=order).exists)()
    assert await sync_to_async(lambda: kinds(order, "finished"))() == [("", "finished")]


async def test_cancel_from_temporal_while_shipping_cancels_the_shipment_and_refunds(saga_env):
    order, product = await create()
    held = gate(order, "ship")
    await start(saga_env, order)
    await wait_for(held.entered.is_set, message="shipping")
    await saga_env.handle(order).cancel()
    await cancel_seen_by_workflow(saga_env.handle(order))
    # The cancel reaches the step with its next heartbeat's answer (throttled to 4 s). A step
    # let go before that books the parcel and succeeds, and the saga then rightly finishes
    # as completed ("cancelled after shipping; nothing rolled back"): not this case.
    await wait_for(held.cancel_reached.is_set, timeout=15, message="the cancel reaching the shipping step")
    held.release.set()
    await ended_cancelled_in_temporal(saga_env, order)
    await assert_rolled_back(order, product)
    undone = await sync_to_async(lambda: [s for s, _ in kinds(order, "compensated")])()
    assert undone == ["ship", "confirm", "charge", "reserve"]
    # No confirmation; only the cancellation (customer-told-of-outcome).
    assert [m.subject for m in mail.outbox] == [f"Your order {order.number} has been cancelled"]


async def test_cancel_from_temporal_while_notifying_rolls_nothing_back(saga_env):
    order, product = await create()
    held = gate(order, "notify")
    await start(saga_env, order)
    await wait_for(held.entered.is_set, message="notifying")
    await saga_env.handle(order).cancel()
    await cancel_seen_by_workflow(saga_env.handle(order))
    held.release.set()
    await ended_cancelled_in_temporal(saga_env, order)
    state = await sync_to_async(order_state)(order.pk)
    assert (state.status, state.saga_status) == (OrderStatus.COMPLETED, SagaStatus.COMPLETED)
    assert await sync_to_async(net_money)(order) == (order.total, order.total)
    assert await sync_to_async(stock_of)(product) == (3, 0, 2)
    assert await sync_to_async(lambda: kinds(order, "compensating", "compensated", "followup", "stuck"))() == []
    assert not await sync_to_async(FollowUp.objects.filter(order=order).exists)()


async def test_cancel_from_temporal_during_follow_up_closes_it_and_keeps_the_sale(saga_env):
    order, product = await started(saga_env, fault_plan={"notify": "fail"})
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.NEEDS_FOLLOWUP, message="follow-up")
    await saga_env.handle(order).cancel()
    await ended_cancelled_in_temporal(saga_env, order)
    state = await sync_to_async(order_state)(order.pk)
    assert (state.status, state.saga_status) == (OrderStatus.COMPLETED, SagaStatus.COMPLETED)
    followup = await sync_to_async(FollowUp.objects.get)(order=order)
    assert (followup.state, followup.resolution) == (FollowUp.State.RESOLVED, "cancelled")
    assert await sync_to_async(net_money)(order) == (order.total, order.total)
    assert await sync_to_async(stock_of)(product) == (3, 0, 2)


async def test_staff_cancel_during_a_step_that_then_gets_stuck_wins_over_stuck_and_retry(saga_env, operator_user):
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    try:
        # Slow failing charge attempts: the cancel lands while they run.
        order, product = await started(saga_env, fault_plan={"latency_ms": 800})
        await wait_for(lambda: order_state(order.pk).current_step == "charge", message="charging")
        await sync_to_async(order_cancel)(order_id=order.pk, actor=operator_user)
        assert await saga_env.result(order) == "cancelled"
    finally:
        await sync_to_async(sandbox_outage_set)("payment", active=False)
    await assert_rolled_back(order, product)
    with pytest.raises(ActionNotAllowed):
        await sync_to_async(saga_retry)(order_id=order.pk, actor=operator_user)
    # Nothing ever reached the gateway's books for this order.
    assert not await sync_to_async(
        SandboxPaymentRecord.objects.filter(idempotency_key__startswith=order.workflow_id).exists)()


# --- case 7: bounded compensations -----------------------------------------------------------

# Shipping refused: every compensation runs (cancel shipment, restock, refund, release).
UNDO = {
    "cancel_shipment": ("ship", "shipping_cancel"),
    "restock": ("confirm", "restock_inventory"),
    "refund": ("charge", "refund"),
    "release": ("reserve", "release_reservation"),
}


def _arm_undo_fault(order: Order, which: str, mode: str) -> dict:
    step, fault = UNDO[which]
    plan = {"shipping": "fail"}
    if which in ("cancel_shipment", "refund"):
        plan[fault] = "fail" if mode == "fail" else "transient:2"
    else:
        UNDO_FAULTS[(order.pk, fault)] = {"mode": mode, "left": 2}
    Order.objects.filter(pk=order.pk).update(fault_plan=plan)
    return plan


def _clear_undo_fault(order: Order, which: str) -> None:
    UNDO_FAULTS.pop((order.pk, UNDO[which][1]), None)
    Order.objects.filter(pk=order.pk).update(fault_plan={"shipping": "fail"})


@pytest.mark.parametrize("which", list(UNDO))
async def test_compensation_failing_transiently_completes(saga_env, which):
    order, product = await create()
    await sync_to_async(_arm_undo_fault)(order, which, "transient")
    await start(saga_env, order)
    assert await saga_env.result(order) == "compensated"
    await assert_rolled_back(order, product, status=OrderStatus.FAILED)
    step = UNDO[which][0]
    failures = await sync_to_async(lambda: list(SagaEvent.objects.filter(
        order_id=order.pk, step=step, kind="failed", detail__startswith="Compensation failed").values_list("detail", flat=True)))()
    assert len(failures) == 2, failures


@pytest.mark.parametrize("which", list(UNDO))
async def test_compensation_failing_for_good_is_stuck_until_retried(saga_env, operator_user, which):
    from ops.selectors import dashboard_counts, stuck_orders
    from ops.order_pages.selectors import order_actions, user_action_permissions

    order, product = await create()
    await sync_to_async(_arm_undo_fault)(order, which, "fail")
    await start(saga_env, order)
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.COMPENSATION_STUCK, message="compensation stuck")
    step = UNDO[which][0]

    @sync_to_async
    def while_stuck():
        state = order_state(order.pk)
        assert state.status == OrderStatus.PROCESSING and state.stuck_since is not None
        stuck = list(SagaEvent.objects.filter(order_id=order.pk, kind="stuck").values_list("step", "detail"))
        assert len(stuck) == 1 and stuck[0][0] == step and "could not complete" in stuck[0][1], stuck
        # The other compensations ran anyway.
        undone = {s for s, _ in kinds(order, "compensated")}
        assert undone == {"ship", "confirm", "charge", "reserve"} - {step}
        # Staff see it: the stuck queue, the dashboard count, and the order's buttons.
        assert order.pk in {o.pk for o in stuck_orders()}
        assert dashboard_counts().stuck_total >= 1
        assert order_actions(state, user_action_permissions(operator_user)).actions == ["retry_compensation"]

    await while_stuck()
    described = await saga_env.handle(order).describe()
    assert described.typed_search_attributes.get(sa.SAGA_STATUS) == "compensation_stuck"
    await sync_to_async(_clear_undo_fault)(order, which)
    action = await sync_to_async(saga_retry_compensation)(order_id=order.pk, actor=operator_user, reason="carrier called back")
    assert await saga_env.result(order) == "compensated"
    await assert_rolled_back(order, product, status=OrderStatus.FAILED, stuck=1)
    from orders.models import OperatorAction

    assert await sync_to_async(lambda: OperatorAction.objects.get(pk=action.pk).outcome)() == "applied"
    assert await sync_to_async(lambda: [s for s, _ in kinds(order, "compensated")].count(step))() == 1


# --- case 5: a crash is not a step failure -------------------------------------------------


async def test_charge_attempts_lost_to_dead_workers_do_not_make_the_order_stuck(saga_env):
    order, product = await create()
    LOSE_CHARGE[order.pk] = 3  # every attempt of the first run: the step's own retries run out
    await start(saga_env, order)
    assert await saga_env.result(order, timeout=120) == "completed"
    assert not await sync_to_async(lambda: kinds(order, "stuck"))()
    retried = await sync_to_async(lambda: list(SagaEvent.objects.filter(
        order_id=order.pk, step="charge", kind="retrying", detail__contains="worker running this step was lost"
    ).values_list("detail", flat=True)))()
    assert len(retried) == 1 and "rerun 1 of" in retried[0], retried
    assert await sync_to_async(net_money)(order) == (order.total, order.total)
    assert await sync_to_async(SandboxPaymentRecord.objects.filter(
        idempotency_key=f"{order.workflow_id}:charge").count)() == 1


async def test_a_database_outage_while_notifying_opens_no_follow_up(saga_env):
    order, product = await create()
    DATABASE_DOWN_IN_NOTIFY[order.pk] = 4  # all three attempts of the step, and the first rerun
    await start(saga_env, order)
    assert await saga_env.result(order) == "completed"
    assert not await sync_to_async(FollowUp.objects.filter(order=order).exists)()
    assert await sync_to_async(lambda: kinds(order, "followup", "stuck"))() == []
    notify_events = await sync_to_async(lambda: list(SagaEvent.objects.filter(order_id=order.pk, step="notify")
                                                      .values_list("kind", "detail")))()
    assert not [d for k, d in notify_events if k == "failed"], notify_events
    assert any(k == "retrying" and "infrastructure" in d for k, d in notify_events), notify_events
    assert not await sync_to_async(NotificationAttempt.objects.filter(order=order, succeeded=False).exists)()
    state = await sync_to_async(order_state)(order.pk)
    assert "database" not in (state.last_error or "")
    assert len(confirmations()) == 1


# --- case 8: keys carry a random per-order part ---------------------------------------------


def _restore_database_to_before(order: Order, product: Product, counters: tuple[int, int, int]) -> None:
    """What a restore from a backup taken before `order` does to our rows: the order and
    everything it wrote are gone, stock is as it was, and the id sequence is back."""
    from orders.models import OperatorAction

    for model in (SagaEvent, Payment, StockMovement, Reservation, Shipment, NotificationAttempt, FollowUp,
                  OperatorAction, OrderLine):
        model.objects.filter(order_id=order.pk).delete()
    Order.objects.filter(pk=order.pk).delete()
    Product.objects.filter(pk=product.pk).update(on_hand=counters[0], reserved=counters[1], sold=counters[2])
    table = Order._meta.db_table
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, false)", [table, order.pk])
        elif connection.vendor == "sqlite":
            cursor.execute("UPDATE sqlite_sequence SET seq = %s WHERE name = %s", [order.pk - 1, table])
        else:
            pytest.skip(f"no sequence reset for {connection.vendor}")


async def test_a_restored_database_reusing_order_numbers_gets_new_keys_and_a_new_charge(saga_env):
    from orders.saga.shared import delivery_workflow_id

    product = await sync_to_async(make_product)(stock=5)
    before = await sync_to_async(stock_of)(product)
    old = await sync_to_async(make_order)(products=[(product, 1)])
    assert await saga_env.result(old) == "completed"
    old_receipt = await sync_to_async(lambda: Payment.objects.get(order=old).gateway_reference)()
    await saga_env.client.get_workflow_handle(delivery_workflow_id(old.workflow_id)).terminate("restored away")

    await sync_to_async(_restore_database_to_before)(old, product, before)
    new = await sync_to_async(make_order)(products=[(product, 1)])
    assert new.pk == old.pk and new.number == old.number  # the restore reuses the number
    assert new.workflow_id != old.workflow_id and new.workflow_id.startswith(f"order-{new.pk}-")
    assert await saga_env.result(new) == "completed"

    payment = await sync_to_async(Payment.objects.get)(order=new)
    assert payment.idempotency_key == f"{new.workflow_id}:charge"
    assert payment.gateway_reference != old_receipt  # a new charge, not the old receipt
    books = await sync_to_async(lambda: dict(SandboxPaymentRecord.objects.filter(kind="charge").values_list(
        "idempotency_key", "reference")))()
    assert books[f"{old.workflow_id}:charge"] == old_receipt
    assert books[f"{new.workflow_id}:charge"] == payment.gateway_reference
    tracker = await saga_env.client.get_workflow_handle(delivery_workflow_id(new.workflow_id)).describe()
    assert tracker.id == f"delivery-{new.workflow_id.removeprefix('order-')}"
