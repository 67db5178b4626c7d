"""The Django admin: read-only orders, ledgers and audit log; stock only through restock;
saga actions through ops.services (permissions and audit rows); no N+1 on list pages."""

import pytest
from asgiref.sync import sync_to_async
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from orders.models import FollowUp, Order, Product
from orders.status import SagaStatus
from orders.models import OperatorAction

from .conftest import order_state, wait_for
from .test_ops_data import audit_row, followup_order, placed_order, resolved_followup, shelf, stuck_order


def changelist(model: str) -> str:
    return reverse(f"admin:{model.replace('.', '_')}_changelist")


def run_action(client, model: str, action: str, objects, **extra):
    data = {"action": action, "_selected_action": [o.pk for o in objects], "index": 0, **extra}
    return client.post(changelist(model), data, follow=True)


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def count_queries(client, url) -> int:
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url)
    assert response.status_code == 200, response.status_code
    return len(ctx.captured_queries)


# --- list pages: no N+1 ---------------------------------------------------------------------------


def populate(n: int, product, actor) -> None:
    for i in range(n):
        order = stuck_order(product) if i % 2 else placed_order(product)
        audit_row(order, actor)
        followup_order(product, claimed_by=actor if i % 3 else None)
        resolved_followup(product)
        shelf()


@pytest.mark.django_db
@pytest.mark.parametrize("model", ["orders.order", "orders.product", "orders.followup", "orders.operatoraction"])
def test_admin_list_pages_query_count_does_not_grow(client_as, staff_user, model):
    client = client_as("admin")
    actor = staff_user("operator")
    product = shelf()
    populate(2, product, actor)
    small = count_queries(client, changelist(model))
    populate(20, product, actor)
    large = count_queries(client, changelist(model))
    assert small == large
    assert large <= 12


@pytest.mark.django_db
def test_order_change_page_shows_lines_events_and_ledgers_read_only(client_as):
    order = stuck_order(failed=3)
    client = client_as("admin")
    url = reverse("admin:orders_order_change", args=[order.pk])
    response = client.get(url)
    assert response.status_code == 200
    body = response.content.decode()
    assert "saga events (timeline)" in body.lower() and "Payment gateway unavailable" in body
    assert reverse("orders:detail", args=[order.pk]) in body  # the staff page link
    assert 'name="_save"' not in body  # view only
    # Posting a change anyway does nothing.
    assert client.post(url, {"saga_status": "completed", "last_error": ""}).status_code == 403
    assert order_state(order.pk).saga_status == SagaStatus.STUCK
    # The page's queries do not grow with the order's events.
    first = count_queries(client, url)
    stuck_order(failed=1)
    from orders.models import SagaEvent

    SagaEvent.objects.bulk_create([SagaEvent(order=order, step="charge", kind="failed") for _ in range(30)])
    assert count_queries(client, url) == first


@pytest.mark.django_db
def test_orders_cannot_be_added_or_deleted_in_the_admin(client_as):
    order = placed_order()
    client = client_as("admin")
    assert client.get(reverse("admin:orders_order_add")).status_code == 403
    assert client.post(reverse("admin:orders_order_delete", args=[order.pk]), {"post": "yes"}).status_code == 403
    assert Order.objects.filter(pk=order.pk).exists()


@pytest.mark.django_db
def test_order_list_checkbox_is_the_one_django_draws(client_as):
    """OrderAdmin draws each row's action checkbox without the forms' template engine:
    the markup must stay what Django's own action_checkbox renders (escaping included)."""
    from django.contrib import admin

    order = placed_order()
    order.number = 'SO-<"&\'>'  # escaped once, as Django escapes it
    model_admin = admin.site._registry[Order]
    assert model_admin.action_checkbox(order) == admin.ModelAdmin.action_checkbox(model_admin, order)
    body = client_as("operator").get(changelist("orders.order")).content.decode()
    assert model_admin.action_checkbox(Order.objects.get(pk=order.pk)) in body


@pytest.mark.django_db
def test_order_changelist_search_and_filters(client_as):
    product = shelf()
    stuck = stuck_order(product, email="zed@example.com")
    other = placed_order(product)
    client = client_as("viewer")
    body = client.get(changelist("orders.order"), {"q": "zed@example"}).content.decode()
    assert stuck.number in body and other.number not in body
    body = client.get(changelist("orders.order"), {"saga_status__exact": "stuck"}).content.decode()
    assert stuck.number in body and other.number not in body


# --- admin actions go through ops.services -------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retry_from_the_admin_is_audited_and_reports_each_order(client, staff_user, temporal_server):
    operator = staff_user("operator", username="olga")
    client.force_login(operator)
    stuck = stuck_order()
    not_stuck = placed_order()
    response = run_action(client, "orders.order", "retry", [stuck, not_stuck])
    assert response.status_code == 200
    audit = OperatorAction.objects.get()
    assert (audit.order_id, audit.action, audit.actor, audit.reason) == (stuck.pk, "retry", operator, "from the admin")
    texts = messages_of(response)
    # No saga runs for these rows, so Temporal refuses the signal: the admin says so per order.
    assert any(t.startswith(f"{stuck.number}: retry failed:") for t in texts), texts
    assert f"{not_stuck.number}: Order {not_stuck.number} is not stuck (its saga is pending)." in texts


@pytest.mark.django_db(transaction=True)
def test_resend_from_the_admin_needs_an_open_followup(client, staff_user, temporal_server):
    client.force_login(staff_user("support"))
    followup = followup_order()
    plain = placed_order()
    response = run_action(client, "orders.order", "resend", [followup.order, plain])
    assert list(OperatorAction.objects.values_list("order_id", "action")) == [(followup.order_id, "resend")]
    assert f"{plain.number}: Order {plain.number} has no open follow-up." in messages_of(response)


@pytest.mark.django_db
@pytest.mark.parametrize("role, action", [("viewer", "retry"), ("viewer", "resend"), ("support", "retry"), ("support", "compensate")])
def test_admin_actions_without_permission_do_nothing(client_as, role, action):
    client = client_as(role)
    order = stuck_order()
    followup = followup_order()
    # The action is not offered...
    body = client.get(changelist("orders.order")).content.decode()
    assert f'<option value="{action}">' not in body
    # ...and a forged post runs nothing.
    response = run_action(client, "orders.order", action, [order, followup.order])
    assert response.status_code == 200
    assert OperatorAction.objects.count() == 0


@pytest.mark.django_db
def test_operators_are_offered_the_saga_actions(client_as):
    placed_order()
    body = client_as("operator").get(changelist("orders.order")).content.decode()
    for action in ("retry", "compensate", "resend"):
        assert f'<option value="{action}">' in body
    assert '<option value="delete_selected">' not in body


@pytest.mark.django_db
def test_admin_actions_are_limited_to_fifty_orders(client_as):
    client = client_as("operator")
    product = shelf()
    orders = [stuck_order(product, failed=1) for _ in range(51)]
    response = run_action(client, "orders.order", "compensate", orders)
    assert OperatorAction.objects.count() == 0
    assert any("Select at most 50 orders" in t for t in messages_of(response))


@pytest.mark.django_db(transaction=True)
async def test_retry_from_the_admin_rescues_a_real_stuck_saga(saga_env, staff_user, client):
    from sandbox.adapters import sandbox_outage_set

    from .factories import make_order

    operator = await sync_to_async(staff_user)("operator")
    await sync_to_async(client.force_login)(operator)
    await sync_to_async(sandbox_outage_set)("payment", active=True)
    order = await sync_to_async(make_order)()
    await wait_for(lambda: order_state(order.pk).saga_status == SagaStatus.STUCK, message="stuck")
    await sync_to_async(sandbox_outage_set)("payment", active=False)

    response = await sync_to_async(run_action)(client, "orders.order", "retry", [order])
    assert f"{order.number}: retry sent." in messages_of(response) or f"{order.number}: retry applied." in messages_of(response)
    assert await saga_env.result(order) == "completed"
    audit = await sync_to_async(OperatorAction.objects.get)()
    assert (audit.action, audit.outcome, audit.actor_id) == ("retry", "applied", operator.pk)


# --- products: stock only through restock -----------------------------------------------------


@pytest.mark.django_db
def test_restock_action_adds_stock_through_the_service(client_as):
    product = shelf(stock=5)
    response = run_action(client_as("admin"), "orders.product", "restock", [product], quantity="7")
    product.refresh_from_db()
    assert (product.on_hand, product.received, product.reserved, product.sold) == (12, 12, 0, 0)
    assert f"{product.sku}: 7 added; 12 on hand now." in messages_of(response)


@pytest.mark.django_db
@pytest.mark.parametrize("quantity", ["", "0", "-3", "lots", "1000001"])
def test_restock_with_a_bad_quantity_changes_nothing(client_as, quantity):
    product = shelf(stock=5)
    response = run_action(client_as("admin"), "orders.product", "restock", [product], quantity=quantity)
    product.refresh_from_db()
    assert (product.on_hand, product.received) == (5, 5)
    assert any("Enter a quantity between 1 and 1,000,000" in t for t in messages_of(response))


@pytest.mark.django_db
def test_stock_counters_cannot_be_edited_in_the_product_form(client_as):
    product = shelf(stock=5)
    client = client_as("admin")
    url = reverse("admin:orders_product_change", args=[product.pk])
    body = client.get(url).content.decode()
    assert 'name="on_hand"' not in body and 'name="sold"' not in body
    response = client.post(url, {
        "sku": product.sku, "name": "Renamed", "price": "21.00", "active": "on",
        "on_hand": "999", "reserved": "7", "sold": "3", "received": "1009",
    })
    assert response.status_code == 302
    product.refresh_from_db()
    assert (product.name, product.on_hand, product.reserved, product.sold, product.received) == ("Renamed", 5, 0, 0, 5)


@pytest.mark.django_db
def test_new_products_start_with_no_stock_and_a_positive_price(client_as):
    client = client_as("admin")
    response = client.post(reverse("admin:orders_product_add"), {"sku": "NEW-1", "name": "New", "price": "0"})
    assert response.status_code == 200 and "The price must be more than zero." in response.content.decode()
    assert not Product.objects.filter(sku="NEW-1").exists()
    client.post(reverse("admin:orders_product_add"), {"sku": "NEW-1", "name": "New", "price": "3.50", "on_hand": "50"})
    product = Product.objects.get(sku="NEW-1")
    assert (product.on_hand, product.received) == (0, 0)


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["viewer", "support", "operator"])
def test_only_admins_manage_products(client_as, role):
    product = shelf(stock=5)
    client = client_as(role)
    assert client.get(changelist("orders.product")).status_code == 403
    run_action(client, "orders.product", "restock", [product], quantity="5")
    product.refresh_from_db()
    assert product.on_hand == 5


# --- audit log and follow-ups: read-only -----------------------------------------------------------


@pytest.mark.django_db
def test_audit_log_cannot_be_added_changed_or_deleted(client_as, staff_user):
    row = audit_row(stuck_order(), staff_user("operator"), reason="original")
    client = client_as("admin")
    assert client.get(reverse("admin:orders_operatoraction_add")).status_code == 403
    change = reverse("admin:orders_operatoraction_change", args=[row.pk])
    assert client.get(change).status_code == 200  # viewable
    assert client.post(change, {"reason": "rewritten", "outcome": "applied"}).status_code == 403
    assert client.post(reverse("admin:orders_operatoraction_delete", args=[row.pk]), {"post": "yes"}).status_code == 403
    body = client.get(changelist("orders.operatoraction")).content.decode()
    assert '<option value="delete_selected">' not in body
    row.refresh_from_db()
    assert row.reason == "original"


@pytest.mark.django_db
@pytest.mark.parametrize("role", ["viewer", "support", "operator", "admin"])
def test_staff_roles_can_read_the_audit_log_and_followups_in_the_admin(client_as, staff_user, role):
    audit_row(stuck_order(), staff_user("operator"))
    followup = followup_order()
    client = client_as(role)
    assert client.get(changelist("orders.operatoraction")).status_code == 200
    body = client.get(changelist("orders.followup")).content.decode()
    assert followup.order.number in body
    assert client.get(reverse("admin:orders_followup_add")).status_code == 403


@pytest.mark.django_db
def test_followups_cannot_be_changed_in_the_admin(client_as):
    followup = followup_order()
    client = client_as("admin")
    url = reverse("admin:orders_followup_change", args=[followup.pk])
    assert client.post(url, {"state": "resolved", "notes": "x"}).status_code == 403
    followup.refresh_from_db()
    assert (followup.state, followup.notes) == (FollowUp.State.OPEN, "")


@pytest.mark.django_db
def test_admin_switches_a_sandbox_outage_on_and_off(client_as):
    from sandbox.adapters import SandboxPaymentGateway
    from orders.adapters.base import ChargeRequest
    from orders.errors import GatewayUnavailable
    from sandbox.models import SandboxOutage

    admin = client_as("admin")
    response = admin.post(reverse("admin:sandbox_sandboxoutage_add"), {"service": "payment", "active": "on"})
    assert response.status_code == 302
    order = placed_order()
    request = ChargeRequest(idempotency_key="k1", order_id=order.pk, amount=order.total, currency="EUR",
                            customer_email=order.customer_email)
    with pytest.raises(GatewayUnavailable, match="sandbox outage"):
        SandboxPaymentGateway().charge(request)
    outage = SandboxOutage.objects.get(service="payment")
    admin.post(reverse("admin:sandbox_sandboxoutage_change", args=[outage.pk]), {"service": "payment"})
    assert SandboxPaymentGateway().charge(request).reference.startswith("sbx_")
