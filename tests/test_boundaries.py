"""Adapters know what the outside world did (issue 7, case 1).

The gateway and the carrier can act and lose their answer (the sandbox's lost_response:N),
refuse a refund or a cancel, or act while our worker dies before our commit. Each test
ends with our ledger equal to the gateway's and the carrier's books by key and the money
right; the saga_env fixture checks that from both sides (tests/invariants.py).
"""

import pytest
from asgiref.sync import sync_to_async
from temporalio import activity
from temporalio.exceptions import ApplicationError

from orders.adapters import payment_gateway, shipping_carrier
from orders.adapters.base import ChargeRequest
from orders.errors import GatewayUnavailable, RefundRefused
from orders.faults import PRESETS, FaultPlanInvalid, fault_plan_clean
from orders.models import Order, Payment, SagaEvent, Shipment
from orders.saga.shared import StepInput, StepResult
from orders.services import payments, shipping
from orders.status import OrderStatus
from sandbox.models import SandboxGatewayCall, SandboxParcel, SandboxPaymentRecord

from .conftest import order_state, wait_for
from .factories import make_order, make_product
from .saga_states import order_running

pytestmark = pytest.mark.django_db(transaction=True)


@sync_to_async
def create(**kwargs) -> Order:
    return make_order(**kwargs)


def ledger(order: Order) -> list[tuple[str, str]]:
    return sorted(Payment.objects.filter(order=order).values_list("kind", "idempotency_key"))


def gateway_books(order: Order) -> list[tuple[str, str]]:
    return sorted(SandboxPaymentRecord.objects.filter(idempotency_key__startswith=f"{order.workflow_id}:")
                  .values_list("kind", "idempotency_key"))


def details(order: Order, step: str, kind: str) -> list[str]:
    return list(SagaEvent.objects.filter(order=order, step=step, kind=kind).values_list("detail", flat=True))


def lost_calls(service: str, key: str) -> int:
    row = SandboxGatewayCall.objects.filter(service=f"{service}-lost", idempotency_key=key).first()
    return row.calls if row else 0


# --- the vocabulary -------------------------------------------------------------------------


def test_fault_vocabulary_knows_the_uncertain_cases():
    plan = {"payment": "lost_response:2", "shipping": "lost_response:1", "refund": "transient:3",
            "shipping_cancel": "fail"}
    assert fault_plan_clean(plan) == plan
    assert fault_plan_clean({"refund": "fail", "shipping_cancel": "transient:2"})
    for bad in ({"refund": "decline"}, {"shipping_cancel": "lost_response:1"}, {"notify": "lost_response:1"}):
        with pytest.raises(FaultPlanInvalid):
            fault_plan_clean(bad)
    for _label, preset in PRESETS.values():
        assert fault_plan_clean(preset) == preset


def test_environment_faults_apply_to_every_order(monkeypatch, settings):
    settings.SANDBOX_FAULTS_ENABLED = True
    monkeypatch.setenv("SANDBOX_REFUND_FAULT", "fail")
    order = make_order(start_saga=False)
    order_running(order)
    key = f"{order.workflow_id}:charge"
    payments.payment_charge(order_id=order.pk, idempotency_key=key, attempt=1)
    with pytest.raises(RefundRefused):
        payments.payment_refund(order_id=order.pk, charge_key=key, idempotency_key=f"{key}:compensate", attempt=1)
    assert ledger(order) == [("charge", key)] == gateway_books(order)


# --- services: ask before acting again or declaring "nothing to undo" -----------------------


def test_refund_asks_the_gateway_when_our_ledger_has_no_charge(settings):
    order = make_order(start_saga=False)
    order_running(order)
    key = f"{order.workflow_id}:charge"
    # The gateway took the money; our worker died before our commit.
    payment_gateway().charge(ChargeRequest(idempotency_key=key, order_id=order.pk, amount=order.total,
                                           currency=order.currency, customer_email=order.customer_email))
    assert ledger(order) == []
    detail = payments.payment_refund(order_id=order.pk, charge_key=key, idempotency_key=f"{key}:compensate", attempt=1)
    assert detail.startswith(f"Refunded {order.total}")
    assert ledger(order) == [("charge", key), ("refund", f"{key}:compensate")] == gateway_books(order)
    assert "found at the gateway" in details(order, "charge", "succeeded")[0]
    # Asked again (a retried compensation): nothing new anywhere.
    assert payments.payment_refund(order_id=order.pk, charge_key=key, idempotency_key=f"{key}:compensate",
                                   attempt=2) == "already refunded"
    assert len(ledger(order)) == 2


def test_nothing_to_refund_only_when_the_gateway_agrees():
    order = make_order(start_saga=False)
    order_running(order)
    key = f"{order.workflow_id}:charge"
    assert payments.payment_refund(order_id=order.pk, charge_key=key, idempotency_key=f"{key}:compensate",
                                   attempt=1) == "nothing to refund"
    assert "the gateway confirms it" in details(order, "charge", "compensated")[0]
    assert ledger(order) == [] == gateway_books(order)


def test_a_charge_whose_answer_cannot_be_had_is_not_recorded(settings):
    """Lost answer and a gateway that cannot be asked either: retried, nothing guessed."""
    order = make_order(start_saga=False, fault_plan={"payment": "transient:1"})
    order_running(order)
    key = f"{order.workflow_id}:charge"
    with pytest.raises(GatewayUnavailable):
        payments.payment_charge(order_id=order.pk, idempotency_key=key, attempt=1)
    assert ledger(order) == [] == gateway_books(order)  # transient fails before acting
    payments.payment_charge(order_id=order.pk, idempotency_key=key, attempt=2)
    assert ledger(order) == [("charge", key)] == gateway_books(order)


def test_cancel_asks_the_carrier_when_we_have_no_shipment_row():
    order = make_order(start_saga=False)
    order_running(order)
    key = f"{order.workflow_id}:ship"
    shipping_carrier().book_parcel(order_id=order.pk, shipment_key=key, parcel_number=1)
    assert not Shipment.objects.filter(order=order).exists()
    detail = shipping.shipment_cancel(order_id=order.pk, attempt=1)
    assert "Cancelled 1 parcel(s) found at the carrier" in detail
    assert list(SandboxParcel.objects.filter(shipment_key=key).values_list("cancelled", flat=True)) == [True]
    assert Shipment.objects.get(order=order).state == Shipment.State.CANCELLED


# --- sagas: lost responses on charge, refund, booking and cancel ----------------------------


async def test_lost_charge_response_is_found_by_lookup(saga_env):
    order = await create(fault_plan={"payment": "lost_response:5"})  # more than the step's attempts
    assert await saga_env.result(order) == "completed"
    key = f"{order.workflow_id}:charge"
    assert await sync_to_async(ledger)(order) == [("charge", key)] == await sync_to_async(gateway_books)(order)
    [charged] = await sync_to_async(details)(order, "charge", "succeeded")
    assert "answer was lost" in charged
    assert await sync_to_async(lost_calls)("payment", key) == 1  # asked, not charged again


async def test_lost_refund_response_is_found_by_lookup(saga_env):
    order = await create(fault_plan={"payment": "lost_response:1", "inventory": "fail"})
    assert await saga_env.result(order) == "compensated"
    key = f"{order.workflow_id}:charge"
    books = [("charge", key), ("refund", f"{key}:compensate")]
    assert await sync_to_async(ledger)(order) == books == await sync_to_async(gateway_books)(order)
    [refunded] = await sync_to_async(details)(order, "charge", "compensated")
    assert "found by looking the refund up" in refunded
    assert (await sync_to_async(order_state)(order.pk)).status == OrderStatus.FAILED


async def test_lost_booking_response_is_found_by_lookup(saga_env):
    products = [(await sync_to_async(make_product)(), 1) for _ in range(2)]
    order = await create(products=products, fault_plan={"shipping": "lost_response:1"})
    assert await saga_env.result(order) == "completed"
    key = f"{order.workflow_id}:ship"
    parcels = await sync_to_async(lambda: list(
        SandboxParcel.objects.filter(shipment_key=key).values_list("parcel_number", "cancelled")))()
    assert sorted(parcels) == [(1, False), (2, False)]
    shipment = await sync_to_async(Shipment.objects.get)(order=order)
    assert (shipment.state, shipment.parcels_booked) == (Shipment.State.BOOKED, 2)
    booked = await sync_to_async(lambda: list(SandboxGatewayCall.objects.filter(
        service="carrier-book", idempotency_key__startswith=key).values_list("calls", flat=True)))()
    assert booked == [1, 1]  # the lost parcel was looked up, not booked again


@activity.defn(name="arrange_shipping")
def book_then_die(inp: StepInput) -> StepResult:
    """The carrier booked a parcel; the worker died before our shipment row was written,
    and the step then failed for good."""
    try:
        shipping_carrier().book_parcel(order_id=inp.order_id, shipment_key=inp.idempotency_key, parcel_number=1)
    except GatewayUnavailable:
        pass  # its answer lost too (the plan's lost_response): it booked all the same
    raise ApplicationError("carrier refused the rest of the shipment", type="ShippingRejected", non_retryable=True)


@pytest.mark.activity_overrides(arrange_shipping=book_then_die)
async def test_lost_booking_and_lost_cancel_are_found_and_cancelled(saga_env):
    order = await create(fault_plan={"shipping": "lost_response:1"})
    assert await saga_env.result(order) == "compensated"
    key = f"{order.workflow_id}:ship"
    parcels = await sync_to_async(lambda: list(
        SandboxParcel.objects.filter(shipment_key=key).values_list("parcel_number", "cancelled")))()
    assert parcels == [(1, True)]
    assert await sync_to_async(lost_calls)("shipping", f"{key}:cancel") == 1  # the cancel's answer was lost
    [cancelled] = await sync_to_async(details)(order, "ship", "compensated")
    assert "found at the carrier" in cancelled
    assert (await sync_to_async(order_state)(order.pk)).status == OrderStatus.FAILED


# --- a charge lost, then the saga compensated or cancelled ----------------------------------


@activity.defn(name="charge_payment")
def charge_then_die(inp: StepInput) -> StepResult:
    """The gateway took the money; every attempt's worker died before our commit."""
    order = Order.objects.get(pk=inp.order_id)
    payment_gateway().charge(ChargeRequest(idempotency_key=inp.idempotency_key, order_id=order.pk,
                                           amount=order.total, currency=order.currency,
                                           customer_email=order.customer_email))
    raise ApplicationError("worker lost before it recorded the charge", type="GatewayUnavailable")


@pytest.mark.activity_overrides(charge_payment=charge_then_die)
@pytest.mark.parametrize("decision", ["compensate", "cancel"])
async def test_charge_lost_then_compensated_or_cancelled_is_refunded(saga_env, operator_user, decision):
    from ops.services import order_cancel, saga_compensate

    order = await create()
    await wait_for(lambda: order_state(order.pk).saga_status == "stuck", message="stuck at charge")
    assert await sync_to_async(ledger)(order) == []  # our ledger knows nothing of the money
    act = saga_compensate if decision == "compensate" else order_cancel
    await sync_to_async(act)(order_id=order.pk, actor=operator_user, reason="gateway down")
    assert await saga_env.result(order) in ("compensated", "cancelled")
    key = f"{order.workflow_id}:charge"
    books = [("charge", key), ("refund", f"{key}:compensate")]
    assert await sync_to_async(ledger)(order) == books == await sync_to_async(gateway_books)(order)
    state = await sync_to_async(order_state)(order.pk)
    assert state.status in (OrderStatus.FAILED, OrderStatus.CANCELLED)


# --- refunds failing -------------------------------------------------------------------------


async def test_refund_failing_transiently_completes(saga_env):
    order = await create(fault_plan={"inventory": "fail", "refund": "transient:2"})
    assert await saga_env.result(order) == "compensated"
    key = f"{order.workflow_id}:charge"
    assert await sync_to_async(ledger)(order) == [("charge", key), ("refund", f"{key}:compensate")]
    failures = await sync_to_async(details)(order, "charge", "failed")
    assert len(failures) == 2 and all(f.startswith("Compensation failed") for f in failures)


async def test_refund_refused_for_good_records_no_refund(saga_env):
    order = await create(fault_plan={"inventory": "fail", "refund": "fail"})
    await wait_for(lambda: any("refused the refund" in d for d in details(order, "charge", "failed")),
                   message="the refund refused")
    key = f"{order.workflow_id}:charge"
    # Nothing recorded as refunded that the gateway did not refund: the money is still
    # held, in our ledger as at the gateway, for staff to see.
    assert await sync_to_async(ledger)(order) == [("charge", key)] == await sync_to_async(gateway_books)(order)
    state = await sync_to_async(order_state)(order.pk)
    assert state.status != OrderStatus.FAILED


# --- reconciliation compares our ledger with the outside world's books ------------------------


def test_reconciliation_finds_money_and_parcels_held_outside(temporal_server, settings):
    from ops.models import Discrepancy
    from ops.reconciliation import reconciliation_run_create, reconciliation_run_execute
    from ops.models import ReconciliationRun

    from .background_support import order_backdate
    from .saga_states import order_compensated_at_confirm, order_completed, order_finished

    settings.RECONCILIATION_GRACE_SECONDS = 0
    Kind = Discrepancy.Kind
    product = make_product(stock=10)

    # Failed before our ledger had a row; the gateway took the money all the same, and the
    # carrier printed a label (planted straight into the sandbox's books).
    held = make_order(products=[(product, 1)], start_saga=False)
    order_running(held)
    order_finished(held, saga_status="compensated", detail="Inventory confirmation failed")
    payment_gateway().charge(ChargeRequest(idempotency_key=f"{held.workflow_id}:charge", order_id=held.pk,
                                           amount=held.total, currency=held.currency,
                                           customer_email=held.customer_email))
    shipping_carrier().book_parcel(order_id=held.pk, shipment_key=f"{held.workflow_id}:ship", parcel_number=1)

    # Completed, but the gateway's amount under the charge key is not ours.
    differs = make_order(products=[(product, 1)], start_saga=False)
    order_completed(differs)
    SandboxPaymentRecord.objects.filter(idempotency_key=f"{differs.workflow_id}:charge").update(amount=1)

    clean_completed = make_order(products=[(product, 1)], start_saga=False)
    order_completed(clean_completed)
    clean_compensated = make_order(products=[(product, 1)], start_saga=False)
    order_compensated_at_confirm(clean_compensated)
    for order in (held, differs, clean_completed, clean_compensated):
        order_backdate(order.pk, 3600)

    run = reconciliation_run_execute(run_id=reconciliation_run_create(trigger=ReconciliationRun.Trigger.MANUAL).pk)
    found = {(d.kind, d.order_id): d.detail for d in run.discrepancies.all()}
    assert set(found) == {
        (Kind.MONEY_AT_GATEWAY, held.pk),
        (Kind.GATEWAY_UNRECORDED, held.pk),
        (Kind.PARCEL_NOT_CANCELLED, held.pk),
        (Kind.GATEWAY_MISMATCH, differs.pk),
    }
    assert f"the gateway holds {held.total} {held.currency}" in found[(Kind.MONEY_AT_GATEWAY, held.pk)]
    assert f"{held.workflow_id}:charge" in found[(Kind.GATEWAY_UNRECORDED, held.pk)]
    assert "parcel(s) 1 booked" in found[(Kind.PARCEL_NOT_CANCELLED, held.pk)]
    assert "a charge of 1.00" in found[(Kind.GATEWAY_MISMATCH, differs.pk)]


# --- the customer page says "not charged" only when the gateway agrees ------------------------


def _customer_page(client, order) -> str:
    from django.urls import reverse

    response = client.get(reverse("customer:status", args=[order.public_token]))
    assert response.status_code == 200
    return response.content.decode().replace("&#x27;", "'")


def test_customer_page_says_not_charged_only_when_the_gateway_agrees(client):
    from .saga_states import order_finished

    order = make_order(start_saga=False)
    order_running(order)
    order_finished(order, saga_status="compensated", detail="Inventory confirmation failed")
    assert "You have not been charged." in _customer_page(client, order)

    # The gateway took money our ledger never heard of (the answer lost, not yet refunded).
    payment_gateway().charge(ChargeRequest(idempotency_key=f"{order.workflow_id}:charge", order_id=order.pk,
                                           amount=order.total, currency=order.currency,
                                           customer_email=order.customer_email))
    html = _customer_page(client, order)
    assert "not been charged" not in html
    assert "If any payment was taken, we'll refund it in full." in html

    # Once the compensation found and refunded it, the page says so.
    key = f"{order.workflow_id}:charge"
    payments.payment_refund(order_id=order.pk, charge_key=key, idempotency_key=f"{key}:compensate", attempt=1)
    assert "We've refunded your payment in full." in _customer_page(client, order)


def test_customer_page_of_a_charge_not_yet_refunded_says_it_will_be(client, settings):
    from .saga_states import order_finished

    order = make_order(start_saga=False, fault_plan={"refund": "fail"})
    order_running(order)
    key = f"{order.workflow_id}:charge"
    payments.payment_charge(order_id=order.pk, idempotency_key=key, attempt=1)
    with pytest.raises(RefundRefused):
        payments.payment_refund(order_id=order.pk, charge_key=key, idempotency_key=f"{key}:compensate", attempt=1)
    order_finished(order, saga_status="cancelled", detail="Cancelled by staff")
    html = _customer_page(client, order)
    assert "not been charged" not in html and "We're refunding your payment in full." in html
