"""Refunds: without a return (goodwill), never beyond the charge (the database's CHECK, shown
to staff as a message), and a return's refund through a gateway outage: stuck, then an
operator's retry completes it. The sandbox gateway's books are read in SQL."""

import asyncio
from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.db import IntegrityError, connection, transaction
from django.db.models import F

from orders.models import OperatorAction, Order, Return, SagaEvent
from orders.services.returns import (
    ReturnLineRequest,
    ReturnNotAllowed,
    refund_open,
    return_command_send,
    return_open,
)
from orders.signals import parcel_returned
from sandbox.adapters import sandbox_outage_set

from .conftest import wait_for
from .factories import make_order, make_product

pytestmark = pytest.mark.django_db(transaction=True)


async def completed_order(saga_env, price="20.00", quantity=1) -> Order:
    product = await sync_to_async(make_product)(price=price)
    order = await sync_to_async(make_order)(products=[(product, quantity)])
    assert await saga_env.result(order) == "completed"
    return await sync_to_async(Order.objects.get)(pk=order.pk)


async def result_of(saga_env, ret: Return, timeout: float = 60) -> str:
    return await asyncio.wait_for(saga_env.client.get_workflow_handle(ret.workflow_id).result(), timeout)


def gateway_books(order: Order) -> list[tuple[str, Decimal]]:
    """What the sandbox gateway holds under the order's keys, oldest first."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT kind, amount FROM sandbox_sandboxpaymentrecord WHERE idempotency_key LIKE %s ORDER BY id",
            [f"{order.workflow_id}:%"],
        )
        return cursor.fetchall()


def stuck_queue_as(user) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.get("/ops/stuck/").content.decode()


def books(order: Order) -> tuple[Decimal, Decimal, Decimal]:
    order.refresh_from_db()
    return order.charged_total, order.refunded_total, order.refund_pending_total


async def test_goodwill_refund_without_a_return(saga_env, operator_user):
    order = await completed_order(saga_env, price="40.00")
    ret = await sync_to_async(refund_open)(order_id=order.pk, amount="7.5", reason="Late delivery",
                                           actor=operator_user)
    assert (ret.kind, ret.amount, ret.deadline) == (Return.Kind.GOODWILL, Decimal("7.50"), None)
    assert await result_of(saga_env, ret) == "refunded"

    assert await sync_to_async(books)(order) == (Decimal("40.00"), Decimal("7.50"), Decimal(0))
    assert await sync_to_async(gateway_books)(order) == [("charge", Decimal("40.00")), ("refund", Decimal("7.50"))]
    audit = await sync_to_async(OperatorAction.objects.get)(return_request=ret)
    assert (audit.action, audit.actor_id, audit.reason) == ("refund", operator_user.pk, "Late delivery")
    steps = await sync_to_async(lambda: list(SagaEvent.objects.filter(order=order, step__startswith="return")
                                             .values_list("step", "kind")))()
    # No parcel to wait for, nothing to restock.
    assert steps == [("return", "started"), ("return_refund", "started"), ("return_refund", "succeeded"),
                     ("return_notify", "started"), ("return_notify", "succeeded"), ("return", "finished")]


async def test_refund_beyond_the_charge_is_refused_by_the_database(saga_env):
    order = await completed_order(saga_env, price="10.00", quantity=2)
    line = await sync_to_async(lambda: order.lines.get().pk)()
    first = await sync_to_async(refund_open)(order_id=order.pk, amount="15.00", reason="Damaged box")

    # 15 promised of 20: a return of one more item (10) would exceed the charge. The form's
    # own checks would let it through; the order's CHECK does not, and staff read why.
    with pytest.raises(ReturnNotAllowed, match=r"would exceed what was charged.*at most 5\.00 EUR"):
        await sync_to_async(return_open)(order_id=order.pk, reason="x", lines=[ReturnLineRequest(line, 1)])
    with pytest.raises(ReturnNotAllowed, match="would exceed"):
        await sync_to_async(refund_open)(order_id=order.pk, amount="5.01", reason="y")
    assert await sync_to_async(Return.objects.filter(order=order).count)() == 1  # nothing written

    # Any other write path meets the same constraint.
    def write_past_the_charge():
        with transaction.atomic():
            Order.objects.filter(pk=order.pk).update(refunded_total=F("charged_total") + 1)

    with pytest.raises(IntegrityError, match="order_refunds_within_charge"):
        await sync_to_async(write_past_the_charge)()

    assert await result_of(saga_env, first) == "refunded"
    last = await sync_to_async(refund_open)(order_id=order.pk, amount="5.00", reason="the rest")
    assert await result_of(saga_env, last) == "refunded"
    assert await sync_to_async(books)(order) == (Decimal("20.00"), Decimal("20.00"), Decimal(0))
    assert await sync_to_async(gateway_books)(order) == [
        ("charge", Decimal("20.00")), ("refund", Decimal("15.00")), ("refund", Decimal("5.00"))]
    with pytest.raises(ReturnNotAllowed, match="at most 0"):
        await sync_to_async(refund_open)(order_id=order.pk, amount="0.01", reason="z")


async def test_gateway_down_during_a_returns_refund_leaves_it_stuck_and_retry_completes_it(saga_env, operator_user):
    order = await completed_order(saga_env, price="30.00")
    line = await sync_to_async(lambda: order.lines.get().pk)()
    ret = await sync_to_async(return_open)(order_id=order.pk, reason="Not as described",
                                           lines=[ReturnLineRequest(line, 1)])
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    try:
        await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
        await wait_for(lambda: Return.objects.get(pk=ret.pk).state == Return.State.STUCK, message="return stuck")
        stuck = await sync_to_async(lambda: SagaEvent.objects.get(order=order, step="return_refund", kind="stuck"))()
        assert "sandbox outage" in stuck.detail
        # The stuck queue lists it, with why (the order's own saga finished long ago).
        stuck_page = await sync_to_async(stuck_queue_as)(operator_user)
        assert f"#{ret.pk} (return)" in stuck_page and "sandbox outage" in stuck_page
        # Nothing moved at the gateway; the amount is still promised, not refunded.
        assert await sync_to_async(gateway_books)(order) == [("charge", Decimal("30.00"))]
        assert await sync_to_async(books)(order) == (Decimal("30.00"), Decimal(0), Decimal("30.00"))

    finally:
        await sync_to_async(sandbox_outage_set)("payment", active=False)

    audit = await sync_to_async(return_command_send)(return_id=ret.pk, action="return_retry", actor=operator_user,
                                                     reason="gateway back")
    assert await result_of(saga_env, ret) == "refunded"
    await wait_for(lambda: OperatorAction.objects.get(pk=audit.pk).outcome == "applied", message="retry applied")
    assert await sync_to_async(gateway_books)(order) == [("charge", Decimal("30.00")), ("refund", Decimal("30.00"))]
    assert await sync_to_async(books)(order) == (Decimal("30.00"), Decimal("30.00"), Decimal(0))
    # Attempts are numbered across the operator's retries.
    attempts = await sync_to_async(lambda: list(SagaEvent.objects.filter(
        order=order, step="return_refund", kind="succeeded").values_list("attempt", flat=True)))()
    assert attempts == [4]
    # The return is no longer stuck: another retry is refused before it is sent.
    with pytest.raises(ReturnNotAllowed, match="not stuck"):
        await sync_to_async(return_command_send)(return_id=ret.pk, action="return_retry", actor=operator_user)


async def test_stuck_refund_given_up_closes_the_return_without_money(saga_env, operator_user):
    order = await completed_order(saga_env, price="12.00")
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    try:
        ret = await sync_to_async(refund_open)(order_id=order.pk, amount="12.00", reason="Goodwill")
        await wait_for(lambda: Return.objects.get(pk=ret.pk).state == Return.State.STUCK, message="return stuck")
        await sync_to_async(return_command_send)(return_id=ret.pk, action="return_abandon", actor=operator_user)
        assert await result_of(saga_env, ret) == "abandoned"
    finally:
        await sync_to_async(sandbox_outage_set)("payment", active=False)
    ret = await sync_to_async(Return.objects.get)(pk=ret.pk)
    assert ret.state == Return.State.ABANDONED
    assert await sync_to_async(books)(order) == (Decimal("12.00"), Decimal(0), Decimal(0))
    assert await sync_to_async(gateway_books)(order) == [("charge", Decimal("12.00"))]


async def test_reconciliation_checks_returns_against_the_ledgers(saga_env, settings):
    from ops.models import Discrepancy, ReconciliationRun
    from ops.reconciliation import reconciliation_run_create, reconciliation_run_execute

    settings.RECONCILIATION_GRACE_SECONDS = 0

    def run_now() -> set[tuple[str, int]]:
        run = reconciliation_run_create(trigger=ReconciliationRun.Trigger.MANUAL)
        run = reconciliation_run_execute(run_id=run.pk)
        return {(kind, order_id) for kind, order_id in run.discrepancies.values_list("kind", "order_id")}

    order = await completed_order(saga_env, price="10.00", quantity=3)
    line = await sync_to_async(lambda: order.lines.get().pk)()
    returned = await sync_to_async(return_open)(order_id=order.pk, reason="r", lines=[ReturnLineRequest(line, 2)])
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
    goodwill = await sync_to_async(refund_open)(order_id=order.pk, amount="3.00", reason="sorry")
    assert await result_of(saga_env, returned) == "refunded"
    assert await result_of(saga_env, goodwill) == "refunded"
    # Real returns and refunds: charged 30, refunded 20 + 3, total less returned 7. Clean.
    assert await sync_to_async(run_now)() == set()

    # Planted behind the services: a return that says more than its refund, books that drift.
    await sync_to_async(Return.objects.filter(pk=goodwill.pk).update)(amount=Decimal("4.00"))
    await sync_to_async(Order.objects.filter(pk=order.pk).update)(refunded_total=Decimal("25.00"))
    assert await sync_to_async(run_now)() == {
        (Discrepancy.Kind.SAGA_INCONSISTENT, order.pk), (Discrepancy.Kind.MONEY_MISMATCH, order.pk)}
    # (The test's invariants would fail on these too: put them back.)
    await sync_to_async(Return.objects.filter(pk=goodwill.pk).update)(amount=Decimal("3.00"))
    await sync_to_async(Order.objects.filter(pk=order.pk).update)(refunded_total=Decimal("23.00"))


async def test_refund_refused_by_the_gateway_is_stuck_at_once(saga_env, operator_user):
    # The order's refund fault ("the charge is disputed") applies to its returns' refunds too.
    product = await sync_to_async(make_product)(price="9.00")
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"refund": "fail"})
    assert await saga_env.result(order) == "completed"
    ret = await sync_to_async(refund_open)(order_id=order.pk, amount="9.00", reason="never arrived")
    await wait_for(lambda: Return.objects.get(pk=ret.pk).state == Return.State.STUCK, message="return stuck")
    refund_events = await sync_to_async(lambda: list(SagaEvent.objects.filter(
        order=order, step="return_refund").values_list("kind", flat=True)))()
    assert refund_events == ["started", "failed", "stuck"]  # refused: not retried
    ret = await sync_to_async(Return.objects.get)(pk=ret.pk)
    assert "disputed" in ret.last_error
    audit = await sync_to_async(return_command_send)(return_id=ret.pk, action="return_abandon", actor=operator_user,
                                                     reason="customer paid back by bank transfer")
    assert await result_of(saga_env, ret) == "abandoned"
    await wait_for(lambda: OperatorAction.objects.get(pk=audit.pk).outcome == "applied", message="applied")
    assert await sync_to_async(gateway_books)(order) == [("charge", Decimal("9.00"))]


async def test_return_refund_down_preset_gets_stuck_and_retry_works(saga_env, operator_user):
    from orders.faults import PRESETS

    product = await sync_to_async(make_product)(price="6.00")
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan=PRESETS["return_refund_down"][1])
    assert await saga_env.result(order) == "completed"
    ret = await sync_to_async(return_open)(order_id=order.pk, reason="r",
                                           lines=[ReturnLineRequest(await sync_to_async(lambda: order.lines.get().pk)(), 1)])
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
    await wait_for(lambda: Return.objects.get(pk=ret.pk).state == Return.State.STUCK, message="return stuck")
    assert await sync_to_async(gateway_books)(order) == [("charge", Decimal("6.00"))]
    await sync_to_async(return_command_send)(return_id=ret.pk, action="return_retry", actor=operator_user)
    assert await result_of(saga_env, ret) == "refunded"
    assert await sync_to_async(gateway_books)(order) == [("charge", Decimal("6.00")), ("refund", Decimal("6.00"))]
