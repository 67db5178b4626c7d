"""The fault suite's after-sale checks (checks._after_sale_checks) against planted books:
they pass on a lost parcel refunded once, and name a second refund, a refund of an expired
return and a tracker still running. No workers here: the suite itself is test_fault_suite.py."""

from collections import Counter
from decimal import Decimal

import pytest
from django.utils import timezone

from orders.models import Order, Payment, Return, Shipment
from sandbox.models import SandboxPaymentRecord
from tests.factories import make_order, make_product
from tests.faults import checks
from tests.faults.after_sale import AfterSale
from tests.faults.plans import AFTER_SALE_MIX, NEVER_ARRIVES, PlacedOrder

pytestmark = pytest.mark.django_db

LOST_KIND = next(k for k in AFTER_SALE_MIX if k.after_sale == "parcel_lost")
NEVER_KIND = next(k for k in AFTER_SALE_MIX if k.after_sale == NEVER_ARRIVES)


def _completed_order(kind_name: str):
    order = make_order(products=[(make_product(price="12.00"), 1)], email=f"{kind_name}@faults.example",
                       start_saga=False)
    key = f"{order.workflow_id}:charge"
    Payment.objects.create(order=order, kind="charge", amount=order.total, currency="EUR", idempotency_key=key,
                           gateway_reference=f"ch-{order.pk}")
    SandboxPaymentRecord.objects.create(idempotency_key=key, kind="charge", amount=order.total, currency="EUR",
                                        reference=f"ch-{order.pk}")
    Order.objects.filter(pk=order.pk).update(status="completed", saga_status="completed", charged_total=order.total)
    return Order.objects.get(pk=order.pk)


def _return(order, *, state: str, kind: str = "goodwill") -> Return:
    return Return.objects.create(order=order, kind=kind, state=state, amount=order.total, reason="r",
                                 workflow_id=f"{order.workflow_id}-ret", refund_key=f"{order.workflow_id}:r1-ab:refund")


def _refund(order, ret: Return, *, ledger: bool = True, key: str | None = None) -> None:
    key = key or ret.refund_key
    if ledger:
        Payment.objects.create(order=order, kind="refund", amount=ret.amount, currency="EUR", idempotency_key=key,
                               gateway_reference=f"rf-{key}")
        Order.objects.filter(pk=order.pk).update(refunded_total=ret.amount)
    SandboxPaymentRecord.objects.create(idempotency_key=key, kind="refund", amount=ret.amount, currency="EUR",
                                        reference=f"rf-{key}", charge_reference=f"ch-{order.pk}")


def _violations(order, kind, ret: Return, *, tracker: str = "COMPLETED", mails: int = 1) -> dict:
    run = checks.FaultRun(placed=[PlacedOrder(order.pk, kind)], outcomes={order.pk: "completed"})
    run.after_sale = AfterSale(started={order.pk: kind.after_sale}, trackers={order.pk: tracker},
                               return_workflows={ret.pk: "COMPLETED"})
    orders = {order.pk: (order.status, order.saga_status, order.workflow_id, order.total, order.customer_email,
                         order.number)}
    sent = Counter({(order.customer_email, f"Your refund for order {order.number}"): mails} if mails else {})
    v = {name: [] for name in checks.CHECKS}
    checks._after_sale_checks(run, v, orders, {order.pk: kind}, SandboxPaymentRecord._meta.db_table, sent)
    return {name: problems for name, problems in v.items() if problems}


def _lost_parcel():
    order = _completed_order("lost")
    Shipment.objects.create(order=order, state="lost", idempotency_key=f"{order.workflow_id}:ship",
                            tracking_ended_at=timezone.now())
    ret = _return(order, state="refunded")
    _refund(order, ret)
    return order, ret


def test_a_lost_parcel_refunded_once_passes():
    order, ret = _lost_parcel()
    assert _violations(order, LOST_KIND, ret) == {}


def test_a_second_refund_at_the_gateway_is_named():
    order, ret = _lost_parcel()
    # The gateway refunded again under another key our ledger never saw.
    _refund(order, ret, ledger=False, key=f"{order.workflow_id}:r1-cd:refund")
    found = _violations(order, LOST_KIND, ret)
    assert list(found) == ["lost parcels refunded once"], found
    assert "refunded [Decimal('12.00'), Decimal('12.00')]" in found["lost parcels refunded once"][0]


def test_a_tracker_still_running_and_a_second_email_are_named():
    order, ret = _lost_parcel()
    found = _violations(order, LOST_KIND, ret, tracker="RUNNING", mails=2)
    assert "delivery tracker is RUNNING" in found["lost parcels refunded once"][0]
    assert found["refunds emailed once"] == [f"order {order.pk} (parcel_lost): 2 refund email(s), expected 1"]


def test_an_expired_return_that_was_refunded_is_named():
    order = _completed_order("never")
    ret = _return(order, state="expired", kind="return")
    SandboxPaymentRecord.objects.create(idempotency_key=ret.refund_key, kind="refund", amount=Decimal("12.00"),
                                        currency="EUR", reference="rf-x", charge_reference=f"ch-{order.pk}")
    found = _violations(order, NEVER_KIND, ret, mails=0)
    assert "expired, yet gateway [('refund', Decimal('12.00'))]" in found["unanswered returns expired untouched"][0]
    assert list(found) == ["unanswered returns expired untouched"], found
