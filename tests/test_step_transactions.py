"""A step that touches only our database commits its 'started' event and its effect in one
transaction, with the services' own atomic blocks inside it taking no savepoints
(orders/services/transactions.py): the whole of it commits or none of it does."""

import dataclasses

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from orders.models import Product, Reservation, SagaEvent
from orders.saga import activities
from orders.saga.shared import StepInput, StepName

from .factories import make_order, make_product

pytestmark = pytest.mark.django_db(transaction=True)


def _local_step_env() -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, is_local=True)  # as the saga runs its own-database steps
    return env


def _reserve(order) -> StepInput:
    return StepInput(order_id=order.pk, step=StepName.RESERVE, idempotency_key=f"{order.workflow_id}:reserve")


def test_a_local_step_takes_no_savepoint_and_commits_start_and_effect_together():
    product = make_product(stock=5)
    order = make_order(products=[(product, 2)], start_saga=False)
    with CaptureQueriesContext(connection) as queries:
        result = _local_step_env().run(activities.reserve_inventory, _reserve(order))
    statements = [q["sql"] for q in queries.captured_queries]
    assert not [sql for sql in statements if "SAVEPOINT" in sql.upper()], statements
    assert result.detail.startswith("2 x ")
    kinds = list(SagaEvent.objects.filter(order=order, step="reserve").values_list("kind", flat=True))
    assert kinds == ["started", "succeeded"]
    product.refresh_from_db()
    assert (product.on_hand, product.reserved) == (3, 2)


def test_a_local_step_that_fails_leaves_nothing_of_its_effect_and_records_the_failure():
    product = make_product(stock=1)
    order = make_order(products=[(product, 2)], start_saga=False)
    with pytest.raises(ApplicationError, match="Not enough stock"):
        _local_step_env().run(activities.reserve_inventory, _reserve(order))
    # The 'started' written with the effect rolled back with it and was written again on its own.
    kinds = list(SagaEvent.objects.filter(order=order, step="reserve").values_list("kind", flat=True))
    assert kinds == ["started", "failed"]
    assert not Reservation.objects.filter(order=order).exists()
    assert Product.objects.values_list("on_hand", "reserved").get(pk=product.pk) == (1, 0)
