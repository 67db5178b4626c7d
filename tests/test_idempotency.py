"""A step retried after its effect committed (its completion lost to a crash) moves
money and stock once: the idempotency keys hold under the saga's own retries."""

import pytest
from asgiref.sync import sync_to_async
from temporalio import activity

from orders.models import Payment, StockMovement
from orders.saga import activities
from orders.saga.shared import StepInput, StepResult
from sandbox.models import SandboxPaymentRecord

from .conftest import order_state
from .factories import make_order, make_product

pytestmark = pytest.mark.django_db(transaction=True)


def _lose_first_completion(real):
    """The real activity, whose first attempt 'crashes' after its transaction committed."""

    def crash_after_commit(inp: StepInput) -> StepResult:
        result = real(inp)
        if activity.info().attempt == 1:
            raise RuntimeError("worker died before reporting the result")
        return result

    return crash_after_commit


@activity.defn(name="charge_payment")
def charge_payment(inp: StepInput) -> StepResult:
    return _lose_first_completion(activities.charge_payment)(inp)


@activity.defn(name="reserve_inventory")
def reserve_inventory(inp: StepInput) -> StepResult:
    return _lose_first_completion(activities.reserve_inventory)(inp)


@activity.defn(name="refund_payment")
def refund_payment(inp: StepInput) -> StepResult:
    return _lose_first_completion(activities.refund_payment)(inp)


@activity.defn(name="release_reservation")
def release_reservation(inp: StepInput) -> StepResult:
    return _lose_first_completion(activities.release_reservation)(inp)


@pytest.mark.activity_overrides(charge_payment=charge_payment, reserve_inventory=reserve_inventory)
async def test_retried_charge_and_reserve_move_money_and_stock_once(saga_env):
    product = await sync_to_async(make_product)(stock=5)
    order = await sync_to_async(make_order)(products=[(product, 2)])
    assert await saga_env.result(order) == "completed"

    charges = await sync_to_async(lambda: list(Payment.objects.filter(order=order).values_list("kind", flat=True)))()
    assert charges == ["charge"]
    gateway = await sync_to_async(SandboxPaymentRecord.objects.filter(idempotency_key=f"{order.workflow_id}:charge").count)()
    assert gateway == 1
    reserves = await sync_to_async(StockMovement.objects.filter(order=order, kind="reserve").count)()
    assert reserves == 1
    await sync_to_async(product.refresh_from_db)()
    assert (product.on_hand, product.reserved, product.sold) == (3, 0, 2)
    retried = await sync_to_async(
        lambda: set(order.events.filter(kind="retrying").values_list("step", flat=True))
    )()
    assert retried == {"charge", "reserve"}  # both really ran twice


@pytest.mark.activity_overrides(refund_payment=refund_payment, release_reservation=release_reservation)
async def test_retried_refund_and_release_happen_once(saga_env):
    product = await sync_to_async(make_product)(stock=5)
    order = await sync_to_async(make_order)(products=[(product, 2)], fault_plan={"inventory": "fail"})
    assert await saga_env.result(order) == "compensated"
    kinds = await sync_to_async(lambda: list(Payment.objects.filter(order=order).values_list("kind", flat=True)))()
    assert kinds == ["charge", "refund"]
    assert await sync_to_async(StockMovement.objects.filter(order=order, kind="release").count)() == 1
    await sync_to_async(product.refresh_from_db)()
    assert (product.on_hand, product.reserved, product.sold) == (5, 0, 0)
    assert (await sync_to_async(order_state)(order.pk)).status == "failed"
