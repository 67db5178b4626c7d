"""The saga's paths end to end, on a real Temporal dev server and a real database."""

import pytest
from asgiref.sync import sync_to_async
from django.core import mail

from orders.models import FollowUp, Order, Payment, Reservation, SagaEvent, Shipment
from orders.status import OrderStatus, SagaStatus

from .conftest import order_state, wait_for
from .factories import make_order, make_product

pytestmark = pytest.mark.django_db(transaction=True)


def timeline(order_id: int) -> list[tuple[str, str]]:
    return list(SagaEvent.objects.filter(order_id=order_id).values_list("step", "kind"))


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
    assert len(mail.outbox) == 1 and order.number in mail.outbox[0].subject
