"""Returns end to end: the return saga on a real Temporal dev server and a real database,
the parcel arriving through the domain signal (as the carrier webhook sends it) or staff,
its deadline, and the customer's email sent once. The gateway's books are read in SQL."""

from decimal import Decimal

import pytest
from asgiref.sync import sync_to_async
from django.core import mail
from django.db import connection
from django.test import Client

from orders.models import NotificationAttempt, OperatorAction, Order, Payment, Product, Return, SagaEvent, StockMovement
from orders.services.returns import ReturnLineRequest, ReturnNotAllowed, return_open, return_parcel_receive
from orders.signals import parcel_returned

from .conftest import wait_for
from .factories import make_order, make_product

pytestmark = pytest.mark.django_db(transaction=True)


async def completed_order(saga_env, products) -> Order:
    order = await sync_to_async(make_order)(products=products)
    assert await saga_env.result(order) == "completed"
    return await sync_to_async(Order.objects.get)(pk=order.pk)


def line_of(order: Order, product: Product) -> int:
    return order.lines.get(product=product).pk


async def return_result(saga_env, ret: Return, timeout: float = 60) -> str:
    import asyncio

    return await asyncio.wait_for(saga_env.client.get_workflow_handle(ret.workflow_id).result(), timeout)


def gateway_refunds(key: str) -> list[tuple[str, Decimal]]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT kind, amount FROM sandbox_sandboxpaymentrecord WHERE idempotency_key = %s", [key])
        return cursor.fetchall()


def stock(product: Product) -> tuple[int, int, int]:
    product.refresh_from_db()
    return product.on_hand, product.reserved, product.sold


async def test_full_return_via_carrier_signal_restocks_refunds_and_emails_once(saga_env):
    a, b = await sync_to_async(make_product)(price="12.50", stock=5), await sync_to_async(make_product)(price="3.00")
    order = await completed_order(saga_env, [(a, 2), (b, 1)])
    assert (order.charged_total, order.refunded_total) == (Decimal("28.00"), Decimal(0))

    ret = await sync_to_async(return_open)(
        order_id=order.pk, reason="Wrong size",
        lines=[ReturnLineRequest(await sync_to_async(line_of)(order, a), 2),
               ReturnLineRequest(await sync_to_async(line_of)(order, b), 1)],
    )
    assert ret.amount == Decimal("28.00") and ret.workflow_id.startswith("return-")
    order = await sync_to_async(Order.objects.get)(pk=order.pk)
    assert order.refund_pending_total == Decimal("28.00")

    # The carrier's "returned" event reaches the returns side as the domain signal.
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
    assert await return_result(saga_env, ret) == "refunded"

    ret = await sync_to_async(Return.objects.get)(pk=ret.pk)
    assert (ret.state, ret.received_source) == (Return.State.REFUNDED, "carrier")
    # Found in Temporal by the order's search attributes, its end on SagaStatus.
    from orders.saga import search_attributes as sa

    attributes = (await saga_env.client.get_workflow_handle(ret.workflow_id).describe()).typed_search_attributes
    assert (attributes.get(sa.ORDER_ID), attributes.get(sa.ORDER_AMOUNT), attributes.get(sa.SAGA_STATUS),
            attributes.get(sa.CURRENT_STEP)) == (order.pk, 28.0, "completed", "return")
    order = await sync_to_async(Order.objects.get)(pk=order.pk)
    assert (order.charged_total, order.refunded_total, order.refund_pending_total) == (
        Decimal("28.00"), Decimal("28.00"), Decimal(0))
    assert await sync_to_async(stock)(a) == (5, 0, 0)
    assert await sync_to_async(gateway_refunds)(ret.refund_key) == [("refund", Decimal("28.00"))]
    refunds = await sync_to_async(lambda: list(Payment.objects.filter(order=order, kind="refund")
                                               .values_list("amount", "idempotency_key")))()
    assert refunds == [(Decimal("28.00"), ret.refund_key)]

    # A second report of the same parcel changes nothing and sends nothing.
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
    refund_mails = [m for m in mail.outbox if "refund" in m.subject.lower()]
    assert len(refund_mails) == 1 and "28.00" in refund_mails[0].body and order.customer_email in refund_mails[0].to
    key = f"{ret.workflow_id}:notify:refunded"
    assert await sync_to_async(NotificationAttempt.objects.filter(idempotency_key=key, succeeded=True).count)() == 1
    # The customer's page shows the return and what became of it, not the staff's reason.
    page = await sync_to_async(lambda: Client().get(f"/status/{order.public_token}/").content.decode())()
    assert f"Return of 2 x {a.name}, 1 x {b.name} (28.00 EUR)" in page and "Refunded" in page
    assert "Wrong size" not in page
    steps = await sync_to_async(lambda: list(SagaEvent.objects.filter(order=order, step__startswith="return")
                                             .values_list("step", "kind")))()
    assert steps == [
        ("return", "started"), ("return_parcel", "signal"), ("return_restock", "succeeded"),
        ("return_refund", "started"), ("return_refund", "succeeded"),
        ("return_notify", "started"), ("return_notify", "succeeded"), ("return", "finished"),
    ]


async def test_partial_return_by_staff_restocks_only_what_is_sellable(saga_env, operator_user):
    a, b = await sync_to_async(make_product)(price="10.00", stock=4), await sync_to_async(make_product)(price="5.00")
    order = await completed_order(saga_env, [(a, 3), (b, 1)])
    line_a = await sync_to_async(line_of)(order, a)
    ret = await sync_to_async(return_open)(
        order_id=order.pk, reason="Two arrived broken, one unwanted", include_shipping=True, actor=operator_user,
        lines=[ReturnLineRequest(line_a, 2, sellable=False), ReturnLineRequest(line_a, 0)],
    )
    assert (ret.amount, ret.shipping_amount) == (Decimal("24.90"), Decimal("4.90"))

    audit = await sync_to_async(return_parcel_receive)(order_id=order.pk, actor=operator_user, reason="at the desk")
    assert await return_result(saga_env, ret) == "refunded"
    await wait_for(lambda: OperatorAction.objects.get(pk=audit.pk).outcome == "applied", message="received applied")
    audit = await sync_to_async(OperatorAction.objects.get)(pk=audit.pk)
    assert (audit.action, audit.return_request_id) == ("parcel_received", ret.pk)

    # Not sellable: written off, still counted as sold; nothing restocked.
    assert await sync_to_async(stock)(a) == (1, 0, 3)
    assert not await sync_to_async(StockMovement.objects.filter(order=order, kind="restock").exists)()
    order = await sync_to_async(Order.objects.get)(pk=order.pk)
    assert (order.refunded_total, order.refund_pending_total) == (Decimal("24.90"), Decimal(0))

    # One of the three is left to return; asking for two is refused, with why.
    with pytest.raises(ReturnNotAllowed, match="only 1 of 3"):
        await sync_to_async(return_open)(order_id=order.pk, reason="more", lines=[ReturnLineRequest(line_a, 2)])
    with pytest.raises(ReturnNotAllowed, match="named once"):
        await sync_to_async(return_open)(order_id=order.pk, reason="twice",
                                         lines=[ReturnLineRequest(line_a, 1), ReturnLineRequest(line_a, 1)])
    # Staff cannot mark a parcel received when no return waits for one.
    with pytest.raises(ReturnNotAllowed, match="No return"):
        await sync_to_async(return_parcel_receive)(order_id=order.pk, actor=operator_user)


async def test_parcel_never_arrives_return_expires_without_refund(saga_env, settings):
    settings.RETURN_PARCEL_DEADLINE_SECONDS = 1.5
    product = await sync_to_async(make_product)(stock=3)
    order = await completed_order(saga_env, [(product, 1)])
    ret = await sync_to_async(return_open)(
        order_id=order.pk, reason="Changed my mind", lines=[ReturnLineRequest(await sync_to_async(line_of)(order, product), 1)])
    assert await return_result(saga_env, ret) == "expired"

    ret = await sync_to_async(Return.objects.get)(pk=ret.pk)
    assert ret.state == Return.State.EXPIRED and ret.finished_at is not None
    order = await sync_to_async(Order.objects.get)(pk=order.pk)
    assert (order.refunded_total, order.refund_pending_total) == (Decimal(0), Decimal(0))
    assert await sync_to_async(gateway_refunds)(ret.refund_key) == []
    assert await sync_to_async(stock)(product) == (2, 0, 1)
    assert not [m for m in mail.outbox if "refund" in m.subject.lower()]
    finished = await sync_to_async(lambda: SagaEvent.objects.get(order=order, step="return", kind="finished").detail)()
    assert "did not arrive" in finished
    # The items can be returned again: an expired return holds nothing back.
    settings.RETURN_PARCEL_DEADLINE_SECONDS = 60
    again = await sync_to_async(return_open)(
        order_id=order.pk, reason="Found it", lines=[ReturnLineRequest(await sync_to_async(line_of)(order, product), 1)])
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
    assert await return_result(saga_env, again) == "refunded"


async def test_returns_only_for_completed_orders(saga_env):
    product = await sync_to_async(make_product)()
    order = await sync_to_async(make_order)(products=[(product, 1)], fault_plan={"payment": "decline"})
    assert await saga_env.result(order) == "compensated"
    with pytest.raises(ReturnNotAllowed, match="only completed or delivered"):
        await sync_to_async(return_open)(
            order_id=order.pk, reason="x", lines=[ReturnLineRequest(await sync_to_async(line_of)(order, product), 1)])
    assert not await sync_to_async(Return.objects.exists)()


async def test_staff_pages_open_a_return_and_mark_the_parcel_received(saga_env, client, staff_user):
    product = await sync_to_async(make_product)(price="8.00", stock=3)
    order = await completed_order(saga_env, [(product, 2)])
    line = await sync_to_async(line_of)(order, product)
    operator = await sync_to_async(staff_user)("operator")
    viewer = await sync_to_async(staff_user)("viewer")

    def page_as(user):
        client.force_login(user)
        return client.get(f"/orders/{order.pk}/").content.decode()

    def post_as(user, url, data):
        client.force_login(user)
        return client.post(url, data, follow=True)

    html = await sync_to_async(page_as)(operator)
    assert "Open a return" in html and f'name="qty-{line}"' in html and "No returns or refunds." in html
    assert "Open a return" not in await sync_to_async(page_as)(viewer)
    denied = await sync_to_async(post_as)(viewer, f"/orders/{order.pk}/returns/", {f"qty-{line}": "1", "reason": "x"})
    assert denied.status_code == 403
    assert not await sync_to_async(Return.objects.exists)()

    # Bad input: a message on the page, nothing written.
    response = await sync_to_async(post_as)(operator, f"/orders/{order.pk}/returns/", {f"qty-{line}": "5", "reason": "x"})
    assert response.status_code == 200 and "only 2 of 2" in response.content.decode()
    response = await sync_to_async(post_as)(operator, f"/orders/{order.pk}/refunds/", {"amount": "lots", "reason": "x"})
    assert "is not an amount of money" in response.content.decode()
    for amount in ("NaN", "Infinity", "1e40", "-3"):
        response = await sync_to_async(post_as)(operator, f"/orders/{order.pk}/refunds/", {"amount": amount, "reason": "x"})
        assert response.status_code == 200, amount
        assert "amount of money" in response.content.decode() or "more than zero" in response.content.decode()
    assert not await sync_to_async(Return.objects.exists)()

    response = await sync_to_async(post_as)(operator, f"/orders/{order.pk}/returns/",
                                            {f"qty-{line}": "1", f"unsellable-{line}": "on", "reason": "Scratched"})
    html = response.content.decode()
    assert "Return #" in html and "waiting for the parcel" in html and "Parcel received" in html
    ret = await sync_to_async(Return.objects.get)()
    assert (ret.amount, ret.created_by_id) == (Decimal("8.00"), operator.pk)
    response = await sync_to_async(post_as)(operator, f"/orders/{order.pk}/returns/received/", {"reason": "desk"})
    assert "Parcel received: the return restocks and refunds now." in response.content.decode()
    assert await return_result(saga_env, ret) == "refunded"
    html = await sync_to_async(page_as)(operator)
    assert 'data-return-state="refunded"' in html and "1 x " in html and "(not sellable)" in html


async def test_return_saga_replays_its_own_histories(saga_env, settings, operator_user):
    """Each path of the return saga replays against the current code; with RECORD_HISTORIES
    set they are recorded for tests/test_replay.py, like the order saga's."""
    from sandbox.adapters import sandbox_outage_set

    from orders.services.returns import refund_open, return_command_send

    from .replaying import replays

    product = await sync_to_async(make_product)(stock=5)
    order = await completed_order(saga_env, [(product, 3)])
    line = await sync_to_async(line_of)(order, product)
    refunded = await sync_to_async(return_open)(order_id=order.pk, reason="r", lines=[ReturnLineRequest(line, 1)])
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
    assert await return_result(saga_env, refunded) == "refunded"

    settings.RETURN_PARCEL_DEADLINE_SECONDS = 0.5
    expired = await sync_to_async(return_open)(order_id=order.pk, reason="r", lines=[ReturnLineRequest(line, 1)])
    assert await return_result(saga_env, expired) == "expired"

    await sync_to_async(sandbox_outage_set)("payment", active=True)
    try:
        stuck = await sync_to_async(refund_open)(order_id=order.pk, amount="1.00", reason="goodwill")
        await wait_for(lambda: Return.objects.get(pk=stuck.pk).state == Return.State.STUCK, message="stuck")
    finally:
        await sync_to_async(sandbox_outage_set)("payment", active=False)
    await sync_to_async(return_command_send)(return_id=stuck.pk, action="return_retry", actor=operator_user)
    assert await return_result(saga_env, stuck) == "refunded"

    for name, ret in {"return_refunded": refunded, "return_expired": expired, "return_stuck_retry": stuck}.items():
        await replays(saga_env.client.get_workflow_handle(ret.workflow_id), name)


async def test_sweep_starts_a_return_whose_saga_never_started(saga_env, settings, temporal_server):
    from datetime import timedelta

    from django.utils import timezone

    from orders.services.returns import return_sagas_restart

    product = await sync_to_async(make_product)(stock=2)
    order = await completed_order(saga_env, [(product, 2)])
    settings.TEMPORAL_ADDRESS = "127.0.0.1:1"  # Temporal unreachable when the return is opened
    try:
        ret = await sync_to_async(return_open)(
            order_id=order.pk, reason="r", lines=[ReturnLineRequest(await sync_to_async(line_of)(order, product), 1)])
    finally:
        settings.TEMPORAL_ADDRESS = temporal_server.address
    failed = await sync_to_async(lambda: SagaEvent.objects.get(order=order, step="return", kind="failed").detail)()
    assert f"Could not start the saga of return #{ret.pk}" in failed

    # Too recent for the sweep; then quiet long enough.
    assert await sync_to_async(return_sagas_restart)(quiet_seconds=60) == 0
    await sync_to_async(Return.objects.filter(pk=ret.pk).update)(updated_at=timezone.now() - timedelta(minutes=5))
    assert await sync_to_async(return_sagas_restart)(quiet_seconds=60) == 1
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="carrier")
    assert await return_result(saga_env, ret) == "refunded"
    assert await sync_to_async(return_sagas_restart)(quiet_seconds=0) == 0

    # A return whose workflow was terminated before it finished gets a new run.
    again = await sync_to_async(return_open)(
        order_id=order.pk, reason="r", lines=[ReturnLineRequest(await sync_to_async(line_of)(order, product), 1)])
    await wait_for(lambda: SagaEvent.objects.filter(order=order, step="return", kind="started").count() == 2,
                   message="second return opened")
    await saga_env.client.get_workflow_handle(again.workflow_id).terminate("lost, say")
    await sync_to_async(Return.objects.filter(pk=again.pk).update)(updated_at=timezone.now() - timedelta(minutes=5))
    assert await sync_to_async(return_sagas_restart)(quiet_seconds=60) == 1
    await sync_to_async(parcel_returned.send)(sender=None, order_id=order.pk, source="staff")
    assert await return_result(saga_env, again) == "refunded"
