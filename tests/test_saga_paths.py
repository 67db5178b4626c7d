"""The saga's paths end to end, on a real Temporal dev server and a real database."""

import pytest
from asgiref.sync import sync_to_async
from django.core import mail

from orders.models import FollowUp, Order, Payment, Reservation, SagaEvent, Shipment
from orders.status import OrderStatus, SagaStatus

from .conftest import order_state, wait_for
from .emails import confirmations
from .factories import make_order, make_product

pytestmark = pytest.mark.django_db(transaction=True)


def timeline(order_id: int) -> list[tuple[str, str]]:
    """The saga's own events: not those of the delivery tracker, which runs alongside from
    shipping on (its shipped email, at its own pace)."""
    return list(SagaEvent.objects.filter(order_id=order_id).exclude(idempotency_key__contains=":notify:shipped")
                .values_list("step", "kind"))


def steps_with(order_id: int, kind: str) -> list[str]:
    return [step for step, k in timeline(order_id) if k == kind]


@sync_to_async
def create(**kwargs) -> Order:
    return make_order(**kwargs)


async def test_happy_path_completes_with_ledgers_and_events(saga_env):
    order = await create()
    assert await saga_env.result(order) == "completed"

    order = await sync_to_async(order_state)(order.pk)
    assert order.status == OrderStatus.COMPLETED
    assert order.saga_status == SagaStatus.COMPLETED
    events = await sync_to_async(timeline)(order.pk)
    assert events == [
        ("validate", "started"), ("validate", "succeeded"),
        ("reserve", "started"), ("reserve", "succeeded"),
        ("charge", "started"), ("charge", "succeeded"),
        ("confirm", "started"), ("confirm", "succeeded"),
        ("ship", "started"), ("ship", "succeeded"),
        ("notify", "started"), ("notify", "succeeded"),
        ("", "finished"),
    ]
    payments = await sync_to_async(lambda: list(Payment.objects.filter(order=order).values_list("kind", "amount")))()
    assert payments == [("charge", order.total)]
    states = await sync_to_async(lambda: list(Reservation.objects.filter(order=order).values_list("state", flat=True)))()
    assert states == ["confirmed"]
    assert await sync_to_async(lambda: Shipment.objects.get(order=order).state)() == Shipment.State.BOOKED
    assert len(confirmations()) == 1 and order.number in confirmations()[0].subject


def events_of(order_id: int, *kinds: str) -> list[tuple[str, str]]:
    return [(s, k) for s, k in timeline(order_id) if k in kinds]


async def test_invalid_order_is_rejected_without_retries(saga_env):
    from django.db import transaction

    from orders.services.catalog import product_deactivate

    def place_then_withdraw():
        with transaction.atomic():  # the saga starts on commit, after the product is withdrawn
            product = make_product()
            order = make_order(products=[(product, 1)])
            product_deactivate(product_id=product.pk)
        return order

    order = await sync_to_async(place_then_withdraw)()
    assert await saga_env.result(order) == "rejected"
    order = await sync_to_async(order_state)(order.pk)
    assert (order.status, order.saga_status) == (OrderStatus.REJECTED, SagaStatus.REJECTED)
    assert await sync_to_async(timeline)(order.pk) == [
        ("validate", "started"), ("validate", "failed"), ("", "finished"),
    ]
    assert "no longer for sale" in order.last_error


async def test_declined_payment_is_compensated(saga_env):
    product = await sync_to_async(make_product)(stock=5)
    order = await create(products=[(product, 2)], fault_plan={"payment": "decline"})
    assert await saga_env.result(order) == "compensated"
    order = await sync_to_async(order_state)(order.pk)
    assert (order.status, order.saga_status) == (OrderStatus.FAILED, SagaStatus.COMPENSATED)
    assert await sync_to_async(timeline)(order.pk) == [
        ("validate", "started"), ("validate", "succeeded"),
        ("reserve", "started"), ("reserve", "succeeded"),
        ("charge", "started"), ("charge", "failed"),
        ("reserve", "compensating"), ("reserve", "compensated"),
        ("", "finished"),
    ]
    assert await sync_to_async(Payment.objects.filter(order=order).count)() == 0
    await sync_to_async(product.refresh_from_db)()
    assert (product.on_hand, product.reserved, product.sold) == (5, 0, 0)


async def test_confirm_failure_refunds_then_releases(saga_env):
    order = await create(fault_plan={"inventory": "fail"})
    assert await saga_env.result(order) == "compensated"
    assert await sync_to_async(events_of)(order.pk, "compensating", "compensated") == [
        ("charge", "compensating"), ("charge", "compensated"),
        ("reserve", "compensating"), ("reserve", "compensated"),
    ]
    kinds = await sync_to_async(lambda: list(Payment.objects.filter(order=order).values_list("kind", "amount")))()
    assert kinds == [("charge", order.total), ("refund", order.total)]


async def test_shipping_failure_is_compensated_in_reverse_order(saga_env):
    product = await sync_to_async(make_product)(stock=4)
    order = await create(products=[(product, 3)], fault_plan={"shipping": "fail"})
    assert await saga_env.result(order) == "compensated"
    assert await sync_to_async(steps_with)(order.pk, "compensated") == ["ship", "confirm", "charge", "reserve"]
    await sync_to_async(product.refresh_from_db)()
    assert (product.on_hand, product.reserved, product.sold) == (4, 0, 0)
    states = await sync_to_async(lambda: list(Reservation.objects.filter(order=order).values_list("state", flat=True)))()
    assert states == ["restocked"]


async def test_notification_failure_goes_to_followup_then_resend_and_resolve(saga_env, operator_user):
    from orders.models import OperatorAction
    from ops.services import followup_resend, followup_resolve

    # Fails its three attempts, then works: the resend succeeds.
    resent = await create(fault_plan={"notify": "transient:3"})
    # Never works: staff reach the customer another way.
    resolved = await create(fault_plan={"notify": "fail"}, email="grace@example.com")
    for order in (resent, resolved):
        await wait_for(lambda o=order: order_state(o.pk).saga_status == SagaStatus.NEEDS_FOLLOWUP,
                       message="follow-up")
        followup = await sync_to_async(lambda o=order: FollowUp.objects.get(order_id=o.pk))()
        assert followup.state == FollowUp.State.OPEN and "Could not notify" in followup.reason

    action = await sync_to_async(followup_resend)(order_id=resent.pk, actor=operator_user, reason="customer asked")
    assert action.outcome in (OperatorAction.Outcome.SENT, OperatorAction.Outcome.APPLIED)
    assert await saga_env.result(resent) == "completed"
    await sync_to_async(followup_resolve)(order_id=resolved.pk, actor=operator_user, reason="phoned the customer")
    assert await saga_env.result(resolved) == "completed"

    for order, resolution in ((resent, "resent"), (resolved, "resolved")):
        state = await sync_to_async(order_state)(order.pk)
        assert (state.status, state.saga_status) == (OrderStatus.COMPLETED, SagaStatus.COMPLETED)
        followup = await sync_to_async(lambda o=order: FollowUp.objects.get(order_id=o.pk))()
        assert (followup.state, followup.resolution) == (FollowUp.State.RESOLVED, resolution)
    outcomes = await sync_to_async(lambda: sorted(OperatorAction.objects.values_list("action", "outcome")))()
    assert outcomes == [("resend", "applied"), ("resolved", "applied")]
    # Notification never rolls back the sale.
    assert await sync_to_async(lambda: Payment.objects.filter(order=resolved, kind="refund").count())() == 0
    assert len(confirmations()) == 1  # only the resent one went out


async def test_gateway_outage_leaves_saga_stuck_until_operator_decides(saga_env, operator_user, settings):
    from sandbox.adapters import sandbox_outage_set
    from orders.models import OperatorAction
    from ops.services import saga_compensate, saga_retry

    # Two sagas' failed charges and lookups would open the gateway's circuit breaker, and the
    # sagas would then wait for it (tests/test_circuit_breaker_saga.py); this is the path of
    # sagas that give up on their own attempts.
    settings.CIRCUIT_BREAKER_MIN_CALLS = 1000
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    retried = await create()
    compensated = await create(email="grace@example.com")
    for order in (retried, compensated):
        await wait_for(lambda o=order: order_state(o.pk).saga_status == SagaStatus.STUCK, message="stuck")
        state = await sync_to_async(order_state)(order.pk)
        assert state.current_step == "charge" and "unavailable" in state.last_error and state.stuck_since
        assert ("charge", "stuck") in await sync_to_async(timeline)(order.pk)

    await sync_to_async(sandbox_outage_set)("payment", active=False)
    await sync_to_async(saga_retry)(order_id=retried.pk, actor=operator_user, reason="gateway is back")
    await sync_to_async(saga_compensate)(order_id=compensated.pk, actor=operator_user, reason="customer gave up")
    assert await saga_env.result(retried) == "completed"
    assert await saga_env.result(compensated) == "compensated"

    after_stuck = (await sync_to_async(timeline)(retried.pk))
    after_stuck = after_stuck[after_stuck.index(("charge", "stuck")):]
    # The operator's retry goes on counting the step's attempts: three failed, this is the fourth.
    assert after_stuck[:3] == [("charge", "stuck"), ("charge", "signal"), ("charge", "retrying")]
    charge_attempts = await sync_to_async(lambda: list(SagaEvent.objects.filter(
        order_id=retried.pk, step="charge", kind__in=["started", "retrying"]).values_list("attempt", flat=True)))()
    assert charge_attempts == [1, 2, 3, 4]
    assert await sync_to_async(lambda: order_state(compensated.pk).status)() == OrderStatus.FAILED
    assert await sync_to_async(lambda: list(OperatorAction.objects.order_by("id").values_list("action", "outcome")))() == [
        ("retry", "applied"), ("compensate", "applied"),
    ]


async def test_cancellation_before_shipping_compensates(saga_env, operator_user):
    from ops.services import order_cancel

    # A slow gateway holds the saga at the charge step long enough to cancel it.
    order = await create(fault_plan={"latency_ms": 1500})
    await wait_for(lambda: order_state(order.pk).current_step == "charge", message="charging")
    await sync_to_async(order_cancel)(order_id=order.pk, actor=operator_user, reason="customer called")
    assert await saga_env.result(order) == "cancelled"
    state = await sync_to_async(order_state)(order.pk)
    assert (state.status, state.saga_status) == (OrderStatus.CANCELLED, SagaStatus.CANCELLED)
    events = await sync_to_async(timeline)(order.pk)
    assert ("confirm", "started") not in events and ("ship", "started") not in events
    assert await sync_to_async(steps_with)(order.pk, "compensated") == ["charge", "reserve"]


async def test_cancel_after_shipping_is_refused(saga_env, operator_user):
    from ops.services import ActionNotAllowed, order_cancel

    order = await create()
    assert await saga_env.result(order) == "completed"
    with pytest.raises(ActionNotAllowed, match="already completed"):
        await sync_to_async(order_cancel)(order_id=order.pk, actor=operator_user)


async def test_shipping_resumes_from_heartbeat_after_a_retry(saga_env):
    from sandbox.models import SandboxGatewayCall

    products = [(await sync_to_async(make_product)(), 1) for _ in range(4)]
    order = await create(products=products, fault_plan={"shipping": "crash_after:2"})
    assert await saga_env.result(order) == "completed"
    ship_events = await sync_to_async(
        lambda: list(SagaEvent.objects.filter(order=order, step="ship").values_list("kind", "attempt", "detail"))
    )()
    assert ship_events[0][:2] == ("started", 1)
    assert ship_events[1][:2] == ("failed", 1) and "after 2 parcels" in ship_events[1][2]
    assert ship_events[2] == ("retrying", 2, "resuming after parcel 2")
    assert ship_events[3][:2] == ("succeeded", 2)
    # Each of the four parcels was booked with the carrier exactly once.
    calls = await sync_to_async(
        lambda: sorted(SandboxGatewayCall.objects.filter(service="carrier-book").values_list("idempotency_key", "calls"))
    )()
    assert [c for _, c in calls] == [1, 1, 1, 1]


async def test_concurrent_orders_for_scarce_stock_never_oversell(saga_env):
    import asyncio

    product = await sync_to_async(make_product)(stock=3)
    orders = [await create(products=[(product, 1)], email=f"c{i}@example.com") for i in range(8)]
    results = await asyncio.gather(*(saga_env.result(o) for o in orders))
    assert sorted(results) == sorted(["completed"] * 3 + ["compensated"] * 5)
    await sync_to_async(product.refresh_from_db)()
    assert (product.on_hand, product.reserved, product.sold) == (0, 0, 3)
    failures = await sync_to_async(
        lambda: list(SagaEvent.objects.filter(kind="failed", step="reserve").values_list("detail", flat=True))
    )()
    assert len(failures) == 5 and all("Not enough stock" in f for f in failures)
