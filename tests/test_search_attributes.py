"""Sagas can be found in Temporal's visibility by order, customer, amount, status and step."""

import asyncio
import time

import pytest
from asgiref.sync import sync_to_async

from orders.services.saga import customer_search_id

from .factories import make_order

pytestmark = pytest.mark.django_db(transaction=True)


async def _find(client, query: str, timeout: float = 15) -> list[str]:
    # Visibility is eventually consistent: poll briefly.
    deadline = time.monotonic() + timeout
    while True:
        ids = [wf.id async for wf in client.list_workflows(query)]
        if ids or time.monotonic() > deadline:
            return ids
        await asyncio.sleep(0.2)


async def test_search_attributes_are_queryable(saga_env):
    order = await sync_to_async(make_order)(email="search-me@example.com")
    other = await sync_to_async(make_order)(email="someone-else@example.com", fault_plan={"payment": "decline"})
    assert await saga_env.result(order) == "completed"
    assert await saga_env.result(other) == "compensated"

    assert await _find(saga_env.client, f'OrderId = {order.pk}') == [order.workflow_id]
    # The customer is found by a keyed hash of their email; the email itself is in no attribute.
    customer = customer_search_id("Search-Me@example.com ")
    assert await _find(saga_env.client, f'CustomerId = "{customer}"') == [order.workflow_id]
    assert await _find(saga_env.client, 'CustomerId = "search-me@example.com"', timeout=1) == []
    described = await saga_env.handle(order).describe()
    assert not any("@" in str(pair.value) for pair in described.typed_search_attributes)
    assert await _find(saga_env.client, f'OrderId = {order.pk} AND SagaStatus = "completed" '
                                        f'AND CurrentStep = "notify"') == [order.workflow_id]
    assert await _find(saga_env.client, f'OrderId = {other.pk} AND SagaStatus = "compensated" '
                                        f'AND CurrentStep = "charge"') == [other.workflow_id]
    amount = float(order.total)
    assert order.workflow_id in await _find(saga_env.client, f"OrderAmount >= {amount} AND OrderAmount <= {amount}")
