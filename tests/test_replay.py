"""Workflow code stays deterministic for the histories it has already written.

tests/histories/<version>/ holds histories recorded from earlier versions of the saga;
every one must replay against the current code. A change that alters commands goes
behind workflow.patched(...) until no running saga can still be on the old path.
To add the current version's histories: RECORD_HISTORIES=tests/histories/v3 make test.
v3 (issue 7) adds a cancel from Temporal and a compensation stuck then retried, and the
delivery tracker from before issue 8 (ended by a `delivered` signal).
v4 (issue 8, patch "tracker-ends") records the tracker's ends: a carrier webhook's delivery,
a failed delivery then delivered, staff reporting the parcel lost, and an overdue tracker
that gives up.
v4 also holds the order saga emailing failed and cancelled customers
(customer-told-of-outcome) and the return saga's paths (recorded by tests/test_returns.py).
v5 records the emails outside a step run again after our own outage (outcome-email-rerun,
return-email-rerun, delivery-email-rerun; recorded by tests/test_emails_through_outages.py)
and an outcome email refused for good putting the order on the follow-up queue
(outcome-untold-followup; tests/test_outcome_emails.py).
"""

import asyncio
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from temporalio.client import WorkflowFailureError, WorkflowHistory
from temporalio.worker import Replayer

from sandbox.adapters import sandbox_outage_set
from orders.models import Order
from orders.status import SagaStatus
from ops.services import followup_resend, order_cancel, saga_retry, saga_retry_compensation

from .conftest import order_state, wait_for
from .factories import make_order
from .replaying import replays

from orders.saga.delivery_tracker import DeliveryTrackingWorkflow
from orders.saga.shared import DeliveredSignal, delivery_workflow_id
from orders.saga.worker import WORKFLOWS, workflow_runner

HISTORIES = Path(__file__).parent / "histories"


def replayer() -> Replayer:
    return Replayer(workflows=WORKFLOWS, workflow_runner=workflow_runner())


def recorded_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*/*.json"))


@pytest.mark.parametrize("path", recorded_histories(), ids=lambda p: f"{p.parent.name}/{p.stem}")
async def test_recorded_history_replays(path: Path):
    # Files are named <path>-<workflow id>: the id matters (the tracker's id derives from it).
    history = WorkflowHistory.from_json(path.stem.split("-", 1)[1], path.read_text())
    await replayer().replay_workflow(history)


def test_histories_were_recorded_for_every_path():
    names = {p.stem.split("-")[0] for p in recorded_histories()}
    assert {"completed", "compensated", "stuck_retry", "followup_resend", "cancelled",
            "temporal_cancelled", "compensation_stuck_retry", "tracker_delivered_signal",
            "tracker_webhook_delivered", "tracker_failed_then_delivered", "tracker_lost_refund",
            "tracker_overdue_given_up",
            "return_refunded", "return_expired", "return_stuck_retry",
            "outcome_email_rerun", "return_email_rerun", "tracker_email_rerun", "outcome_untold_followup"} <= names


@pytest.mark.django_db(transaction=True)
async def test_current_code_replays_its_own_histories(saga_env, operator_user):
    """Runs each path now, replays its history, and records it when RECORD_HISTORIES is set."""
    sagas = {
        "completed": await sync_to_async(make_order)(),
        "compensated": await sync_to_async(make_order)(fault_plan={"inventory": "fail"}),
        "followup_resend": await sync_to_async(make_order)(fault_plan={"notify": "transient:3"}),
        "cancelled": await sync_to_async(make_order)(fault_plan={"latency_ms": 1500}),
        "temporal_cancelled": await sync_to_async(make_order)(fault_plan={"latency_ms": 1500}),
        "compensation_stuck_retry": await sync_to_async(make_order)(fault_plan={"shipping": "fail",
                                                                                "shipping_cancel": "fail"}),
    }
    await wait_for(lambda: order_state(sagas["cancelled"].pk).current_step == "charge", message="charging")
    await sync_to_async(order_cancel)(order_id=sagas["cancelled"].pk, actor=operator_user)
    await wait_for(lambda: order_state(sagas["temporal_cancelled"].pk).current_step == "charge", message="charging")
    await saga_env.handle(sagas["temporal_cancelled"]).cancel()
    stuck_undo = sagas["compensation_stuck_retry"]
    await wait_for(lambda: order_state(stuck_undo.pk).saga_status == SagaStatus.COMPENSATION_STUCK,
                   message="compensation stuck")
    await sync_to_async(Order.objects.filter(pk=stuck_undo.pk).update)(fault_plan={"shipping": "fail"})
    await sync_to_async(saga_retry_compensation)(order_id=stuck_undo.pk, actor=operator_user)
    await wait_for(lambda: order_state(sagas["followup_resend"].pk).saga_status == SagaStatus.NEEDS_FOLLOWUP,
                   message="follow-up")
    await sync_to_async(followup_resend)(order_id=sagas["followup_resend"].pk, actor=operator_user)

    await sync_to_async(sandbox_outage_set)("payment", active=True)
    sagas["stuck_retry"] = stuck = await sync_to_async(make_order)()
    await wait_for(lambda: order_state(stuck.pk).saga_status == SagaStatus.STUCK, message="stuck")
    await sync_to_async(sandbox_outage_set)("payment", active=False)
    await sync_to_async(saga_retry)(order_id=stuck.pk, actor=operator_user)

    # The completed saga's delivery tracker, ended by a `delivered` signal (as staff did before issue 8).
    tracker = saga_env.client.get_workflow_handle(delivery_workflow_id(sagas["completed"].workflow_id))
    await saga_env.result(sagas["completed"])
    await tracker.signal(DeliveryTrackingWorkflow.delivered, DeliveredSignal(source="staff"))
    await asyncio.wait_for(tracker.result(), 60)
    await replays(tracker, "tracker_delivered_signal")

    for name, order in sagas.items():
        if name == "temporal_cancelled":
            with pytest.raises(WorkflowFailureError):
                await asyncio.wait_for(saga_env.handle(order).result(), 60)
        else:
            await saga_env.result(order)
        await replays(saga_env.handle(order), name)


@pytest.mark.django_db(transaction=True)
async def test_current_tracker_replays_its_own_histories(saga_env, operator_user, settings):
    """The tracker's ends (issue 8) run now, replay, and are recorded when RECORD_HISTORIES is set."""
    from django.test import Client

    from ops.services import delivery_report_lost
    from orders.models import Shipment
    from orders.services.carrier_events import carrier_signature_header

    def carrier_says(order, event: str, event_id: str) -> None:
        tracking = Shipment.objects.get(order=order).tracking_number
        body = (f'{{"event_id": "{event_id}", "tracking_number": "{tracking}", "event": "{event}", '
                f'"occurred_at": "2026-12-03T09:00:00+00:00"}}').encode()
        response = Client().post("/webhooks/carrier/", data=body, content_type="application/json",
                                 HTTP_X_CARRIER_SIGNATURE=carrier_signature_header(body=body))
        assert response.status_code == 200

    orders = {name: await sync_to_async(make_order)() for name in
              ("tracker_webhook_delivered", "tracker_failed_then_delivered", "tracker_lost_refund")}
    settings.DELIVERY_DEADLINE_DAYS = 1 / 86400
    settings.DELIVERY_GIVE_UP_DAYS = 1 / 86400
    orders["tracker_overdue_given_up"] = await sync_to_async(make_order)()
    for order in orders.values():
        assert await saga_env.result(order) == "completed"
    await sync_to_async(carrier_says)(orders["tracker_webhook_delivered"], "in_transit", "r1")
    await sync_to_async(carrier_says)(orders["tracker_webhook_delivered"], "delivered", "r2")
    await sync_to_async(carrier_says)(orders["tracker_failed_then_delivered"], "delivery_failed", "r3")
    await wait_for(lambda: order_state(orders["tracker_failed_then_delivered"].pk).followups.filter(
        kind="delivery_failed").exists(), message="failed-delivery follow-up")
    await sync_to_async(carrier_says)(orders["tracker_failed_then_delivered"], "delivered", "r4")
    await sync_to_async(delivery_report_lost)(order_id=orders["tracker_lost_refund"].pk, actor=operator_user,
                                              remedy="refund")

    expected = {"tracker_webhook_delivered": "delivered", "tracker_failed_then_delivered": "delivered",
                "tracker_lost_refund": "lost_refund", "tracker_overdue_given_up": "given_up"}
    for name, order in orders.items():
        tracker = saga_env.client.get_workflow_handle(delivery_workflow_id(order.workflow_id))
        assert await asyncio.wait_for(tracker.result(), 60) == expected[name]
        await replays(tracker, name)
