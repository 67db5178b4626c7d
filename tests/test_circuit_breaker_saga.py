"""Sagas during a gateway outage with the circuit breaker: they wait, then complete.

Real Temporal dev server, database and Redis (REDIS_URL); the outage is the sandbox's switch.
"""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from orders.circuit_breaker import breaker_for
from orders.models import SagaEvent
from orders.status import OrderStatus, SagaStatus

from .conftest import order_state, wait_for
from .factories import make_order

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def quick_breaker(settings):
    settings.CIRCUIT_BREAKER_MIN_CALLS = 3
    settings.CIRCUIT_BREAKER_WINDOW_SECONDS = 60
    settings.CIRCUIT_BREAKER_FAILURE_RATIO = 0.5
    settings.CIRCUIT_BREAKER_COOL_OFF_SECONDS = 2
    settings.CIRCUIT_BREAKER_PROBE_TIMEOUT_SECONDS = 10


def waiting_events(order_id: int) -> list[str]:
    return list(SagaEvent.objects.filter(order_id=order_id, step="charge", detail__startswith="waiting: ")
                .values_list("detail", flat=True))


async def test_sagas_wait_while_the_gateway_circuit_is_open_then_complete(saga_env, quick_breaker, client_as):
    from ops.consumers import dashboard_live_html
    from sandbox.adapters import sandbox_outage_set

    await sync_to_async(sandbox_outage_set)("payment", active=True)
    orders = [await sync_to_async(make_order)(email=f"c{i}@example.com") for i in range(3)]
    breaker = breaker_for("payment")
    await wait_for(lambda: breaker.state().state != "closed", message="the payment circuit to open")
    for order in orders:
        await wait_for(lambda o=order: waiting_events(o.pk), message="a waiting event")
    details = await sync_to_async(waiting_events)(orders[0].pk)
    assert "waiting: payment gateway down (circuit open)" in details[0]

    # While it is down, staff see it on the dashboard and in its live partial.
    await wait_for(lambda: breaker.state().waiting == 3, message="three sagas waiting")
    live = await sync_to_async(dashboard_live_html)()
    assert "Payment gateway down since" in live and "3 sagas waiting" in live
    page = await sync_to_async(lambda: client_as("viewer").get("/").content.decode())()
    assert "Payment gateway down since" in page

    # Several cool-offs pass (each probe fails) and no saga gives up.
    await asyncio.sleep(7)
    states = await sync_to_async(lambda: [order_state(o.pk).saga_status for o in orders])()
    assert SagaStatus.STUCK not in states

    await sync_to_async(sandbox_outage_set)("payment", active=False)
    for order in orders:
        assert await saga_env.result(order, timeout=90) == "completed"
    assert breaker.state().state == "closed"
    for order in orders:
        state = await sync_to_async(order_state)(order.pk)
        assert state.status == OrderStatus.COMPLETED
        kinds = await sync_to_async(lambda o=order: list(o.events.values_list("kind", flat=True)))()
        assert "stuck" not in kinds
    assert "Payment gateway down" not in await sync_to_async(dashboard_live_html)()
