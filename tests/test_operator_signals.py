"""Operator commands reach the saga once: repeated signals and commands that no longer
fit the saga's state have no second effect, and the audit log says what happened."""

import pytest
from asgiref.sync import sync_to_async
from django.core.exceptions import PermissionDenied

from sandbox.adapters import sandbox_outage_set
from orders.models import OperatorAction, SagaEvent
from orders.saga.shared import OperatorCommand
from orders.status import SagaStatus
from ops.roles import VIEWER, staff_user_create
from ops.services import ActionNotAllowed, saga_retry

from .conftest import order_state, wait_for
from .factories import make_order

pytestmark = pytest.mark.django_db(transaction=True)


async def test_repeated_retry_signal_has_no_second_effect(saga_env, operator_user):
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    # Slow calls keep the saga busy while the repeats arrive.
    order = await sync_to_async(make_order)(fault_plan={"latency_ms": 400})
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.STUCK, message="stuck")
    await sync_to_async(sandbox_outage_set)("payment", active=False)

    action = await sync_to_async(saga_retry)(order_id=order.pk, actor=operator_user)
    handle = saga_env.handle(order)
    # The same action delivered again (a client retry), and a second click's action.
    await handle.signal("retry", OperatorCommand(action_id=action.pk))
    second = await sync_to_async(OperatorAction.objects.create)(order=order, action="retry", actor=operator_user)
    await handle.signal("retry", OperatorCommand(action_id=second.pk))
    assert await saga_env.result(order) == "completed"

    kinds = await sync_to_async(lambda: list(order.events.filter(kind__in=["signal", "ignored"])
                                             .values_list("kind", "detail")))()
    assert [k for k, _ in kinds] == ["signal", "ignored"]
    assert "not stuck" in kinds[1][1]
    outcomes = await sync_to_async(lambda: dict(OperatorAction.objects.values_list("pk", "outcome")))()
    assert outcomes == {action.pk: "applied", second.pk: "ignored"}
    # Each answer points at the command it answers.
    answered = await sync_to_async(lambda: list(order.events.filter(kind__in=["signal", "ignored"]).order_by("id")
                                                .values_list("operator_action_id", flat=True)))()
    assert answered == [action.pk, second.pk]
    # One retry after the stuck state: one more charge attempt, one charge.
    stuck_at = await sync_to_async(lambda: order.events.get(kind="stuck").pk)()
    # (The rerun goes on counting the step's attempts, so it reads "retrying", attempt 4.)
    reruns = await sync_to_async(order.events.filter(pk__gt=stuck_at, step="charge",
                                                     kind__in=["started", "retrying"]).count)()
    assert reruns == 1
    assert await sync_to_async(order.payments.count)() == 1


async def test_actions_that_do_not_fit_are_refused_before_any_signal(saga_env, operator_user):
    order = await sync_to_async(make_order)()
    assert await saga_env.result(order) == "completed"
    with pytest.raises(ActionNotAllowed, match="is not stuck"):
        await sync_to_async(saga_retry)(order_id=order.pk, actor=operator_user)
    viewer = await sync_to_async(staff_user_create)(username="viewer", password="viewer-pass", role=VIEWER)
    with pytest.raises(PermissionDenied):
        await sync_to_async(saga_retry)(order_id=order.pk, actor=viewer)
    assert await sync_to_async(OperatorAction.objects.count)() == 0
    assert await sync_to_async(SagaEvent.objects.filter(kind__in=["signal", "ignored"]).count)() == 0
