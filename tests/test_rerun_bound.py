"""Which lost attempts a saga step runs again (orders.saga.order_saga._rerun_allowed).

Reruns after a lost worker are bounded; waiting out our own outage or an open circuit is
not. The fault suite once left a healthy order stuck: its charge had waited out the open
payment circuit three times, then its worker was killed once, and the bound (then on all
reruns together) sent it to an operator."""

import pytest

from orders.saga import order_saga
from orders.saga.policies import LOST_ATTEMPT_RERUNS


@pytest.fixture
def new_histories(monkeypatch):
    """As in a workflow started after the patch: workflow.patched answers True."""
    asked = []
    monkeypatch.setattr(order_saga.workflow, "patched", lambda patch_id: asked.append(patch_id) or True)
    return asked


def test_a_real_failure_is_never_rerun(new_histories):
    assert not order_saga._rerun_allowed(None, 0, 0)


@pytest.mark.parametrize("lost", ["infrastructure", "circuit"])
def test_outages_and_open_circuits_are_waited_out_however_often(new_histories, lost):
    assert order_saga._rerun_allowed(lost, 50, 0)
    assert new_histories == []


def test_lost_workers_are_bounded_on_their_own(new_histories):
    n = LOST_ATTEMPT_RERUNS
    assert order_saga._rerun_allowed("worker", n - 1, n - 1)
    assert not order_saga._rerun_allowed("worker", n, n)
    assert new_histories == []  # the old and new answers agree: no marker needed


def test_circuit_waits_do_not_use_up_the_lost_worker_bound(new_histories):
    # Three circuit waits, then the first lost worker: run it again.
    assert order_saga._rerun_allowed("worker", LOST_ATTEMPT_RERUNS, 0)
    assert new_histories == [order_saga.PATCH_WORKER_LOSSES_APART]


def test_histories_from_before_the_patch_keep_their_answer(monkeypatch):
    monkeypatch.setattr(order_saga.workflow, "patched", lambda patch_id: False)
    assert not order_saga._rerun_allowed("worker", LOST_ATTEMPT_RERUNS, 0)


# --- a local step run again under another activity id ---------------------------------------


def _run_local(activity_fn, inp, *, activity_id: str, attempt: int = 1, is_local: bool = True):
    import dataclasses

    from temporalio.testing import ActivityEnvironment

    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, activity_id=activity_id, attempt=attempt, is_local=is_local)
    return env.run(activity_fn, inp)


@pytest.mark.django_db(transaction=True)
def test_a_local_step_run_again_under_another_id_records_one_start():
    """A workflow task lost after its local step ran is run again from the history, where
    the step may come at another place among the commands (another activity id): the same
    first attempt must record nothing new, and the stock is reserved once."""
    from orders.models import Reservation, SagaEvent
    from orders.saga.activities import reserve_inventory
    from orders.saga.shared import StepInput, StepName

    from .factories import make_order, make_product

    product = make_product(stock=5)
    order = make_order(products=[(product, 2)], start_saga=False)
    inp = StepInput(order_id=order.pk, step=StepName.RESERVE, idempotency_key=f"{order.workflow_id}:reserve")
    _run_local(reserve_inventory, inp, activity_id="2")
    _run_local(reserve_inventory, inp, activity_id="4")
    started = SagaEvent.objects.filter(order=order, step="reserve", kind=SagaEvent.Kind.STARTED)
    assert started.count() == 1
    assert sum(Reservation.objects.filter(order=order).values_list("quantity", flat=True)) == 2
    # A later run of the step (an operator's retry) counts on from the attempts before it.
    _run_local(reserve_inventory, StepInput(order_id=order.pk, step=StepName.RESERVE,
                                            idempotency_key=inp.idempotency_key, attempt_offset=3), activity_id="9")
    assert SagaEvent.objects.filter(order=order, step="reserve", kind=SagaEvent.Kind.RETRYING, attempt=4).count() == 1
